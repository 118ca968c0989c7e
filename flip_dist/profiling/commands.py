"""`flip-dist profile`: where a training step's time and memory go, on the configured workers.

    flip-dist profile --config C --data D --out OUT [--stage pretrain] [--steps 10] [--set k=v]
    flip-dist profile --config C --data D --out OUT --sweep workers=1,2 --sweep precision=fp32,bf16

One run writes OUT/profile.json, OUT/profile.png, OUT/trace_rank<r>.json.gz (Perfetto) and prints
a table. A sweep profiles every combination of its axes into OUT/points/<n>/ (a failed point is
recorded and the others go on) and writes OUT/sweep.csv and OUT/sweep.png. An axis is a config key
or one of SWEEP_ALIASES; `data` takes dataset folders (another sequence length or table size is
another dataset: tools/profile_sweep.py writes them)."""
from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

from flip_dist.errors import FlipConfigError

log = logging.getLogger(__name__)
SWEEP_ALIASES = {"workers": "dist.num_workers", "zero": "dist.ds_config", "precision": "dist.precision",
                 "plm": "model.plm", "plm_layers": "model.plm_layers", "batch": "{stage}.batch_size"}


def profile(cfg: Any, stage: str, data_dir: str | Path, out: str | Path, *, steps: int = 10, warmup: int = 3,
            trace_steps: int = 2, in_process: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Profile `stage` on the config's workers (or in this process); writes and returns the report."""
    from flip_dist.data.shards import validate_dataset
    from flip_dist.distributed.trainer import fit_workers
    from flip_dist.io_atomic import write_json_atomic
    from flip_dist.profiling.report import plot_profile
    from flip_dist.profiling.run import PROFILE_JSON, ProfileArgs, profile_in_process, profile_loop

    if min(steps, warmup, trace_steps + 1) < 1:
        raise FlipConfigError(f"profile: --steps and --warmup must be >= 1, --trace-steps >= 0 (got {steps}, "
                              f"{warmup}, {trace_steps})")
    if steps % cfg.dist.grad_accum or warmup % cfg.dist.grad_accum:
        raise FlipConfigError(f"profile: --steps {steps} and --warmup {warmup} must be multiples of "
                              f"dist.grad_accum={cfg.dist.grad_accum}, so the timed steps are whole optimizer steps")
    data_dir, out = Path(data_dir).resolve(), Path(out).resolve()
    validate_dataset(data_dir, max_rows_per_shard=256, for_training=True)
    cfg = copy.deepcopy(cfg)
    cfg.dist.checkpoint_every, cfg.dist.max_failures = 0, 0          # a profile never checkpoints or retries
    args = ProfileArgs(cfg.to_dict(), stage, str(data_dir), str(out), warmup, steps, trace_steps, extra or {})
    (out / PROFILE_JSON).unlink(missing_ok=True)
    if in_process:
        report = profile_in_process(cfg, args)
    else:
        fit_workers(cfg, profile_loop, args.to_dict(), f"profile-{stage}-{time.strftime('%Y%m%d-%H%M%S')}")
        report = json.loads((out / PROFILE_JSON).read_text())
    report["png"] = str(plot_profile(report, out / "profile.png"))
    write_json_atomic(out / PROFILE_JSON, report)
    return report


def parse_axes(items: list[str], stage: str) -> dict[str, list[str]]:
    """['workers=1,2', 'data=A,B'] -> {'dist.num_workers': ['1', '2'], 'data': ['A', 'B']}."""
    axes: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = SWEEP_ALIASES.get(key.strip(), key.strip()).format(stage=stage)
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise FlipConfigError(f"--sweep {item!r}: expected KEY=V1,V2,... (KEY a config key, 'data', or one of "
                                  f"{sorted(SWEEP_ALIASES)})")
        if key in axes:
            raise FlipConfigError(f"--sweep: {key} is swept twice")
        axes[key] = vals
    return axes


def profile_point(point: dict[str, str], label: str, cfg: Any, stage: str, data_dir: str | Path, out: Path,
                  **kw: Any) -> dict[str, Any]:
    """One sweep point's CSV row; a failure (out of memory, a bad value) is recorded, not raised, so that
    the sweep goes on to its other points."""
    from flip_dist.profiling.report import sweep_row

    try:
        r = profile(cfg, stage, data_dir, out, extra={"point": point}, **kw)
    except Exception as e:
        log.warning("sweep point %s failed: %s", label, e)
        print(f"{label}: FAILED {type(e).__name__}: {e}", flush=True)
        return sweep_row(point, None, f"{type(e).__name__}: {e}")
    print(f"{label}: {r['samples_per_s']:.2f} samples/s, step {r['step_s']:.2f} s, MFU {100 * r['mfu']:.1f}%, "
          f"peak {r['peak_memory_gib']:.2f} GiB (estimate {r['memory_estimate_gib']['total']:.2f})", flush=True)
    return sweep_row(point, r, None)


def sweep(config: str | None, overrides: list[str], preset: str | None, stage: str, data_dir: str, out: str | Path,
          axes: dict[str, list[str]], **kw: Any) -> list[dict[str, Any]]:
    """Every combination of `axes`, one profile each; returns the CSV rows."""
    from flip_dist.config import load_config
    from flip_dist.profiling.report import plot_sweep, write_sweep_csv

    out = Path(out)
    names = list(axes)
    points = [dict(zip(names, combo)) for combo in itertools.product(*axes.values())]
    cfgs = [load_config(config, overrides + [f"{k}={v}" for k, v in point.items() if k != "data"], preset=preset)
            for point in points]          # every point's config is validated before the first one runs
    rows = []
    for i, (point, cfg) in enumerate(zip(points, cfgs)):
        label = f"[{i + 1}/{len(points)}] " + ", ".join(f"{k}={v}" for k, v in point.items())
        rows.append(profile_point(point, label, cfg, stage, point.get("data", data_dir), out / "points" / f"{i:02d}",
                                  **kw))
        write_sweep_csv(rows, out / "sweep.csv")
    short = {k: next((a for a, full in SWEEP_ALIASES.items() if full.format(stage=stage) == k), k) for k in names}
    plot_rows = [{**{short[k]: Path(v).name if k == "data" else v for k, v in row.items() if k in names},
                  **{k: v for k, v in row.items() if k not in names}} for row in rows]
    plot_sweep(plot_rows, [short[k] for k in names], out / "sweep.png")
    return rows


def cmd_profile(args: argparse.Namespace) -> int:
    from flip_dist.config import load_config
    from flip_dist.ray_runtime import ray_session

    overrides = list(args.set) + ([f"ray.address={json.dumps(args.ray_address)}"] if args.ray_address else [])
    kw = dict(steps=args.steps, warmup=args.warmup, trace_steps=args.trace_steps, in_process=args.in_process)
    cfg = load_config(args.config, overrides, preset=args.preset)
    with contextlib.nullcontext() if args.in_process else ray_session(cfg.ray):    # one Ray for every point
        return _profile_or_sweep(args, cfg, overrides, kw)


def _profile_or_sweep(args: argparse.Namespace, cfg: Any, overrides: list[str], kw: dict[str, Any]) -> int:
    from flip_dist.profiling.report import format_table

    if args.sweep:
        rows = sweep(args.config, overrides, args.preset, args.stage, args.data or cfg.preprocess.out_dir, args.out,
                     parse_axes(args.sweep, args.stage), **kw)
        failed = sum(1 for r in rows if r["error"])
        print(f"sweep: {len(rows)} points, {failed} failed -> {Path(args.out) / 'sweep.csv'}, "
              f"{Path(args.out) / 'sweep.png'}")
        return 1 if any(r["error"] for r in rows) else 0
    report = profile(cfg, args.stage, args.data or cfg.preprocess.out_dir, args.out, **kw)
    print(format_table(report))
    print(f"-> {Path(args.out) / 'profile.json'}, {report['png']}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `profile` on the `flip-dist` subcommands."""
    p = sub.add_parser("profile", help="time a training step phase by phase on the configured workers: samples/s, "
                                       "TFLOP/s, MFU, peak memory vs estimate, a torch.profiler trace; or a sweep")
    p.add_argument("--config", help="YAML experiment file")
    p.add_argument("--preset", metavar="NAME", help="a named preset of the config file")
    p.add_argument("--data", help="processed dataset folder (default: the config's preprocess.out_dir)")
    p.add_argument("--out", required=True, help="folder for profile.json, profile.png and the traces")
    p.add_argument("--stage", default="pretrain", choices=("pretrain", "finetune"))
    p.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--trace-steps", type=int, default=2, help="steps traced by torch.profiler (default 2; 0: none)")
    p.add_argument("--in-process", action="store_true", help="one worker in this process, no Ray")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help=f"profile every combination; KEY a config key, data (dataset folders) or one of "
                        f"{sorted(SWEEP_ALIASES)}")
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set dist.precision=bf16")
    p.set_defaults(func=cmd_profile)
