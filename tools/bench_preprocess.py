#!/usr/bin/env python
"""Preprocessing throughput on synthetic GoodReads-format data: 1 vs 2 Ray workers on the same
input, at several sizes, with peak memory. Prints a table and ratios; writes JSON and a PNG.

    python tools/bench_preprocess.py [--rows 1000000 4000000] [--workers 1 2] [--repeat 3] [--work data/bench]

Timed runs are interleaved (1, 2, 1, 2, ...) and each figure is the median over `--repeat` rounds,
since a shared 2-vCPU machine drifts by 10-15% between minutes; a ratio is the median of the rounds'
ratios. Memory is measured in one more run per configuration, not in the timed ones: sampling PSS
reads every process's smaps (the kernel walks each page table under the process's memory lock), and
in one bench the metered pair gave 1.42x where the timed rounds gave 1.83x.

Every run also counts the CPU seconds used while its pipeline ran, by process (workers, driver, Ray
Data's helper actors, Ray's daemons; sampled from /proc, cheap). With one worker a second CPU takes
all but the worker's share; with two workers on two CPUs nothing does, and CPU seconds / CPUs is a
floor on the run's time, so the best speed-up the machine allows is printed next to the measured one.
With two sizes it also prints the speed-up on the rows added between them, where the fixed costs of
a run (Ray starting each stage, worker imports, the helper actors) cancel.

Targets (issue 2): 2 workers >= 1.8x one worker; cost linear in rows; peak RSS < 4 GiB at 4M rows.
Each run is a fresh `flip-dist preprocess` process with its own local Ray, measured from outside.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:
    import flip_dist  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flip_dist.data.synthetic_goodreads import write_raw_goodreads
from flip_dist.proc_meter import TreeCpuMeter, TreeMemoryMeter

GIB = 1 << 30


def raw_data(work: Path, rows: int, seed: int) -> Path:
    """Generate once per (rows, seed); a finished folder carries a DONE marker."""
    folder = work / f"raw-{rows}-s{seed}"
    if not (folder / "DONE").is_file():
        write_raw_goodreads(folder, rows, seed=seed)
        (folder / "DONE").write_text("ok\n")
    return folder


def ray_role(driver: int):
    """Who a process of a preprocess run is: the driver, a Ray worker (tasks and Ray Data's map
    workers), one of Ray Data's helper actors (started once per cluster), or a Ray daemon."""
    def role(pid: int, titles: set[str]) -> str:
        text = " ".join(titles)
        if pid == driver:
            return "driver"
        if "_StatsActor" in text or "AutoscalingCoordinator" in text:
            return "data_actors"
        if "ray::" in text and "Agent" not in text:
            return "workers"
        return "daemons"
    return role


ROLES = ("workers", "driver", "data_actors", "daemons")


def run_once(raw: Path, out: Path, workers: int, args: argparse.Namespace, measure_memory: bool) -> dict:
    cmd = [sys.executable, "-m", "flip_dist.cli", "preprocess", "--dataset", "goodreads",
           "--raw", str(raw), "--out", str(out), "--overwrite", "--workers", str(workers),
           "--tokenizer", args.tokenizer, "--max-length", str(args.max_length),
           "--set", f"preprocess.part_bytes={args.part_bytes}",
           "--set", f"preprocess.staging_rows={args.staging_rows}",
           "--set", f"ray.num_cpus={args.cpus}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meter = TreeMemoryMeter(proc.pid) if measure_memory else contextlib.nullcontext()
    with meter, TreeCpuMeter(proc.pid) as cpu:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"preprocess failed ({proc.returncode}):\n{stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    role = ray_role(proc.pid)
    start = manifest["started_at_unix"]
    pipeline = cpu.by_role(role, start, start + manifest["timings"]["total_s"])
    r = {"wall_s": wall, "pipeline_s": manifest["timings"]["total_s"], "timings": manifest["timings"],
         "num_samples": manifest["num_samples"], "num_features": manifest["num_features"], "metered": measure_memory,
         "pipeline_cpu_s": {k: pipeline.get(k, 0.0) for k in ROLES}}
    if measure_memory:
        r.update(peak_tree_pss_gib=meter.peak_tree_pss / GIB, peak_process_rss_gib=meter.peak_process_rss / GIB)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; figures are medians")
    ap.add_argument("--work", type=Path, default=Path("data/bench"))
    ap.add_argument("--tokenizer", default="minilm")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--part-bytes", type=int, default=64 << 20)
    ap.add_argument("--staging-rows", type=int, default=150_000)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (same for every run)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.work.mkdir(parents=True, exist_ok=True)

    results = []
    for rows in args.rows:
        raw = raw_data(args.work, rows, args.seed)
        for rnd in [*range(args.repeat), "memory"]:
            for w in args.workers:
                r = run_once(raw, args.work / "out", w, args, measure_memory=rnd == "memory")
                r.update(rows=rows, workers=w, round=rnd, rows_per_s=rows / r["pipeline_s"])
                results.append(r)
                mem = (f"  peak tree PSS {r['peak_tree_pss_gib']:.2f} GiB  peak process RSS "
                       f"{r['peak_process_rss_gib']:.2f} GiB" if r["metered"] else "")
                cpu = " ".join(f"{k} {v:.1f}" for k, v in r["pipeline_cpu_s"].items())
                print(f"rows={rows:>10,} workers={w} round {rnd}  pipeline {r['pipeline_s']:7.1f} s  "
                      f"wall {r['wall_s']:7.1f} s  {r['rows_per_s']:9,.0f} raw rows/s{mem}  "
                      f"stages {r['timings']}  CPU-s in the pipeline: {cpu}", flush=True)

    def runs(rows: int, w: int) -> list[dict]:
        return [r for r in results if r["rows"] == rows and r["workers"] == w and not r["metered"]]

    def median_s(rows: int, w: int) -> float:
        return statistics.median(r["pipeline_s"] for r in runs(rows, w))

    wmax = max(args.workers)
    print(f"\nmedian pipeline seconds over {args.repeat} round(s), and the speed-up of {wmax} workers over one "
          f"(target >= 1.8; median of the rounds' ratios, and each round's):")
    for rows in args.rows:
        line = "  ".join(f"{w} worker(s) {median_s(rows, w):6.1f} s" for w in args.workers)
        if 1 in args.workers and wmax > 1:
            ratios = [a["pipeline_s"] / b["pipeline_s"] for a, b in zip(runs(rows, 1), runs(rows, wmax))]
            stages = {k: statistics.median(r["timings"][k] for r in runs(rows, 1))
                      / statistics.median(r["timings"][k] for r in runs(rows, wmax))
                      for k in runs(rows, 1)[0]["timings"] if k != "total_s"}
            line += (f"  speed-up {statistics.median(ratios):.2f}x  (rounds: "
                     f"{', '.join(f'{x:.2f}' for x in ratios)}; per stage: "
                     f"{', '.join(f'{k[:-2]} {v:.2f}' for k, v in stages.items())})")
        print(f"  {rows:>10,} rows: {line}")
    ncpu = len(os.sched_getaffinity(0))   # the CPUs this process (and the runs it starts) may use
    print(f"\nCPU seconds used while the pipeline ran, by process (median); this machine has {ncpu} CPUs, so a run "
          f"cannot take less than its CPU seconds / {ncpu}, whatever the scheduling:")
    for rows in args.rows:
        for w in args.workers:
            med = {k: statistics.median(r["pipeline_cpu_s"][k] for r in runs(rows, w)) for k in ROLES}
            total = sum(med.values())
            line = (f"  {rows:>10,} rows, {w} worker(s): " + ", ".join(f"{k} {v:.1f}" for k, v in med.items())
                    + f"; total {total:.1f} CPU-s")
            if w > 1 and 1 in args.workers:
                line += (f" -> at least {total / ncpu:.1f} s, so at most "
                         f"{median_s(rows, 1) / (total / ncpu):.2f}x the 1-worker {median_s(rows, 1):.1f} s")
            print(line)
    if len(args.rows) > 1:
        lo, hi = min(args.rows), max(args.rows)
        print(f"\ncost growth {lo:,} -> {hi:,} rows (linear = {hi / lo:.1f}x; per-row cost ratio 1.0):")
        for w in args.workers:
            ratio = median_s(hi, w) / median_s(lo, w)
            print(f"  workers={w}: time x{ratio:.2f}, per-row cost ratio {ratio / (hi / lo):.2f}")
        if 1 in args.workers and wmax > 1:
            added = (median_s(hi, 1) - median_s(lo, 1)) / (median_s(hi, wmax) - median_s(lo, wmax))
            print(f"  speed-up of {wmax} workers on the {hi - lo:,} rows added ({lo:,} -> {hi:,}), where each "
                  f"run's fixed costs cancel: {added:.2f}x")
    peak = max(r["peak_tree_pss_gib"] for r in results if r["rows"] == max(args.rows) and r["metered"])
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
    for w in sorted({r["workers"] for r in results}):   # medians as lines, every run as a dot
        sizes = sorted({r["rows"] for r in results})
        for a, key in ((ax[0], "rows_per_s"), (ax[1], "peak_tree_pss_gib")):
            rs = [r for r in results if r["workers"] == w and r["metered"] == (key != "rows_per_s")]
            line, = a.plot(sizes, [statistics.median(r[key] for r in rs if r["rows"] == n) for n in sizes],
                           "-", label=f"{w} worker(s)")
            a.scatter([r["rows"] for r in rs], [r[key] for r in rs], s=12, color=line.get_color())
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
