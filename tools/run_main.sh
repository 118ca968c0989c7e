#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default: local Ray, real
# MovieLens-100K, MiniLM. Fetch -> preprocess (Ray Data) -> single-process FLIP pretraining and
# the FLIP / FLIP_ID / FLIP_PLM / DCNv2 finetuning comparison (AUC, logloss, a bar chart).
# The distributed (TorchRec + DeepSpeed + Ray Train) pipeline replaces the last step later.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh "$@"
py="${VIRTUAL_ENV:-$root/.venv}/bin/python"
"$py" -m flip_dist.cli data get ml-100k --out data/raw/ml-100k
"$py" ray_jobs/preprocess.py --config ray_jobs/configs/ml100k.yaml
"$py" -m flip_dist.cli compare-local --config ray_jobs/configs/ml100k.yaml --out runs/ml100k
