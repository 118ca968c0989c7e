#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default: local Ray, real
# MovieLens-100K, MiniLM. Fetch -> ray_jobs/experiment.py with ray_jobs/experiments/main.yaml:
# preprocess (Ray Data) -> distributed FLIP pretraining (Ray Train workers, TorchRec sharded
# tables, DeepSpeed) -> FLIP, FLIP_ID, FLIP_PLM and DCNv2 from scratch finetuned and evaluated on
# the whole test split (Ray tasks) -> RQ5/RQ6 pictures -> runs/main/report.md (path printed last).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh "$@"
py="${VIRTUAL_ENV:-$root/.venv}/bin/python"
"$py" -m flip_dist.cli data get ml-100k --out data/raw/ml-100k
"$py" ray_jobs/experiment.py --spec ray_jobs/experiments/main.yaml --out runs/main
