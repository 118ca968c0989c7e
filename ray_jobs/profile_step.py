"""Ray job: profile a training step on the cluster's workers (see `flip-dist profile --help`). Not named
profile.py: this folder is first on a job's sys.path, where that name would shadow the stdlib module.

    ray job submit --working-dir . -- python ray_jobs/profile_step.py --config ray_jobs/configs/ml100k.yaml \
        --data data/processed/ml-100k --out runs/profile
"""
import sys

import _bootstrap  # noqa: F401

from flip_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["profile", *sys.argv[1:]]))
