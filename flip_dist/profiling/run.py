"""A profile run: the distributed worker's own step (flip_dist.distributed.worker.Runtime), warmed
up, then timed phase by phase for N steps, one step's FLOPs counted, a few steps traced by
torch.profiler, the device's peak measured, and peak memory set against an estimate. Every rank
profiles itself; rank 0 gathers them into OUT/profile.json. Runs on Ray Train workers
(`profile_stage`) or as one process without Ray (`profile_in_process`: benchmarks, the GPU check)."""
from __future__ import annotations

import logging
import os
import resource
import socket
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from flip_dist.config import FlipConfig
from flip_dist.errors import FlipConfigError
from flip_dist.io_atomic import write_json_atomic
from flip_dist.profiling import memory
from flip_dist.profiling.flops import count_step_flops
from flip_dist.profiling.peak import device_peak
from flip_dist.profiling.phases import PHASES, PhaseClock, timed_collectives, watch_plm

log = logging.getLogger(__name__)
PROFILE_JSON = "profile.json"


@dataclass(frozen=True)
class ProfileArgs:
    """What the driver hands each worker (Ray Train's train_loop_config is its dict)."""

    config: dict[str, Any]           # FlipConfig.to_dict()
    stage: str                       # pretrain | finetune
    data_dir: str
    out_dir: str
    warmup: int = 3                  # steps before anything is timed (allocator, caches, lazy inits); the
                                     #   last one's FLOPs are counted (at least that one runs)
    steps: int = 10                  # timed steps
    trace_steps: int = 2             # steps under torch.profiler after the timed ones (0: no trace)
    extra: dict[str, Any] = field(default_factory=dict)   # the sweep point's values, copied into the report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / memory.GIB


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20          # KiB -> GiB


def _estimate(rt: Any, process_gib: float, rows: int, seq: int, plm: Any, plm_passes: int) -> memory.MemoryEstimate:
    from flip_dist.distributed.ds_config import zero_stage

    bf16 = rt.dtype == torch.bfloat16
    env, tables = rt.env, rt.tables
    sharded = rt.cfg.dist.sharding != "none"
    return memory.MemoryEstimate(
        process=process_gib,
        dense_state=memory.gib(memory.dense_state_bytes(memory.num_params(rt.engine.module), env.world,
                                                        zero_stage(rt.ds_config), bf16)),
        tables=memory.gib(memory.table_bytes(tables.shapes, env.world, tables.optimizer, sharded)),
        sampler=memory.gib(memory.buffer_bytes(rt.model.sampler)),
        activations=memory.gib(memory.plm_activation_bytes(plm, rows * plm_passes, seq, bf16)),
    )


def _plm_passes(dense: Any) -> int:
    """How many copies of the batch's text the PLM encodes in one step (stacked in one call)."""
    needs = getattr(dense, "needs", None)
    if needs is None:
        return 1 if getattr(dense, "plm", None) is not None else 0
    need_w, need_w_hat, _, _ = needs()
    return int(need_w) + int(need_w_hat)


def profile_loop(config: dict[str, Any]) -> None:
    """Each worker's loop (Ray Train's train_loop_per_worker, or one process)."""
    import deepspeed  # noqa: F401  (imported before the baseline: part of the process, not the model)
    import torchrec  # noqa: F401
    import transformers  # noqa: F401

    from flip_dist.train.stages import get_stage

    logging.basicConfig(level=logging.WARNING)
    args = ProfileArgs(**config)
    cfg = FlipConfig.from_dict(args.config)
    stage = get_stage(args.stage, cfg)
    if not stage.trains:
        raise FlipConfigError(f"profile: stage {args.stage!r} does not train; profile pretrain or finetune")
    process_gib = _rss_gib()
    out = Path(args.out_dir)
    clock = PhaseClock(sync=(lambda: torch.cuda.synchronize()) if cfg.dist.use_gpu else None)
    with timed_collectives(clock):          # from before DeepSpeed's backend takes its references
        _profile(args, cfg, stage, out, process_gib, clock)


def _profile(args: ProfileArgs, cfg: FlipConfig, stage: Any, out: Path, process_gib: float,
             clock: PhaseClock) -> None:
    from flip_dist.distributed.worker import Runtime

    rt = Runtime(cfg, stage, args.data_dir, str(out / "run"))
    rt.build()
    env, dense = rt.env, rt.engine.module
    plm = getattr(dense, "plm", None)
    data, constant_lr = rt._positions(), (lambda step: 1.0)
    need = max(args.warmup, 1) + args.steps + args.trace_steps
    if stage.steps_per_epoch(rt.manifest.num_train, env.world) * stage.settings.epochs < need:
        raise FlipConfigError(f"profile: {need} steps need more rows than {args.data_dir} has for a global batch "
                              f"of {stage.settings.batch_size}; lower --steps/--warmup or the batch")

    def one_step() -> Any:
        batch = rt.next_batch(data, need)
        rt.optimize(batch, constant_lr)
        return batch

    for _ in range(args.warmup - 1):
        one_step()
    batch = rt.next_batch(data, need)             # the last warm-up step: its FLOPs counted
    flops = count_step_flops(lambda: rt.train_step(batch), plm)
    flops_shape = (len(batch) * _plm_passes(dense), int(batch.input_ids.shape[1]))    # the PLM's (rows, seq)
    if hasattr(rt.sparse, "after_backward"):
        rt.sparse.after_backward()
    rt.engine.step()
    # The timed steps (what the clock counted before them is dropped by the first take).
    rt.clock = clock
    hooks = watch_plm(plm, clock) if plm is not None else []
    steps, tokens, seq = [], 0, 0
    for _ in range(args.steps):
        clock.take()
        batch = one_step()
        clock.switch("other")
        steps.append(clock.take())
        tokens += int(batch.attention_mask.sum())
        seq = max(seq, int(batch.input_ids.shape[1]))
    for h in hooks:
        h.remove()
    rt.clock = PhaseClock.off()
    trace = _trace(one_step, args.trace_steps, out, env) if args.trace_steps else None
    precision = "bf16" if rt.dtype == torch.bfloat16 else "fp32"
    rows = stage.worker_batch(env.world)
    hidden = plm.config.hidden_size if plm is not None else 256
    peak = device_peak(env.device, precision, rows * max(_plm_passes(dense), 1) * max(seq, 1), hidden)
    estimate = _estimate(rt, process_gib, rows, seq, plm, _plm_passes(dense))
    mine = _summarise(steps, rows, tokens, flops.to_dict(), peak, estimate, env, trace)
    mine["flops_plm_shape"] = flops_shape
    mine["peak_memory_gib"] = memory.cuda_peak_gib(env.device) if env.device.type == "cuda" else _peak_rss_gib()
    everyone: list[Any] = [None] * env.world
    dist.all_gather_object(everyone, mine)
    if env.rank == 0:
        report = combine(everyone, cfg, args, precision)
        write_json_atomic(out / PROFILE_JSON, report)


def _trace(one_step: Any, n: int, out: Path, env: Any) -> str:
    """A few steps under torch.profiler, one Chrome trace per rank (opens in Perfetto)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(n):
            with torch.profiler.record_function("flip_step"):
                one_step()
    path = out / f"trace_rank{env.rank}.json.gz"
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.json.gz")
    prof.export_chrome_trace(str(tmp))
    os.replace(tmp, path)
    return str(path)


def _summarise(steps: list[dict[str, float]], rows: int, tokens: int, flops: dict[str, float], peak: Any,
               estimate: memory.MemoryEstimate, env: Any, trace: str | None) -> dict[str, Any]:
    """One rank's figures: mean seconds a step by phase (they add up to the step)."""
    phases = {p: statistics.fmean(s.get(p, 0.0) for s in steps) for p in PHASES}
    step_s = sum(phases.values())
    walls = [sum(s.values()) for s in steps]
    plm_s = phases["plm_fwd"] + phases["plm_bwd"]
    plm_tflops = flops["plm"] / plm_s / 1e12 if plm_s > 0 else 0.0
    dense_tflops = flops["total"] / step_s / 1e12
    return {"rank": env.rank, "device": str(env.device), "steps": len(steps), "rows_per_step": rows,
            "step_s": step_s, "step_s_median": statistics.median(walls), "step_s_min": min(walls),
            "samples_per_s": rows / step_s, "tokens_per_s": tokens / len(steps) / step_s,
            "phases": phases, "flops_per_step": flops, "plm_tflops": plm_tflops, "dense_tflops": dense_tflops,
            "peak_tflops": peak.tflops, "peak_source": peak.source,
            "mfu": dense_tflops / peak.tflops, "plm_of_peak": plm_tflops / peak.tflops,
            "memory_estimate_gib": estimate.to_dict(), "trace": trace}


def combine(workers: list[dict[str, Any]], cfg: FlipConfig, args: ProfileArgs, precision: str) -> dict[str, Any]:
    """The whole run: throughputs summed over workers, phases and MFU averaged, memory the worst."""
    from flip_dist.distributed.ds_config import load_ds_config, zero_stage

    n = len(workers)
    phases = {p: statistics.fmean(w["phases"][p] for w in workers) for p in PHASES}
    dc = cfg.dist
    zero = zero_stage(load_ds_config(dc.ds_config, micro_batch=1, world_size=n, grad_accum=dc.grad_accum,
                                     grad_clip=0.0, precision=dc.precision))
    worst = max(workers, key=lambda w: w["peak_memory_gib"])
    return {
        "stage": args.stage, "data": args.data_dir, "workers": n, "precision": precision, "zero_stage": zero,
        "plm": cfg.model.plm, "plm_layers": cfg.model.plm_layers, "id_model": cfg.model.id_model,
        "global_batch": sum(w["rows_per_step"] for w in workers) * dc.grad_accum, "grad_accum": dc.grad_accum,
        "micro_batch_rows": sum(w["rows_per_step"] for w in workers), "steps": args.steps, "warmup": args.warmup,
        "host": socket.gethostname(), "cpus": os.cpu_count(), "torch": torch.__version__, **args.extra,
        "step_s": sum(phases.values()),
        "samples_per_s": sum(w["samples_per_s"] for w in workers),
        "tokens_per_s": sum(w["tokens_per_s"] for w in workers),
        "plm_tflops": sum(w["plm_tflops"] for w in workers),
        "dense_tflops": sum(w["dense_tflops"] for w in workers),
        "mfu": statistics.fmean(w["mfu"] for w in workers),
        "plm_of_peak": statistics.fmean(w["plm_of_peak"] for w in workers),
        "peak_tflops_per_worker": workers[0]["peak_tflops"], "peak_source": workers[0]["peak_source"],
        "phases": phases,
        "peak_memory_gib": worst["peak_memory_gib"],
        "memory_estimate_gib": worst["memory_estimate_gib"],
        "memory_vs_estimate": worst["peak_memory_gib"] / worst["memory_estimate_gib"]["total"],
        "traces": [w["trace"] for w in workers if w["trace"]],
        "per_worker": workers,
    }


def profile_in_process(cfg: FlipConfig, args: ProfileArgs) -> dict[str, Any]:
    """One rank in this process, no Ray (the shards read directly: dist.data=exact)."""
    import json

    cfg = FlipConfig.from_dict({**cfg.to_dict(), "dist": {**cfg.to_dict()["dist"], "num_workers": 1,
                                                            "data": "exact"}})
    if not dist.is_initialized():
        # Kept for the process's life: DeepSpeed caches its groups, and a second profile in the
        # same process (a benchmark's fp32 then bf16) must find the same one.
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None      # DeepSpeed's clone of an earlier, destroyed world group
    elif dist.get_world_size() != 1:
        raise FlipConfigError("profile_in_process: this process is already one rank of a larger group")
    profile_loop(ProfileArgs(**{**args.to_dict(), "config": cfg.to_dict()}).to_dict())
    return json.loads((Path(args.out_dir) / PROFILE_JSON).read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
