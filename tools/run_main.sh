#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default: local Ray, real
# MovieLens-100K, MiniLM. Fetch -> ray_jobs/pipeline.py: preprocess (Ray Data) -> distributed
# pretraining -> finetuning -> evaluation (Ray Train workers, TorchRec sharded tables, DeepSpeed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh "$@"
py="${VIRTUAL_ENV:-$root/.venv}/bin/python"
"$py" -m flip_dist.cli data get ml-100k --out data/raw/ml-100k
"$py" ray_jobs/pipeline.py --config ray_jobs/configs/ml100k.yaml
