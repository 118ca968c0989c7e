#!/usr/bin/env python
"""fp32 vs bf16 on CPU, side by side in one process: where the bf16 pretraining step's time goes.

    .venv/bin/python tools/bench_precision.py [--rounds 5] [--steps 2] [--threads 0] [--seq 56]
                                              [--parts gemm,plm,step] [--profile bf16]
                                              [--data data/processed/ml-100k] [--out FILE.json]

Three measurements, each timed in alternating rounds (fp32, bf16, fp32, ...) and summarised by
medians, since the machine is shared and noisy; figures are printed, never asserted:

  gemm  the GEMM rate: the nine GEMMs of MiniLM's Linear layers (forward, input gradient, weight
        gradient; 384->384 four times a layer, 384->1536, 1536->384) at M = 2 x batch x seq
        tokens (masked and unmasked text stacked, as FlipPretrainDense runs them), in TFLOP/s.
  plm   MiniLM (all 6 layers, as load_plm gives it, in its loaded train/eval mode) forward +
        backward alone on a (2 x batch, seq) input with realistic padding: fp32; bf16 module
        weights (what DeepSpeed's bf16 does); fp32 weights under torch.autocast(bf16); bf16 weights
        with transformers' plain "sdpa" attention (PyTorch's CPU flash kernel, load_plm's choice
        before flip_sdpa_cpu_bf16). Achieved
        TFLOP/s from torch.utils.flop_counter.FlopCounterMode's analytic count and % of the GEMM
        rate of the same dtype.
  step  the real one-worker pretraining step of the distributed runtime (flip_dist.distributed.
        worker.Runtime, ml100k.yaml, batch 32, dist.data=exact) in fp32 and in bf16, both built in
        this process as rank 0 of a world of 1: forward, backward (engine.backward) and
        engine.step timed separately, then the fp32 / bf16 ratio of the medians.

--profile bf16 (or fp32, or both: bf16,fp32) prints torch.profiler's table of one such step by self
CPU time. --threads 0 keeps torch's default thread count. On a shared machine (other jobs on the
cores) wall time mostly measures the scheduler: with two threads every parallel region waits for the
descheduled one; `--threads 1 --clock cpu` (process CPU time of one compute thread) is the stable
measure there.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import flip_dist  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "ray_jobs" / "configs" / "ml100k.yaml"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HIDDEN, FFN, LAYERS = 384, 1536, 6


CLOCK = time.perf_counter      # --clock cpu: time.process_time (see the module doc)


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn, the fns taking turns round by round."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = CLOCK()
            f()
            out[k].append(CLOCK() - t)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------------------------------- (a) GEMM
def gemm_rates(tokens: int, rounds: int) -> dict[str, float]:
    """TFLOP/s of one MiniLM layer's Linear GEMMs (fwd, dgrad, wgrad), per dtype."""
    layer = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, FFN), (FFN, HIDDEN)]
    flops = sum(3 * 2 * tokens * k * n for k, n in layer)

    def make(dtype: torch.dtype) -> Callable[[], None]:
        g = torch.Generator().manual_seed(0)
        ts = [(torch.randn(tokens, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype),
               torch.randn(n, generator=g).to(dtype), torch.randn(tokens, n, generator=g).to(dtype)) for k, n in layer]

        def run() -> None:
            for x, w, b, gy in ts:
                F.linear(x, w, b)      # forward (addmm)
                gy @ w                 # grad of the input
                gy.t() @ x             # grad of the weight
        return run

    times = interleaved({name: make(dt) for name, dt in DTYPES.items()}, rounds)
    return {name: flops / med(t) / 1e12 for name, t in times.items()}


# ---------------------------------------------------------------------------------------- (b) PLM
def plm_rates(batch: int, seq: int, rounds: int, gemm: dict[str, float]) -> dict[str, dict[str, float]]:
    from torch.utils.flop_counter import FlopCounterMode

    from flip_dist.config import load_config
    from flip_dist.models.plm import load_plm

    m = load_config(str(CONFIG), []).model
    base, _ = load_plm(m.plm, m.plm_path, num_layers=m.plm_layers, dropout=m.plm_dropout)
    g = torch.Generator().manual_seed(0)
    rows = 2 * batch                                   # masked + unmasked text, one PLM call
    ids = torch.randint(1000, 30000, (rows, seq), generator=g)
    lengths = torch.randint(seq - 12, seq + 1, (rows,), generator=g)
    lengths[0] = seq                                   # the batch pads to its longest row
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()

    def variant(weights: torch.dtype, autocast: bool, attn: str | None = None) -> Callable[[], None]:
        plm = copy.deepcopy(base).to(weights)
        if attn is not None:
            plm.set_attn_implementation(attn)

        def run() -> None:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with ctx:
                out = plm(input_ids=ids, attention_mask=mask).last_hidden_state
            out.float().square().mean().backward()
            plm.zero_grad(set_to_none=True)
        return run

    fns = {"fp32": variant(torch.float32, False), "bf16 weights": variant(torch.bfloat16, False),
           "bf16 autocast": variant(torch.float32, True),
           # the same bf16 module with transformers' plain SDPA (PyTorch's CPU flash kernel in bf16)
           "bf16 w, sdpa": variant(torch.bfloat16, False, "sdpa")}
    with FlopCounterMode(display=False) as fc:
        fns["fp32"]()
    flops = fc.get_total_flops()
    times = interleaved(fns, rounds)
    out = {}
    for name, t in times.items():
        rate = flops / med(t) / 1e12
        ref = gemm["fp32" if name == "fp32" else "bf16"]
        out[name] = {"ms": med(t) * 1e3, "tflops": rate, "pct_of_gemm": 100 * rate / ref}
    out["_meta"] = {"gflop": flops / 1e9, "training_mode": base.training,
                    "attn_implementation": base.config._attn_implementation}
    return out


# ---------------------------------------------------------------------------------------- (c) step
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_runtimes(data_dir: str, precisions: list[str], run_dir: str) -> dict[str, tuple]:
    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                     LOCAL_RANK="0", LOCAL_WORLD_SIZE="1").items():
        os.environ.setdefault(k, v)
    from flip_dist.config import load_config
    from flip_dist.distributed.worker import Runtime
    from flip_dist.train.stages import get_stage

    out = {}
    for p in precisions:
        cfg = load_config(str(CONFIG), ["dist.num_workers=1", f"dist.precision={p}", "pretrain.batch_size=32",
                                        "dist.data=exact", "dist.checkpoint_every=0",
                                        f"pretrain.out_dir={run_dir}/{p}"])
        stage = get_stage("pretrain", cfg)
        rt = Runtime(cfg, stage, data_dir, f"{run_dir}/{p}")
        rt.build()
        out[p] = (rt, rt._positions())
    return out


def one_step(rt, batches) -> tuple[float, float, float]:
    """Runtime.train_step (forward, engine.backward) then engine.step, the three parts timed."""
    batch = next(batches)
    t0 = CLOCK()
    losses = rt.stage.losses(rt._forward(batch))
    t1 = CLOCK()
    rt.engine.backward(losses[rt.stage.loss_key])
    t2 = CLOCK()
    rt.engine.step()
    t3 = CLOCK()
    return t1 - t0, t2 - t1, t3 - t2


def step_times(rts: dict[str, tuple], rounds: int, steps: int) -> dict[str, dict[str, float]]:
    parts: dict[str, list[tuple[float, float, float]]] = {p: [] for p in rts}
    for rt, b in rts.values():             # warm up: first steps allocate ZeRO's buffers
        for _ in range(2):
            one_step(rt, b)
    for _ in range(rounds):
        for p, (rt, b) in rts.items():
            for _ in range(steps):
                parts[p].append(one_step(rt, b))
    out = {}
    for p, xs in parts.items():
        out[p] = {"step_ms": 1e3 * med([sum(x) for x in xs]), "forward_ms": 1e3 * med([x[0] for x in xs]),
                  "backward_ms": 1e3 * med([x[1] for x in xs]), "opt_step_ms": 1e3 * med([x[2] for x in xs])}
    if "fp32" in out and "bf16" in out:
        out["ratio_fp32_over_bf16"] = out["fp32"]["step_ms"] / out["bf16"]["step_ms"]
    return out


def profile_step(rt, batches, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(rt, batches)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="pretraining steps per precision per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time, robust on a shared machine with --threads 1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=56, help="padded prompt length (ML-100K's are ~50-56)")
    ap.add_argument("--parts", default="gemm,plm,step")
    ap.add_argument("--profile", default="", help="precisions whose step to profile, e.g. bf16 or bf16,fp32")
    ap.add_argument("--profile-rows", type=int, default=30)
    ap.add_argument("--data", default=str(ROOT / "data" / "processed" / "ml-100k"))
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    parts = set(a.parts.split(","))
    result: dict = {"threads": torch.get_num_threads(), "clock": a.clock, "torch": torch.__version__,
                    "bf16_cpu_isa": torch.backends.cpu.get_cpu_capability()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{result['bf16_cpu_isa']}, {a.clock} clock; medians of {a.rounds} interleaved rounds")

    tokens = 2 * a.batch * a.seq
    gemm = gemm_rates(tokens, max(a.rounds, 5))
    result["gemm_tflops"] = gemm
    print(f"\n(a) GEMM rate, MiniLM Linear shapes, M={tokens} tokens: fp32 {gemm['fp32']:.3f} TFLOP/s, "
          f"bf16 {gemm['bf16']:.3f} TFLOP/s (bf16/fp32 {gemm['bf16'] / gemm['fp32']:.2f}x)")

    if "plm" in parts:
        plm = plm_rates(a.batch, a.seq, a.rounds, gemm)
        result["plm"] = plm
        meta = plm["_meta"]
        print(f"\n(b) MiniLM 6 layers forward+backward, ({2 * a.batch}, {a.seq}) tokens, {meta['gflop']:.1f} GFLOP "
              f"(FlopCounterMode), attn={meta['attn_implementation']}, training mode={meta['training_mode']}")
        for name, r in plm.items():
            if not name.startswith("_"):
                print(f"    {name:14s} {r['ms']:8.1f} ms  {r['tflops']:.3f} TFLOP/s  {r['pct_of_gemm']:5.1f}% of its "
                      f"GEMM rate  (x{plm['fp32']['ms'] / r['ms']:.2f} vs fp32)")

    if "step" in parts or a.profile:
        with tempfile.TemporaryDirectory(prefix="bench-precision-") as run_dir:
            rts = build_runtimes(a.data, ["fp32", "bf16"], run_dir)
            if "step" in parts:
                st = step_times(rts, a.rounds, a.steps)
                result["step"] = st
                print(f"\n(c) one-worker pretraining step (Runtime.train_step + engine.step, batch {a.batch}), "
                      f"median of {a.rounds * a.steps} steps each:")
                for p in ("fp32", "bf16"):
                    s = st[p]
                    print(f"    {p}: {s['step_ms']:8.1f} ms  (forward {s['forward_ms']:.1f}, backward "
                          f"{s['backward_ms']:.1f}, engine.step {s['opt_step_ms']:.1f})")
                print(f"    fp32 / bf16 = {st['ratio_fp32_over_bf16']:.2f}x")
            for p in [x for x in a.profile.split(",") if x]:
                rt, b = rts[p]
                one_step(rt, b)
                print(f"\n--- profile of one {p} step (self CPU time) ---\n{profile_step(rt, b, a.profile_rows)}")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
