#!/usr/bin/env python
"""Preprocessing throughput on synthetic GoodReads-format data: 1 vs 2 Ray workers on the same
input, at several sizes, with peak memory. Prints a table and ratios; writes JSON and a PNG.

    python tools/bench_preprocess.py [--rows 1000000 4000000] [--workers 1 2] [--work data/bench]

Targets (issue 2): 2 workers >= 1.8x one worker; cost linear in rows; peak RSS < 4 GiB at 4M rows.
Each run is a fresh `flip-dist preprocess` process with its own local Ray, measured from outside.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

try:
    import flip_dist  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flip_dist.data.synthetic_goodreads import write_raw_goodreads
from flip_dist.proc_meter import TreeMemoryMeter

GIB = 1 << 30


def raw_data(work: Path, rows: int, seed: int) -> Path:
    """Generate once per (rows, seed); a finished folder carries a DONE marker."""
    folder = work / f"raw-{rows}-s{seed}"
    if not (folder / "DONE").is_file():
        write_raw_goodreads(folder, rows, seed=seed)
        (folder / "DONE").write_text("ok\n")
    return folder


def run_once(raw: Path, out: Path, workers: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "flip_dist.cli", "preprocess", "--dataset", "goodreads",
           "--raw", str(raw), "--out", str(out), "--overwrite", "--workers", str(workers),
           "--tokenizer", args.tokenizer, "--max-length", str(args.max_length),
           "--set", f"preprocess.part_bytes={args.part_bytes}",
           "--set", f"preprocess.staging_rows={args.staging_rows}",
           "--set", f"ray.num_cpus={args.cpus}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMemoryMeter(proc.pid) as meter:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"preprocess failed ({proc.returncode}):\n{stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall_s": wall, "pipeline_s": manifest["timings"]["total_s"], "timings": manifest["timings"],
            "num_samples": manifest["num_samples"], "num_features": manifest["num_features"],
            "peak_tree_pss_gib": meter.peak_tree_pss / GIB, "peak_process_rss_gib": meter.peak_process_rss / GIB}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", type=Path, default=Path("data/bench"))
    ap.add_argument("--tokenizer", default="minilm")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--part-bytes", type=int, default=64 << 20)
    ap.add_argument("--staging-rows", type=int, default=150_000)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (same for every run)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    results = []
    for rows in args.rows:
        raw = raw_data(args.work, rows, args.seed)
        for w in args.workers:
            r = run_once(raw, args.work / "out", w, args)
            r.update(rows=rows, workers=w, rows_per_s=rows / r["pipeline_s"])
            results.append(r)
            print(f"rows={rows:>10,} workers={w}  pipeline {r['pipeline_s']:7.1f} s  wall {r['wall_s']:7.1f} s  "
                  f"{r['rows_per_s']:9,.0f} raw rows/s  peak tree PSS {r['peak_tree_pss_gib']:.2f} GiB  "
                  f"peak process RSS {r['peak_process_rss_gib']:.2f} GiB  stages {r['timings']}", flush=True)

    by = {(r["rows"], r["workers"]): r for r in results}
    print("\nspeed-up of the most workers over one (target >= 1.8):")
    wmax = max(args.workers)
    for rows in args.rows:
        if (rows, 1) in by and (rows, wmax) in by:
            print(f"  {rows:>10,} rows: {by[(rows, 1)]['pipeline_s'] / by[(rows, wmax)]['pipeline_s']:.2f}x")
    if len(args.rows) > 1:
        lo, hi = min(args.rows), max(args.rows)
        print(f"\ncost growth {lo:,} -> {hi:,} rows (linear = {hi / lo:.1f}x; per-row cost ratio 1.0):")
        for w in args.workers:
            ratio = by[(hi, w)]["pipeline_s"] / by[(lo, w)]["pipeline_s"]
            print(f"  workers={w}: time x{ratio:.2f}, per-row cost ratio {ratio / (hi / lo):.2f}")
    peak = max(r["peak_tree_pss_gib"] for r in results if r["rows"] == max(args.rows))
    print(f"\npeak memory of the whole process tree at {max(args.rows):,} rows: {peak:.2f} GiB (target < 4)")

    (args.work / "bench_preprocess.json").write_text(json.dumps(results, indent=2))
    _plot(results, args.work / "bench_preprocess.png")
    print(f"wrote {args.work / 'bench_preprocess.json'} and {args.work / 'bench_preprocess.png'}")
    return 0


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for w in sorted({r["workers"] for r in results}):
        rs = sorted((r for r in results if r["workers"] == w), key=lambda r: r["rows"])
        ax[0].plot([r["rows"] for r in rs], [r["rows_per_s"] for r in rs], "o-", label=f"{w} worker(s)")
        ax[1].plot([r["rows"] for r in rs], [r["peak_tree_pss_gib"] for r in rs], "o-", label=f"{w} worker(s)")
    ax[0].set(xlabel="raw interactions", ylabel="raw rows / s", title="preprocess throughput")
    ax[1].axhline(4, color="red", ls="--", lw=1, label="4 GiB target")
    ax[1].set(xlabel="raw interactions", ylabel="GiB", title="peak memory (process tree PSS)")
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
