"""Ray job: profile a training step on the cluster's workers (see `flip-dist profile --help`).

    ray job submit --working-dir . -- python ray_jobs/profile.py --config ray_jobs/configs/ml100k.yaml \
        --data data/processed/ml-100k --out runs/profile
"""
import sys

import _bootstrap  # noqa: F401

from flip_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["profile", *sys.argv[1:]]))
