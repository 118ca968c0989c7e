"""Ray job: FLIP pretrain (see `flip-dist pretrain --help`).

    ray job submit --working-dir . -- python ray_jobs/pretrain.py --config ray_jobs/configs/ml100k.yaml
    python ray_jobs/pretrain.py --config ray_jobs/configs/ml100k.yaml [--set key=value ...]   # local Ray
"""
import sys

import _bootstrap  # noqa: F401

from flip_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
