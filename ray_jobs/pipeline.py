"""Ray job: FLIP pipeline (see `flip-dist pipeline --help`).

    ray job submit --working-dir . -- python ray_jobs/pipeline.py --config ray_jobs/configs/ml100k.yaml
    python ray_jobs/pipeline.py --config ray_jobs/configs/ml100k.yaml [--set key=value ...]   # local Ray
"""
import sys

import _bootstrap  # noqa: F401

from flip_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
