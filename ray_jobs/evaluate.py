"""Ray job: FLIP evaluate (see `flip-dist evaluate --help`).

    ray job submit --working-dir . -- python ray_jobs/evaluate.py --config ray_jobs/configs/ml100k.yaml
    python ray_jobs/evaluate.py --config ray_jobs/configs/ml100k.yaml [--set key=value ...]   # local Ray
"""
import sys

import _bootstrap  # noqa: F401

from flip_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
