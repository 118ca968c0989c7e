#!/usr/bin/env python
"""FLIP pretraining step time: our distributed runtime (flip_dist.distributed.worker.Runtime, run
in-process as one rank: TorchRec tables with their fused row-wise optimizer, DeepSpeed ZeRO-2
engine, one PLM call on masked + unmasked text stacked, MLM logits at masked positions only)
against the naive reference (flip_dist/profiling/naive.py: the official release's way: three
PLM passes, full-vocabulary MLM logits at every position, dense nn.Embedding tables under one
torch.optim.Adam with everything else, plain torch, one process), on the same batches and masks.

    .venv/bin/python tools/bench_naive.py [--datasets ml100k goodreads] [--warmup 2] [--rounds 3]
        [--steps 4] [--threads N] [--no-profile] [--out data/bench/bench_naive.json]

Data: data/processed/ml-100k (flip-dist data get ml-100k; flip-dist preprocess --config
ray_jobs/configs/ml100k.yaml) and a GoodReads-like set (15 fields, 4.5M features, prompts up to
128 tokens): python tools/gen_goodreads.py --shards --out data/processed/goodreads-bench
--rows 200000 --features 4500000 --max-length 128. Both sides use MiniLM (model.plm=minilm).

Targets (the issue): ours fp32 >= 7x the naive fp32 at GoodReads-like sizes (batch 16) and
>= 2.5x on ML-100K (batch 32); bf16 (ours: DeepSpeed bf16; naive: torch.autocast bf16) reported
beside. Figures are printed and written, never asserted.

Method: each side runs in its own subprocess (so peak RSS is each side's own): one naive process
(fp32 and autocast-bf16 modes, each with its own batch iterator and mask generator, so every mode
sees the same batches and masks as our run of that precision) and one process per precision for
ours. The parent drives them in rounds, one side at a time (the others wait idle), alternating
the order each round; each step is timed (forward, backward, optimizer; batch reads excluded).
Reported: median ms/step over all timed steps, samples/s from it, and the speed-up as the median
of per-round ratios of mean step times. The machine may be shared: compare ratios, not absolutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
try:
    import flip_dist  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

DATASETS: dict[str, dict[str, Any]] = {
    "ml100k": dict(config="ray_jobs/configs/ml100k.yaml", data="data/processed/ml-100k", batch=32, target=2.5,
                   overrides=[]),
    "goodreads": dict(config="ray_jobs/configs/goodreads.yaml", data="data/processed/goodreads-bench", batch=16,
                      target=7.0, overrides=["model.plm=minilm"]),
}
PREFIX = "@@BENCH "          # the worker's reply lines on stdout (libraries print there too)


# ---------------------------------------------------------------------------------------- workers
def _overrides(spec: dict[str, Any], precision: str, run_dir: str) -> list[str]:
    return [*spec["overrides"], "dist.num_workers=1", f"dist.precision={precision}", "dist.data=exact",
            "dist.checkpoint_every=0", f"pretrain.batch_size={spec['batch']}", f"pretrain.out_dir={run_dir}/out",
            f"dist.storage_path={run_dir}/ray"]


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class OursSide:
    """The runtime as one rank (gloo, world 1), in this process."""

    def __init__(self, spec: dict[str, Any], precision: str, extra: list[str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                          LOCAL_WORLD_SIZE="1")
        from flip_dist.config import load_config
        from flip_dist.distributed.worker import Runtime
        from flip_dist.train.stages import get_stage

        run_dir = tempfile.mkdtemp(prefix="bench-naive-ours-")
        cfg = load_config(ROOT / spec["config"], _overrides(spec, precision, run_dir) + extra)
        stage = get_stage("pretrain", cfg)
        self.rt = Runtime(cfg, stage, str(ROOT / spec["data"]), run_dir)
        self.rt.build()
        self.batches = self.rt._positions()

    def step(self, mode: str) -> dict[str, float]:
        rt = self.rt
        batch = next(self.batches)
        t0 = time.perf_counter()
        losses = rt.train_step(batch)
        if hasattr(rt.sparse, "after_backward"):
            rt.sparse.after_backward()
        rt.engine.step()
        dt = time.perf_counter() - t0
        rt.step += 1
        return {"seconds": dt, **{k: float(v.detach()) for k, v in losses.items() if v.dim() == 0}}


class NaiveSide:
    """The naive reference; fp32 and autocast-bf16 modes share the model, each has its own batch
    iterator and mask generator (the sequence our run of that precision sees)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        from flip_dist.config import load_config
        from flip_dist.data.batches import ShardReader
        from flip_dist.profiling.naive import build_naive

        cfg = load_config(ROOT / spec["config"], _overrides(spec, "fp32", tempfile.gettempdir()))
        self.cfg, self.spec = cfg, spec
        self.trainer = build_naive(cfg, ROOT / spec["data"])
        self.reader = ShardReader(ROOT / spec["data"], "train")
        seed = cfg.pretrain.seed
        self.iters = {m: self._batches() for m in ("fp32", "bf16")}
        self.gens = {m: torch.Generator().manual_seed(seed) for m in ("fp32", "bf16")}

    def _batches(self) -> Iterator[Any]:
        s = self.cfg.pretrain
        for epoch in range(s.epochs):       # the runtime's exact order (world 1)
            yield from self.reader.batches(s.batch_size, shuffle=True, seed=s.seed + epoch, drop_last=True)

    def step(self, mode: str, phases: dict[str, float] | None = None) -> dict[str, float]:
        tr = self.trainer
        tr.bf16, tr.gen = mode == "bf16", self.gens[mode]
        batch = next(self.iters[mode])
        t0 = time.perf_counter()
        losses = tr.step(batch, phases)
        return {"seconds": time.perf_counter() - t0, "seq_len": batch.input_ids.shape[1], **losses}

    def profile(self, mode: str, top: int = 12) -> dict[str, Any]:
        """One step under torch.profiler (its batch is the mode's next one): the top ops by self CPU
        time, and the step's phases from NaiveTrainer.step."""
        from torch.profiler import ProfilerActivity, profile

        phases: dict[str, float] = {}
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.step(mode, phases)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        ops = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
                "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:top]]
        return {"phases_s": {k: round(v, 3) for k, v in phases.items()}, "top_ops": ops}


def worker_main(side: str, spec: dict[str, Any], precision: str, threads: int, ours_set: list[str]) -> int:
    """Serve the parent: one JSON command a line on stdin, one PREFIX + JSON reply on stdout."""
    import logging

    import torch

    logging.basicConfig(level=logging.ERROR)
    if threads:
        torch.set_num_threads(threads)
    out = sys.stdout
    t0 = time.perf_counter()
    impl: Any = OursSide(spec, precision, ours_set) if side == "ours" else NaiveSide(spec)
    build_s = time.perf_counter() - t0
    extra: dict[str, Any] = {}
    if side == "naive":
        from flip_dist.profiling.naive import dense_table_bytes

        extra["dense_table_state_gib"] = round(dense_table_bytes(impl.trainer) / 2**30, 3)
    reply = {"ready": True, "build_s": round(build_s, 1), "rss_gib": round(_peak_rss_gib(), 3),
             "threads": torch.get_num_threads(), **extra}
    print(PREFIX + json.dumps(reply), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "steps":
            res = [impl.step(cmd["mode"]) for _ in range(cmd["n"])]
            reply = {"seconds": [r["seconds"] for r in res], "last": res[-1], "rss_gib": round(_peak_rss_gib(), 3)}
        elif cmd["cmd"] == "profile":
            reply = impl.profile(cmd["mode"])
        else:
            reply = {"error": f"unknown command {cmd['cmd']!r}"}
        print(PREFIX + json.dumps(reply), file=out, flush=True)
    return 0


# ---------------------------------------------------------------------------------------- parent
class Worker:
    def __init__(self, name: str, side: str, dataset: str, precision: str, threads: int, log_dir: Path,
                 ours_set: list[str]) -> None:
        self.name = name
        self.log_path = log_dir / f"{dataset}-{name}.log"
        self.log = open(self.log_path, "w", encoding="utf-8")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--worker-dataset", dataset,
               "--worker-precision", precision, "--threads", str(threads)]
        cmd += [arg for item in ours_set for arg in ("--ours-set", item)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1, cwd=str(ROOT))

    def reply(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])
            self.log.write(line)
        self.log.flush()
        tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"worker {self.name} exited (rc {self.proc.wait()}); log {self.log_path}:\n{tail}")

    def send(self, **cmd: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"torch": torch.__version__}
    for mod in ("deepspeed", "torchrec", "transformers", "fbgemm_gpu"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:   # not installed, or no __version__
            versions[mod] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), **versions}


# (name, side, precision of the process, mode of each step)
SIDES = [("naive_fp32", "naive", "fp32", "fp32"), ("ours_fp32", "ours", "fp32", "fp32"),
         ("naive_bf16", "naive", "fp32", "bf16"), ("ours_bf16", "ours", "bf16", "bf16")]


def bench_dataset(name: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    spec = DATASETS[name]
    sides = [s for s in SIDES if s[3] in args.precisions]
    procs: dict[tuple[str, str], Worker] = {}
    result: dict[str, Any] = {"batch_size": spec["batch"], "target_fp32": spec["target"], "data": spec["data"],
                              "config": spec["config"], "overrides": spec["overrides"], "sides": {}}
    try:
        for _, side, prec, _ in sides:     # start every process first (one naive process for both modes)
            if (side, prec) not in procs:
                procs[side, prec] = Worker(f"{side}-{prec}", side, name, prec, args.threads, log_dir,
                                           args.ours_set)
        ready = {k: w.reply() for k, w in procs.items()}
        print(f"[{name}] built: " + ", ".join(f"{k[0]}/{k[1]} {r['build_s']} s" for k, r in ready.items()),
              flush=True)
        times: dict[str, list[list[float]]] = {s[0]: [] for s in sides}
        last: dict[str, dict[str, Any]] = {}
        for _, side, prec, mode in sides:  # warm-up (untimed): the first steps allocate and tune
            if args.warmup:
                procs[side, prec].send(cmd="steps", mode=mode, n=args.warmup)
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for sname, side, prec, mode in order:
                rep = procs[side, prec].send(cmd="steps", mode=mode, n=args.steps)
                times[sname].append(rep["seconds"])
                last[sname] = rep
            print(f"[{name}] round {r + 1}/{args.rounds}: " + ", ".join(
                f"{s[0]} {1e3 * statistics.mean(times[s[0]][-1]):.0f} ms" for s in sides), flush=True)
        profile = None
        if args.profile and "fp32" in args.precisions:
            profile = procs["naive", "fp32"].send(cmd="profile", mode="fp32")
        for sname, side, prec, _mode in sides:
            flat = [t for rnd in times[sname] for t in rnd]
            med = statistics.median(flat)
            result["sides"][sname] = {
                "ms_per_step": round(1e3 * med, 1), "samples_per_s": round(spec["batch"] / med, 2),
                "round_mean_ms": [round(1e3 * statistics.mean(rnd), 1) for rnd in times[sname]],
                "step_ms": [round(1e3 * t, 1) for t in flat], "peak_rss_gib": last[sname]["rss_gib"],
                "build_s": ready[side, prec]["build_s"],
                "last_losses": {k: round(v, 4) for k, v in last[sname]["last"].items()
                                if k in ("mlm", "mtm", "icl", "total")}}
        if "naive_fp32" in result["sides"]:
            result["sides"]["naive_fp32"]["dense_table_state_gib"] = ready["naive", "fp32"].get("dense_table_state_gib")
            result["sides"]["naive_fp32"]["seq_len_last"] = last["naive_fp32"]["last"].get("seq_len")

        def ratio(num: str, den: str) -> float | None:
            if num not in times or den not in times:
                return None
            return round(statistics.median(statistics.mean(a) / statistics.mean(b)
                                           for a, b in zip(times[num], times[den])), 2)
        result["speedup"] = {"ours_fp32_vs_naive_fp32": ratio("naive_fp32", "ours_fp32"),
                             "ours_bf16_vs_naive_fp32": ratio("naive_fp32", "ours_bf16"),
                             "ours_bf16_vs_naive_bf16": ratio("naive_bf16", "ours_bf16"),
                             "naive_bf16_vs_naive_fp32": ratio("naive_fp32", "naive_bf16"),
                             "ours_bf16_vs_ours_fp32": ratio("ours_fp32", "ours_bf16")}
        s = result["speedup"]["ours_fp32_vs_naive_fp32"]
        result["meets_target"] = None if s is None else s >= spec["target"]
        result["naive_profile"] = profile
    finally:
        for w in procs.values():
            w.close()
    return result


def print_table(results: dict[str, Any], machine: dict[str, Any]) -> None:
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
          f"({machine['torch_threads']} threads), deepspeed {machine['deepspeed']}, torchrec {machine['torchrec']}")
    print(f"load average at start {machine.get('loadavg_start')}, at end {machine.get('loadavg_end')}")
    head = f"{'dataset':<10} {'side':<11} {'ms/step':>9} {'samples/s':>10} {'vs naive fp32':>14} " \
           f"{'vs naive same prec':>19} {'peak RSS GiB':>13}"
    print(head)
    print("-" * len(head))
    for ds, res in results.items():
        sides = res["sides"]
        base = sides.get("naive_fp32")
        for sname, row in sides.items():
            same = sides.get("naive_" + sname.split("_")[1])
            vs = base["ms_per_step"] / row["ms_per_step"] if base else float("nan")
            vs_same = same["ms_per_step"] / row["ms_per_step"] if same else float("nan")
            print(f"{ds:<10} {sname:<11} {row['ms_per_step']:>9.1f} {row['samples_per_s']:>10.2f} "
                  f"{vs:>13.2f}x {vs_same:>18.2f}x {row['peak_rss_gib']:>13.2f}")
        sp = res["speedup"]["ours_fp32_vs_naive_fp32"]
        print(f"{ds:<10} speed-up ours/naive fp32 (median of per-round ratios): {sp}x, target >= "
              f"{res['target_fp32']}x: {'met' if res['meets_target'] else 'NOT met'}; bf16: ours/naive-fp32 "
              f"{res['speedup']['ours_bf16_vs_naive_fp32']}x, ours/naive-autocast "
              f"{res['speedup']['ours_bf16_vs_naive_bf16']}x")
        prof = res.get("naive_profile")
        if prof:
            print(f"{ds:<10} naive fp32 step phases (s): {prof['phases_s']}")
            print(f"{ds:<10} naive fp32 top ops by self CPU: " + "; ".join(
                f"{o['op']} {100 * o['share']:.0f}%" for o in prof["top_ops"][:8]))
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the one profiled naive fp32 step (op breakdown)")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "bench" / "bench_naive.json")
    ap.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for our side only, e.g. model.plm_length_groups=1")
    ap.add_argument("--worker", choices=["naive", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-dataset", choices=list(DATASETS), help=argparse.SUPPRESS)
    ap.add_argument("--worker-precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, DATASETS[args.worker_dataset], args.worker_precision, args.threads,
                           args.ours_set)
    for ds in args.datasets:
        if not (ROOT / DATASETS[ds]["data"] / "manifest.json").is_file():
            ap.error(f"{ds}: no dataset at {DATASETS[ds]['data']} (see this script's docstring)")
    machine = machine_info()
    machine["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-naive-logs-"))
    print(f"worker logs: {log_dir}", flush=True)
    t0 = time.perf_counter()
    results = {ds: bench_dataset(ds, args, log_dir) for ds in args.datasets}
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table(results, machine)
    report = {"machine": machine, "settings": {k: getattr(args, k) for k in ("warmup", "rounds", "steps", "threads",
                                                                             "precisions", "ours_set")},
              "wall_s": round(time.perf_counter() - t0, 1), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
