#!/usr/bin/env python
"""The issue's profile sweeps, one axis at a time around a base point: workers, ZeRO stage,
precision, batch, sequence length, PLM, table rows. Each axis is a `flip-dist profile --sweep` run
(its own OUT/<axis>/sweep.csv and sweep.png, every point a full profile with its trace); then one
OUT/sweeps.csv with every point and one OUT/sweeps.png with a panel per axis.

    python tools/profile_sweep.py --out runs/profile_sweep                 # every axis (~1 hour here)
    python tools/profile_sweep.py --out runs/profile_sweep --axes workers,precision --steps 3

Sequence length and table rows are properties of the data: the tool writes synthetic GoodReads
shards (flip_dist.data.synthetic_shards) for each value under --data-root and reuses them.
Base point: MiniLM (6 layers), DCNv2, pretraining, global batch 16, 2 Ray Train workers, ZeRO-2,
fp32, 4.5M-feature tables, prompts up to 128 tokens. RoBERTa-Base/Large and TinyBERT use random
weights from their published configs (throughput and memory do not depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import flip_dist  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flip_dist.profiling.report import plot_sweep_axes, write_sweep_csv  # noqa: E402

CONFIG = "ray_jobs/configs/goodreads.yaml"
BASE = ["model.plm=minilm", "pretrain.batch_size=16", "dist.num_workers=2", "dist.ds_config=zero2",
        "dist.precision=fp32", "preprocess.tokenizer=minilm"]
AXES = {
    "workers": ["1", "2"],
    "zero": ["zero1", "zero2", "zero3"],
    "precision": ["fp32", "bf16"],
    "batch": ["8", "16", "32"],
    "seq": ["32", "64", "128"],
    "plm": ["minilm", "tinybert", "roberta-base", "roberta-large"],
    "rows": ["100000", "1000000", "4500000"],
}
DATA_AXES = {"seq": ("max_length", 128), "rows": ("features", 4_500_000)}
BASE_DATA = {"max_length": 128, "features": 4_500_000}


def dataset(root: Path, max_length: int, features: int, rows: int, tokenizer: str) -> Path:
    """Synthetic shards of this shape, written once (a finished folder has its manifest)."""
    from flip_dist.data.synthetic_shards import write_synthetic_shards

    out = root / f"{tokenizer}-len{max_length}-feat{features}-rows{rows}"
    if not (out / "manifest.json").is_file():
        write_synthetic_shards(out, rows, features, tokenizer=tokenizer, max_length=max_length, progress=False)
    return out


def points(axis: str, root: Path, rows: int) -> list[tuple[str, list[str], Path]]:
    """(value, overrides, dataset) of each point of `axis`; the PLM decides the tokenizer."""
    out = []
    for value in AXES[axis]:
        shape, sets = dict(BASE_DATA), []
        if axis in DATA_AXES:
            shape[DATA_AXES[axis][0]] = int(value)
        else:
            sets = [f"{parse_key(axis)}={value}"]
        plm = value if axis == "plm" else "minilm"
        tokenizer = "roberta-bpe" if plm.startswith("roberta") else "minilm"
        out.append((value, sets, dataset(root, **shape, rows=rows, tokenizer=tokenizer)))
    return out


def parse_key(axis: str) -> str:
    from flip_dist.profiling.commands import SWEEP_ALIASES

    return SWEEP_ALIASES[axis].format(stage="pretrain")


def main(argv: list[str] | None = None) -> int:
    from flip_dist.config import load_config
    from flip_dist.profiling.commands import profile_point
    from flip_dist.profiling.report import plot_sweep
    from flip_dist.ray_runtime import ray_session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--axes", default=",".join(AXES), help=f"comma-separated, of {list(AXES)}")
    ap.add_argument("--data-root", type=Path, default=Path("data/profile_sweep"))
    ap.add_argument("--rows", type=int, default=20_000, help="rows of each synthetic dataset")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="over the base point")
    args = ap.parse_args(argv)
    axes = [a.strip() for a in args.axes.split(",") if a.strip()]
    unknown = sorted(set(axes) - set(AXES))
    if unknown:
        ap.error(f"unknown axes {unknown}; known: {list(AXES)}")
    overrides = BASE + args.set
    all_rows, started = [], time.perf_counter()
    with ray_session(load_config(CONFIG, overrides).ray):
        for axis in axes:
            rows, t0 = [], time.perf_counter()
            for i, (value, sets, data) in enumerate(points(axis, args.data_root, args.rows)):
                rows.append(profile_point({"axis": axis, "value": value}, f"{axis}={value}",
                                          load_config(CONFIG, overrides + sets), "pretrain", data,
                                          args.out / axis / f"{i:02d}", steps=args.steps, warmup=args.warmup,
                                          trace_steps=1))
            write_sweep_csv(rows, args.out / axis / "sweep.csv")
            plot_sweep(rows, ["value"], args.out / axis / "sweep.png")
            all_rows += rows
            print(f"axis {axis}: {len(rows)} points in {time.perf_counter() - t0:.0f} s", flush=True)
            write_sweep_csv(all_rows, args.out / "sweeps.csv")
    plot_sweep_axes(all_rows, args.out / "sweeps.png")
    print(json.dumps({"points": len(all_rows), "failed": sum(1 for r in all_rows if r["error"]),
                      "seconds": round(time.perf_counter() - started), "csv": str(args.out / "sweeps.csv"),
                      "png": str(args.out / "sweeps.png")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
