"""Ray job: a grid of the paper's experiments from one spec (see `flip-dist experiment --help`).

    ray job submit --working-dir . -- python ray_jobs/experiment.py --spec ray_jobs/experiments/main.yaml
    python ray_jobs/experiment.py --spec ray_jobs/experiments/smoke.yaml --out runs/smoke   # local Ray
"""
import sys

import _bootstrap  # noqa: F401

from flip_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
