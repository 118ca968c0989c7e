#!/usr/bin/env python
"""Write synthetic GoodReads data at paper scale: raw files in the UCSD Book Graph formats (for the
preprocessing path), or, with --shards, a processed dataset in the data contract directly (for
training and profiling without preprocessing).

    python tools/gen_goodreads.py --out data/raw/goodreads-synth --rows 20000000 --features 4500000
    python tools/gen_goodreads.py --shards --out data/processed/goodreads-synth --rows 20000000

The logic lives in flip_dist.data.synthetic_goodreads / synthetic_shards; this is the command line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import flip_dist  # noqa: F401
except ImportError:                                     # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flip_dist.data.synthetic_goodreads import MAX_FEATURES, MAX_ROWS, write_raw_goodreads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    ap.add_argument("--rows", type=int, required=True, help=f"interactions to write (up to {MAX_ROWS:,})")
    ap.add_argument("--features", type=int, default=None,
                    help=f"target vocabulary over the 15 fields (up to {MAX_FEATURES:,}; "
                         "default: the paper's features per sample times rows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gzip", action="store_true", help="write .json.gz files, as distributed")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--shards", action="store_true", help="write contract shards, not raw files")
    ap.add_argument("--tokenizer", default="minilm", help="with --shards: prompt tokenizer")
    ap.add_argument("--max-length", type=int, default=256, help="with --shards")
    ap.add_argument("--overwrite", action="store_true", help="with --shards: replace --out")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.shards:
        from flip_dist.data.synthetic_shards import write_synthetic_shards

        manifest = write_synthetic_shards(args.out, args.rows, args.features or 4_565_429,
                                          tokenizer=args.tokenizer, max_length=args.max_length,
                                          seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
        counts = {k: manifest[k] for k in ("num_samples", "num_train", "num_test", "num_features")}
    else:
        counts = write_raw_goodreads(args.out, args.rows, args.features, args.seed, args.gzip,
                                     progress=not args.quiet)
    counts["seconds"] = round(time.perf_counter() - t0, 1)   # type: ignore[assignment]
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
