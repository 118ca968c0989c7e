#!/usr/bin/env python
"""NCE noise sampler throughput: AliasSampler.sample vs torch.multinomial on a Zipf-like table of
GoodReads' feature vocabulary size, side by side in one run, plus the alias table's build time.

    python tools/bench_alias.py [--vocab 4500000] [--batches 25600 102400 1048576] [--threads 1]
                                [--device cpu] [--out data/bench/bench_alias.json]

Target: >= 20M draws/s per core and faster than multinomial. The two samplers are timed in
alternating rounds and compared by the median of per-round ratios, since the machine is noisy;
figures are printed, never asserted. 25600 and 102400 = the K=25 noise ids of a 1024 and a
4096 batch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

try:
    import flip_dist  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flip_dist.models.sampling import AliasSampler, build_alias_table

TARGET_PER_CORE = 20e6


def zipf_counts(m: int, s: float) -> np.ndarray:
    """Integer counts ~ 2e8 / rank^s + 1 (sum ~2e9, like GoodReads' train feature occurrences),
    most frequent first as in a processed vocabulary."""
    return np.floor(2e8 / np.arange(1, m + 1, dtype=np.float64) ** s).astype(np.int64) + 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def bench_batch(sampler: AliasSampler, n: int, min_time: float, max_rounds: int,
                device: torch.device) -> dict:
    """Alternate alias and multinomial calls (calls per round sized to ~0.1 s of alias work)
    until each has had min_time; medians of per-call times and of per-round ratios."""
    gen = torch.Generator(device=device).manual_seed(0)
    prob = sampler.prob.float()  # what a multinomial user would hand it
    alias_fn = lambda: sampler.sample((n,), generator=gen)  # noqa: E731
    multi_fn = lambda: torch.multinomial(prob, n, replacement=True, generator=gen)  # noqa: E731
    alias_fn(), multi_fn()  # warm-up
    per_round = max(1, int(0.1 / max(timed(alias_fn, device), 1e-6)))
    alias_t: list[float] = []
    multi_t: list[float] = []
    total_a = total_m = 0.0
    while len(alias_t) < max_rounds and (total_a < min_time or total_m < min_time
                                          or len(alias_t) < 3):
        ta = timed(lambda: [alias_fn() for _ in range(per_round)], device) / per_round
        tm = timed(multi_fn, device)
        alias_t.append(ta)
        multi_t.append(tm)
        total_a += ta * per_round
        total_m += tm
    ratios = [m / a for a, m in zip(alias_t, multi_t)]
    a_med, m_med = statistics.median(alias_t), statistics.median(multi_t)
    return {"batch": n, "rounds": len(alias_t), "alias_calls_per_round": per_round,
            "alias_s_per_call": a_med, "multinomial_s_per_call": m_med,
            "alias_draws_per_s": n / a_med, "multinomial_draws_per_s": n / m_med,
            "alias_best_draws_per_s": n / min(alias_t),
            "speedup_vs_multinomial": statistics.median(ratios),
            "speedup_min": min(ratios), "speedup_max": max(ratios)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=4_500_000, help="table size (GoodReads: ~4.5M)")
    ap.add_argument("--zipf", type=float, default=1.07, help="Zipf exponent of the counts")
    ap.add_argument("--batches", type=int, nargs="+", default=[25 * 1024, 25 * 4096, 1 << 20])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (figures are per core)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of each sampler per batch")
    ap.add_argument("--max-rounds", type=int, default=60)
    ap.add_argument("--build-repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("data/bench/bench_alias.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cores = args.threads if device.type == "cpu" else 1
    counts = zipf_counts(args.vocab, args.zipf)

    build_s = []
    for _ in range(args.build_repeats):
        t0 = time.perf_counter()
        build_alias_table(counts)
        build_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    sampler = AliasSampler(counts, device=device)
    sync(device)
    module_s = time.perf_counter() - t0
    print(f"table: {args.vocab:,} ids, Zipf s={args.zipf}, sum of counts {int(counts.sum()):,}; "
          f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"build (numpy, vectorised Vose): min {min(build_s):.3f} s, "
          f"median {statistics.median(build_s):.3f} s over {len(build_s)}; "
          f"AliasSampler(...) incl. tensors on {device}: {module_s:.3f} s")

    rows = [bench_batch(sampler, n, args.min_time, args.max_rounds, device) for n in args.batches]
    head = (f"{'batch':>9} {'alias M/s':>10} {'/core':>8} {'multinom M/s':>13} {'/core':>8} "
            f"{'alias us':>9} {'multi us':>10} {'speedup':>8} {'(min-max)':>14} {'rounds':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        r["alias_draws_per_s_per_core"] = r["alias_draws_per_s"] / cores
        r["multinomial_draws_per_s_per_core"] = r["multinomial_draws_per_s"] / cores
        print(f"{r['batch']:>9,} {r['alias_draws_per_s'] / 1e6:>10.1f} "
              f"{r['alias_draws_per_s_per_core'] / 1e6:>8.1f} "
              f"{r['multinomial_draws_per_s'] / 1e6:>13.2f} "
              f"{r['multinomial_draws_per_s_per_core'] / 1e6:>8.2f} "
              f"{r['alias_s_per_call'] * 1e6:>9.0f} {r['multinomial_s_per_call'] * 1e6:>10.0f} "
              f"{r['speedup_vs_multinomial']:>7.1f}x "
              f"{'(' + format(r['speedup_min'], '.1f') + '-' + format(r['speedup_max'], '.1f') + ')':>14} "
              f"{r['rounds']:>6}")
    worst = min(r["alias_draws_per_s_per_core"] for r in rows)
    slowest_speedup = min(r["speedup_vs_multinomial"] for r in rows)
    met_rate, met_speed = worst >= TARGET_PER_CORE, slowest_speedup > 1.0
    print(f"target >= {TARGET_PER_CORE / 1e6:.0f}M draws/s per core: "
          f"{'met' if met_rate else 'NOT met'} (worst batch {worst / 1e6:.1f}M/s per core); "
          f"faster than multinomial: {'yes' if met_speed else 'NO'} "
          f"(smallest median speedup {slowest_speedup:.1f}x)")

    result = {"vocab": args.vocab, "zipf": args.zipf, "device": str(device),
              "threads": torch.get_num_threads(), "cores_counted": cores,
              "cpu": platform.processor() or platform.machine(), "os_cpus": os.cpu_count(),
              "torch": torch.__version__, "numpy": np.__version__,
              "build_s": build_s, "build_s_min": min(build_s), "module_build_s": module_s,
              "batches": rows, "target_draws_per_s_per_core": TARGET_PER_CORE,
              "target_met": met_rate, "faster_than_multinomial": met_speed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
