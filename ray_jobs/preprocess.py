"""Ray job: raw data -> FLIP shards.

    ray job submit --working-dir . -- python ray_jobs/preprocess.py --config ray_jobs/configs/ml100k.yaml
    python ray_jobs/preprocess.py --config ray_jobs/configs/ml100k.yaml      # local in-process Ray
Takes the same arguments as `flip-dist preprocess`."""
import sys

import _bootstrap  # noqa: F401

from flip_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
