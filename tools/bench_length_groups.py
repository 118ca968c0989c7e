#!/usr/bin/env python
"""The PLM on rows grouped by length (model.plm_length_groups) against one call padded to the
batch's longest row: the one-worker pretraining step of our runtime (tools/bench_naive.py's
OursSide), the same model and batches, the setting flipped between steps, rounds interleaved
(A B, B A, ...). Prints each round's mean step time, the medians and the median of the paired
ratios; also the share of padding each setting computes on these batches.

    .venv/bin/python tools/bench_length_groups.py [--dataset ml100k] [--groups 4] [--rounds 6] [--batches 4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
try:
    import flip_dist  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

import bench_naive  # noqa: E402


def padded_share(batches: list, groups: int) -> float:
    """Padding computed by the PLM (masked and unmasked rows stacked) as a share of its tokens."""
    real = padded = 0
    for b in batches:
        lengths = sorted(b.attention_mask.sum(1).tolist() * 2)
        n = len(lengths)
        runs = [lengths[i * n // groups:(i + 1) * n // groups] for i in range(groups)]
        real += sum(lengths)
        padded += sum(len(r) * max(r) for r in runs if r)
    return 1 - real / padded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=list(bench_naive.DATASETS), default="ml100k")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=4, help="steps per setting per round (the same batches)")
    args = ap.parse_args(argv)
    side = bench_naive.OursSide(bench_naive.DATASETS[args.dataset], "fp32", [])
    rt, dense = side.rt, side.rt.engine.module
    batches = [next(side.batches) for _ in range(args.batches)]

    def step(batch) -> float:
        t0 = time.perf_counter()
        rt.train_step(batch)
        if hasattr(rt.sparse, "after_backward"):
            rt.sparse.after_backward()
        rt.engine.step()
        return time.perf_counter() - t0

    for b in batches[:2]:                              # warm-up
        step(b)
    settings = (1, args.groups)
    times: dict[int, list[float]] = {g: [] for g in settings}
    for r in range(args.rounds):
        for g in settings if r % 2 == 0 else settings[::-1]:
            dense.length_groups = g
            times[g].append(statistics.mean(step(b) for b in batches))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"groups={g} {1e3 * times[g][-1]:.0f} ms" for g in settings),
              flush=True)
    ratios = [a / b for a, b in zip(times[1], times[args.groups])]
    print(f"{args.dataset}, batch {len(batches[0])}, one worker, fp32; padding the PLM computes: "
          f"groups=1 {100 * padded_share(batches, 1):.1f}%, groups={args.groups} "
          f"{100 * padded_share(batches, args.groups):.1f}%")
    print(f"median step: groups=1 {1e3 * statistics.median(times[1]):.0f} ms, groups={args.groups} "
          f"{1e3 * statistics.median(times[args.groups]):.0f} ms; speed-up (median of paired rounds) "
          f"{statistics.median(ratios):.3f}x, rounds {[round(x, 3) for x in ratios]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
