#!/usr/bin/env python
"""Per-worker peak memory of FLIP pretraining with RoBERTa-Large under DeepSpeed ZeRO-2 / ZeRO-3,
next to DeepSpeed's own estimate of the model states. Prints a table; writes JSON and a PNG.

    python tools/bench_zero_memory.py [--stages zero2 zero3] [--steps 3] [--batch-size 2]
                                      [--max-length 64] [--work runs/bench_zero] [--keep-artifacts]
                                      [--env KEY=VALUE ...]
    python tools/bench_zero_memory.py --one zero3 [...]     # one preset only, in this process

Needs the machine to itself: a concurrent `ray stop` (tests/test_e2e_ray_job.py runs one) kills
this run's Ray too, and Ray's memory monitor kills workers when the whole node passes 95%.

RoBERTa-Large has random weights (built from its published config: fine for memory and speed),
the data is ML-100K tokenized with the RoBERTa BPE at a short max length, and the run is the
distributed runtime: 2 Ray Train CPU workers (gloo), TorchRec tables, the dense side (PLM + ID
model + FLIP heads) in a DeepSpeed engine with the chosen ds_configs/ preset.

Every piece runs in a fresh subprocess of this script (`--part ...`), so one Ray / DeepSpeed run
leaks no memory into the next: preprocessing (once), the idle baseline, DeepSpeed's estimate, and
each preset. Peak RSS per rank is measured inside the workers (ru_maxrss, flip_dist.distributed.worker);
the peak PSS of the whole process tree (driver, raylet, workers) is sampled from outside.
Subprocess logs go to <work>/logs/.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
try:
    import flip_dist  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

GIB = 1 << 30
NUM_WORKERS = 2

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20      # KiB -> GiB (Linux)


def _rss_now_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / GIB


def data_dir(args: argparse.Namespace) -> Path:
    return (args.work / f"ml100k-roberta-L{args.max_length}").resolve()


def overrides(args: argparse.Namespace, preset: str) -> list[str]:
    work = args.work.resolve()
    return [f"model.plm={args.plm}", f"pretrain.batch_size={args.batch_size * NUM_WORKERS}",   # global
            f"pretrain.max_steps={args.steps}",
            f"dist.num_workers={NUM_WORKERS}", f"dist.cpus_per_worker={args.cpus_per_worker}",
            f"dist.ds_config={preset}", "dist.data=exact", "dist.log_every=1",
            f"pretrain.out_dir={work / preset}", f"dist.storage_path={work / 'ray'}", f"ray.num_cpus={args.cpus}"]


# ---------------------------------------------------------------------------- parts (subprocesses)
def part_preprocess(args: argparse.Namespace) -> dict:
    from flip_dist.config import PreprocessConfig, RayConfig
    from flip_dist.data.preprocess import preprocess
    from flip_dist.ray_runtime import ray_session

    raw = ROOT / "data" / "raw" / "ml-100k"
    if not (raw / "ml-100k.inter").is_file():
        subprocess.run([sys.executable, "-m", "flip_dist.cli", "data", "get", "ml-100k", "--out", str(raw)],
                       check=True, cwd=ROOT)
    out = data_dir(args)
    t0 = time.perf_counter()
    with ray_session(RayConfig(num_cpus=args.cpus)):
        manifest = preprocess(PreprocessConfig(dataset="ml-100k", raw_dir=str(raw), out_dir=str(out),
                                               tokenizer="roberta-bpe", max_length=args.max_length,
                                               num_workers=2, overwrite=True))
    return {"seconds": time.perf_counter() - t0, "num_train": manifest["num_train"],
            "num_features": manifest["num_features"]}


def part_baseline(args: argparse.Namespace) -> dict:
    """RSS of a worker-like process that imports what a worker imports and builds nothing."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    out: dict[str, Any] = {"python_gib": _maxrss_gib()}
    import deepspeed  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    out["torch_transformers_deepspeed_gib"] = _maxrss_gib()
    import ray.train  # noqa: F401
    import torchrec  # noqa: F401

    import flip_dist.distributed.worker  # noqa: F401

    out["plus_ray_torchrec_flip_worker_gib"] = _maxrss_gib()
    out["rss_now_gib"] = _rss_now_gib()
    return out


def part_estimate(args: argparse.Namespace) -> dict:
    """DeepSpeed's estimate for the model states of exactly the dense module the engine wraps."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    import torch
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    from flip_dist.config import load_config
    from flip_dist.train.local import build_local

    cfg = load_config(None, overrides(args, "zero2"))
    with torch.device("cpu"):
        dense = build_local(cfg, "pretrain", data_dir(args))[1].dense
    plm_params = sum(p.numel() for p in dense.plm.parameters())
    n = NUM_WORKERS
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        stage_1_and_2.estimate_zero2_model_states_mem_needs_all_live(dense, num_gpus_per_node=n, num_nodes=1)
        stage3.estimate_zero3_model_states_mem_needs_all_live(dense, num_gpus_per_node=n, num_nodes=1)
    total = stage_1_and_2.model_to_params(dense)
    _, largest = stage3.model_to_params(dense)
    z2_cpu, z2_dev = stage_1_and_2.estimate_zero2_model_states_mem_needs(total, n, 1, cpu_offload=False)
    # The runtime builds the whole model in every worker and lets deepspeed.initialize partition it
    # (no deepspeed.zero.Init): DeepSpeed's zero_init=0 case.
    z3_cpu, z3_dev, _ = stage3.estimate_zero3_model_states_mem_needs(total, largest, n, 1, cpu_offload=False,
                                                                     cpu_offload_params=False, zero_init=False)
    z3i_cpu, z3i_dev, _ = stage3.estimate_zero3_model_states_mem_needs(total, largest, n, 1, cpu_offload=False,
                                                                       cpu_offload_params=False, zero_init=True)
    # DeepSpeed's formulas assume fp16/bf16 params + fp32 master copy. These presets are fp32: params
    # 4 B (full copy in ZeRO-2, a 1/N shard in ZeRO-3), and per 1/N shard an fp32 master copy 4 B
    # (DeepSpeed clones it even in fp32), gradient 4 B, AdamW m and v 8 B.
    fp32 = {"zero2": 4 * total + 16 * total / n, "zero3": 4 * largest + 20 * total / n}
    return {"total_params": total, "plm_params": plm_params, "largest_layer_params": largest,
            "deepspeed_printed": printed.getvalue(),
            "zero2": {"per_device_bytes": z2_dev, "per_node_cpu_bytes": z2_cpu, "option": "offload_optimizer=none"},
            "zero3": {"per_device_bytes": z3_dev, "per_node_cpu_bytes": z3_cpu,
                      "option": "offload_param=none, offload_optimizer=none, zero_init=0",
                      "zero_init1_per_device_bytes": z3i_dev, "zero_init1_per_node_cpu_bytes": z3i_cpu},
            "fp32_analytic_bytes": fp32}


def part_one(args: argparse.Namespace) -> dict:
    """One preset: a fresh pretraining run; the per-step metrics the workers logged."""
    from flip_dist.config import load_config
    from flip_dist.distributed.metrics_log import read_metrics
    from flip_dist.distributed.trainer import run_stage

    preset = args.one
    cfg = load_config(None, overrides(args, preset))
    out_dir = Path(cfg.pretrain.out_dir)
    if out_dir.exists() and args.work.resolve() in out_dir.resolve().parents:
        shutil.rmtree(out_dir)      # metrics.jsonl is appended to: start clean
    t0 = time.perf_counter()
    error = None
    try:
        summary = run_stage(cfg, "pretrain", data_dir(args))
    except Exception as e:     # e.g. Ray's OOM killer: keep the steps the workers did log
        import traceback

        text = "".join(traceback.format_exception(e))
        print(text, file=sys.stderr)
        error = ("OOM: " if "OutOfMemoryError" in text or "running low on memory" in text else "") \
            + f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        summary = {}
    seconds = time.perf_counter() - t0
    log_file = out_dir / "metrics.jsonl"
    rows = [r for r in read_metrics(out_dir) if r["stage"] == "pretrain"] if log_file.is_file() else []
    if not args.keep_artifacts:     # a ZeRO checkpoint of RoBERTa-Large with AdamW states is ~6 GB
        for path in (summary.get("run"), summary.get("export")):
            if path and Path(path).exists():
                shutil.rmtree(path, ignore_errors=True)
    return {"preset": preset, "run_stage_s": seconds, "rows": rows, "driver_maxrss_gib": _maxrss_gib(),
            "error": error, "summary": {k: summary.get(k) for k in ("run", "checkpoint", "export", "metrics_log")}}


PARTS = {"preprocess": part_preprocess, "baseline": part_baseline, "estimate": part_estimate, "one": part_one}


# ---------------------------------------------------------------------------- driver
def run_part(args: argparse.Namespace, part: str, extra: list[str], result: Path, meter: bool = False) -> dict:
    """This script again, in a fresh process; its JSON result, and its tree's peak PSS if metered."""
    from flip_dist.proc_meter import TreeMemoryMeter

    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{result.stem}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--result", str(result),
           "--work", str(args.work), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--plm", args.plm, "--cpus", str(args.cpus),
           "--cpus-per-worker", str(args.cpus_per_worker), *(["--keep-artifacts"] if args.keep_artifacts else []),
           *extra]
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    env = dict(os.environ)
    if meter:      # the preset runs: their Ray (raylet, workers) inherits this environment
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SystemExit(f"--env {item!r}: expected KEY=VALUE")
            env[key] = value
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        peak = sampler = None
        if meter:
            with TreeMemoryMeter(proc.pid, interval=1.0, timeline="RayTrainWorker") as sampler:
                proc.wait()
            peak = sampler.peak_tree_pss / GIB
        else:
            proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result.is_file():
        tail = log.read_text(errors="replace")[-6000:]
        raise SystemExit(f"part {part} {' '.join(extra)} failed (exit {proc.returncode}); log {log}:\n{tail}")
    out = json.loads(result.read_text())
    out["wall_s"] = wall
    if peak is not None:
        out["tree_peak_pss_gib"] = peak
    if sampler is not None:
        out["worker_rss_timeline"] = [(t, pid, rss / GIB) for t, pid, rss in sampler.timeline]
        peaks: dict[int, float] = {}
        for _, pid, rss in out["worker_rss_timeline"]:
            peaks[pid] = max(peaks.get(pid, 0.0), rss)
        out["worker_rss_peak_sampled_gib"] = sorted(peaks.values(), reverse=True)
    return out


def summarise(res: dict, est: dict, steps: int) -> dict:
    rows = res["rows"]
    last = rows[-1] if rows else {}
    preset = res["preset"]
    stage = "zero3" if "zero3" in preset else "zero2" if "zero2" in preset else None
    times = [r["time"] for r in rows]
    step_s = [b - a for a, b in zip(times, times[1:])]   # between reports; the first step is warm-up
    ds = est[stage]["per_device_bytes"] / GIB if stage else None
    fp32 = est["fp32_analytic_bytes"][stage] / GIB if stage else None
    peak = last.get("peak_rss_gib")
    status = "ok" if not res.get("error") else f"FAILED after {last.get('step', 0)}/{steps} steps: {res['error']}"
    return {"preset": preset, "steps": last.get("step", 0), "status": status,
            "peak_rss_gib_by_rank": last.get("peak_rss_gib_by_rank", []), "peak_rss_gib": peak,
            "peak_rss_gib_by_step": [r["peak_rss_gib_by_rank"] for r in rows],
            "sampled_peak_rss_gib_by_worker": res.get("worker_rss_peak_sampled_gib"),
            "ds_estimate_gib": ds, "fp32_analytic_gib": fp32,
            "ratio_rss_to_ds": peak / ds if ds and peak else None,
            "samples_per_s": last.get("samples_per_s"),
            "steady_s_per_step": (sum(step_s) / len(step_s)) if step_s else None,
            "final_loss": last.get("total"),
            "final_losses": {k: last[k] for k in ("mlm", "mtm", "icl", "total") if k in last},
            "tree_peak_pss_gib": res.get("tree_peak_pss_gib"), "wall_s": res["wall_s"],
            "run_stage_s": res["run_stage_s"]}


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=["zero2", "zero3"], help="ds_configs/ presets")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2, help="rows per worker per step")
    ap.add_argument("--max-length", type=int, default=64, help="token max length of the preprocessed text")
    ap.add_argument("--plm", default="roberta-large")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--cpus-per-worker", type=float, default=0.5)
    ap.add_argument("--work", type=Path, default=Path("runs/bench_zero"))
    ap.add_argument("--keep-artifacts", action="store_true",
                    help="keep each run's Ray Train checkpoint and export (several GB each)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the preset runs, inherited by the Ray workers (e.g. "
                         "MALLOC_MMAP_THRESHOLD_=131072 to see how much of the RSS is allocator slack); repeatable")
    ap.add_argument("--one", help="run only this preset, in this process (what the driver's subprocesses do)")
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    if args.part or args.one:
        part = args.part or "one"
        if part == "one" and not args.one:
            ap.error("--part one needs --one PRESET")
        out = PARTS[part](args)
        result = args.result or args.work / f"{part}{'-' + args.one if args.one else ''}.json"
        result.write_text(json.dumps(out, indent=2))
        print(json.dumps({k: v for k, v in out.items() if k not in ("rows", "deepspeed_printed")}, indent=2))
        return 0

    t_start = time.perf_counter()
    if args.env:
        print(f"extra environment for the preset runs: {' '.join(args.env)}")
    res_dir = args.work / "parts"
    res_dir.mkdir(parents=True, exist_ok=True)
    if (data_dir(args) / "manifest.json").is_file():
        print(f"data: {data_dir(args)} (already preprocessed)", flush=True)
    else:
        print(f"preprocessing ML-100K with roberta-bpe, max_length={args.max_length} ...", flush=True)
        pre = run_part(args, "preprocess", [], res_dir / "preprocess.json")
        print(f"  {pre['num_train']:,} train rows, {pre['num_features']:,} features, {pre['wall_s']:.0f} s", flush=True)

    base = run_part(args, "baseline", [], res_dir / "baseline.json")
    print(f"baseline RSS of an idle worker-like process: python {base['python_gib']:.2f} GiB, "
          f"+torch+transformers+deepspeed {base['torch_transformers_deepspeed_gib']:.2f} GiB, "
          f"+ray.train+torchrec+flip_dist.distributed.worker {base['plus_ray_torchrec_flip_worker_gib']:.2f} GiB",
          flush=True)

    est = run_part(args, "estimate", [], res_dir / "estimate.json")
    print(f"\ndense module: {est['total_params'] / 1e6:.1f}M params ({est['plm_params'] / 1e6:.1f}M in the PLM), "
          f"largest layer {est['largest_layer_params'] / 1e6:.1f}M. DeepSpeed says:")
    print("  " + est["deepspeed_printed"].rstrip().replace("\n", "\n  "), flush=True)

    runs = []
    for preset in args.stages:
        print(f"\n{preset}: {args.steps} steps, {NUM_WORKERS} workers x {args.batch_size} rows ...", flush=True)
        res = run_part(args, "one", ["--one", preset], res_dir / f"one-{preset}.json", meter=True)
        s = summarise(res, est, args.steps)
        runs.append({**s, "rows": res["rows"], "worker_rss_timeline": res.get("worker_rss_timeline", [])})
        print(f"  {s['status']}; {res['wall_s']:.0f} s (run_stage {res['run_stage_s']:.0f} s); peak RSS by rank "
              f"after each step {s['peak_rss_gib_by_step']} GiB; sampled peak RSS by worker "
              f"{[round(x, 2) for x in s['sampled_peak_rss_gib_by_worker'] or []]} GiB; "
              f"process-tree peak PSS {_num(s['tree_peak_pss_gib'], '.2f')} GiB", flush=True)

    wall = time.perf_counter() - t_start
    idle = base["plus_ray_torchrec_flip_worker_gib"]
    header = (f"{'preset':<8} {'steps':>5} {'peak RSS/worker GiB (r0, r1)':>29} {'DS est/worker GiB':>17} "
              f"{'RSS/DS':>6} {'(RSS-idle)/DS':>13} {'fp32 est GiB':>12} {'samples/s':>9} {'s/step':>7} "
              f"{'final loss':>10} {'tree PSS GiB':>12}  status")
    print("\n" + header)
    print("-" * len(header))
    for s in runs:
        ranks = ", ".join(f"{x:.2f}" for x in s["peak_rss_gib_by_rank"]) or "-"
        ds, peak = s["ds_estimate_gib"], s["peak_rss_gib"]
        print(f"{s['preset']:<8} {s['steps']:>5} {ranks:>29} {_num(ds, '.2f'):>17} "
              f"{_num(peak / ds if ds and peak else None, '.2f'):>6} "
              f"{_num((peak - idle) / ds if ds and peak else None, '.2f'):>13} "
              f"{_num(s['fp32_analytic_gib'], '.2f'):>12} "
              f"{_num(s['samples_per_s'], '.3f'):>9} {_num(s['steady_s_per_step'], '.1f'):>7} "
              f"{_num(s['final_loss'], '.4f'):>10} {_num(s['tree_peak_pss_gib'], '.2f'):>12}  {s['status']}")
    print(f"\nDS est/worker: DeepSpeed's 'per GPU' figure for {NUM_WORKERS} devices, no offload (ZeRO-3: zero_init=0, "
          f"as this runtime builds the whole model in each worker before deepspeed.initialize partitions it): "
          f"params + grads + optimizer states each worker holds, assuming 16-bit params with an fp32 master copy.\n"
          f"  Its 'per CPU' column (host memory of the node; the same RAM here): ZeRO-2 "
          f"{est['zero2']['per_node_cpu_bytes'] / GIB:.2f} GiB, "
          f"ZeRO-3 {est['zero3']['per_node_cpu_bytes'] / GIB:.2f} GiB.")
    print("fp32 est: the same model states for these fp32 presets (this script's formula, not DeepSpeed's): "
          "ZeRO-2 4P + 16P/N bytes, ZeRO-3 4*largest_layer + 20P/N bytes (P params, N workers).")
    print(f"peak RSS: ru_maxrss of each Ray Train worker at its last logged step (max so far). Besides model states it "
          f"holds the Python/torch/Ray runtime (an idle worker-like process: {idle:.2f} GiB after importing "
          f"torch+transformers+deepspeed+ray.train+torchrec+flip_dist.distributed.worker; (RSS-idle)/DS subtracts it), "
          f"the TorchRec tables, activations, allocator slack, and the whole fp32 model as built before DeepSpeed "
          f"partitions it.\ns/step: mean time between step reports after the first (warm-up) step. tree PSS: the peak "
          f"summed PSS of the run's whole process tree (driver, raylet, Ray actors, workers), sampled each second.")
    print(f"wall time: {wall:.0f} s")

    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "baseline": base, "estimate": est, "runs": runs, "wall_s": wall}
    (args.work / "bench_zero_memory.json").write_text(json.dumps(report, indent=2))
    _plot(runs, idle, args.work / "bench_zero_memory.png")
    print(f"wrote {args.work / 'bench_zero_memory.json'} and {args.work / 'bench_zero_memory.png'}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def _plot(runs: list[dict], idle: float, path: Path) -> None:
    """Left: peak RSS per rank next to the estimates. Right: each worker's RSS over time, with the
    step reports marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(runs))
    n_ranks = max([len(r["peak_rss_gib_by_rank"]) for r in runs] + [NUM_WORKERS])
    width = 0.8 / (n_ranks + 2)
    fig, (ax, tl) = plt.subplots(1, 2, figsize=(6 + 2.2 * len(runs), 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
    for k in range(n_ranks):
        ax.bar(x + k * width, [(r["peak_rss_gib_by_rank"] + [0] * n_ranks)[k] for r in runs], width,
               label=f"peak RSS rank {k}")
    ax.bar(x + n_ranks * width, [r["ds_estimate_gib"] or 0 for r in runs], width, label="DeepSpeed estimate")
    ax.bar(x + (n_ranks + 1) * width, [r["fp32_analytic_gib"] or 0 for r in runs], width, label="fp32 model states")
    ax.axhline(idle, color="gray", ls="--", lw=1, label="idle worker-like process")
    ax.set_xticks(x + width * (n_ranks + 1) / 2,
                  [f"{r['preset']}\n{r['steps']} steps" + ("" if r["status"] == "ok" else " (failed)") for r in runs])
    top = max([x for r in runs for x in r["peak_rss_gib_by_rank"]] + [r["ds_estimate_gib"] or 0 for r in runs] + [1])
    ax.set(ylabel="GiB per worker", title="per-worker peak memory vs model-state estimates", ylim=(0, top * 1.4))
    ax.legend(fontsize=7, loc="upper left", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"][n_ranks + 2:]   # not the bars' colours
    for i, r in enumerate(runs):
        samples = r.get("worker_rss_timeline") or []
        if not samples:
            continue
        t0 = min(t for t, _, _ in samples)
        for j, pid in enumerate(sorted({pid for _, pid, _ in samples})):
            pts = [(t - t0, rss) for t, p, rss in samples if p == pid]
            tl.plot(*zip(*pts), color=colors[i % len(colors)], ls="-" if j == 0 else ":", lw=1.2,
                    label=f"{r['preset']} worker {j}")
        for row in r["rows"]:
            tl.axvline(row["time"] - t0, color=colors[i % len(colors)], alpha=0.3, lw=0.8)
    tl.set(xlabel="seconds since the workers started (vertical lines: step reports)", ylabel="RSS GiB",
           title="Ray Train worker RSS over time (sampled each second)")
    tl.legend(fontsize=7)
    tl.grid(alpha=0.3)
    fig.suptitle("RoBERTa-Large FLIP pretraining, 2 CPU workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
