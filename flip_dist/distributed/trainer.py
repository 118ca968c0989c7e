"""The driver side of a distributed stage: a Ray Train TorchTrainer over flip_dist.distributed.worker
(each worker streams its share of the train split with Ray Data: flip_dist.data.stream), restarted
from its last checkpoint when a worker dies. Jobs (ray_jobs/) and the CLI call these."""
from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flip_dist.checkpoints import resolve_resume, run_identity
from flip_dist.config import FlipConfig
from flip_dist.data.shards import validate_dataset
from flip_dist.distributed.metrics_log import read_metrics
from flip_dist.distributed.worker import WorkerArgs, worker_loop
from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.eval.curves import plot_training_curves
from flip_dist.io_atomic import write_json_atomic
from flip_dist.ray_runtime import ray_session
from flip_dist.train.stages import Stage, get_stage

log = logging.getLogger(__name__)
PREFLIGHT_ROWS = 256      # rows per shard whose contents preflight checks (row counts: all of them)

def _worker_env(cfg: FlipConfig) -> dict[str, str]:
    """What every worker process needs in its environment: DeepSpeed on the right accelerator, no
    tokenizer threads fighting over a worker's CPUs, the driver's op-build cache if it names one.
    Ray's auth mode and token are inherited from the cluster, never set here."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    if not cfg.dist.use_gpu:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(max(1, int(cfg.dist.cpus_per_worker))))
    return env


def preflight(cfg: FlipConfig, stage: Stage, data_dir: Path) -> str | None:
    """What can be checked before any worker starts (a worker's error arrives wrapped in Ray
    Train's, after tens of seconds, and a deterministic one would be retried): the dataset against
    its manifest, the DeepSpeed preset, the PLM's tokenizer, the stage's own checks (batch against
    rows, its init), the checkpoint to resume. Returns the verified checkpoint to resume, if any."""
    from flip_dist.distributed.ds_config import load_ds_config
    from flip_dist.train.encoders import check_text_matches

    manifest = validate_dataset(data_dir, max_rows_per_shard=PREFLIGHT_ROWS, for_training=True)
    s, dc = stage.settings, cfg.dist
    load_ds_config(dc.ds_config, micro_batch=stage.worker_batch(dc.num_workers), world_size=dc.num_workers,
                   grad_accum=dc.grad_accum, grad_clip=s.grad_clip, precision=dc.precision)
    check_text_matches(manifest, cfg.model)
    stage.preflight(manifest, dc.num_workers)
    return resolve_resume(dc.resume, dc.storage_path, stage.name, dc.num_workers,
                          run_identity(cfg.to_dict(), stage.section, manifest))


def check_placeable(cfg: FlipConfig) -> None:
    """Fail now, not after waiting forever, when the cluster cannot place the workers at all."""
    import ray

    dc, have = cfg.dist, ray.cluster_resources()
    need = {"CPU": dc.num_workers * dc.cpus_per_worker, "GPU": dc.num_workers if dc.use_gpu else 0}
    short = {k: (have.get(k, 0), v) for k, v in need.items() if have.get(k, 0) < v}
    if short:
        raise FlipConfigError("the cluster cannot place this run's workers: " + ", ".join(
            f"{k} has {h:g}, needs {n:g}" for k, (h, n) in short.items()) + " (dist.num_workers x "
            "dist.cpus_per_worker, one GPU a worker with dist.use_gpu; start the nodes first)")


def _flip_error(error: BaseException) -> BaseException | None:
    """The FlipDataError / FlipConfigError a worker raised, out of Ray Train's wrapping."""
    seen: set[int] = set()
    todo: list[Any] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (FlipDataError, FlipConfigError)):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__,
                 *getattr(e, "worker_failures", {}).values()]
    return None


def fit_workers(cfg: FlipConfig, loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any],
                run_name: str) -> Any:
    """`loop(loop_config)` on `cfg.dist.num_workers` Ray Train workers (torch.distributed set up,
    bound to the node's address); returns Ray Train's result. A worker's FlipDataError or
    FlipConfigError comes out as itself, not wrapped."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from flip_dist.distributed.rendezvous import NodeBoundTorchConfig

    dc = cfg.dist
    with ray_session(cfg.ray):
        check_placeable(cfg)
        trainer = TorchTrainer(
            loop, torch_config=NodeBoundTorchConfig(), train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=dc.num_workers, use_gpu=dc.use_gpu,
                                         resources_per_worker={"CPU": dc.cpus_per_worker,
                                                               **({"GPU": 1} if dc.use_gpu else {})}),
            run_config=RunConfig(name=run_name, storage_path=str(Path(dc.storage_path).resolve()),
                                 checkpoint_config=CheckpointConfig(num_to_keep=dc.keep_checkpoints),
                                 failure_config=FailureConfig(max_failures=dc.max_failures),
                                 worker_runtime_env={"env_vars": _worker_env(cfg)}),
        )
        try:
            return trainer.fit()
        except Exception as e:
            cause = _flip_error(e)
            if cause is None:
                raise
            raise type(cause)(str(cause)) from e


def run_stage(cfg: FlipConfig, stage_name: str, data_dir: str | Path) -> dict[str, Any]:
    """Run one stage on `cfg.dist.num_workers` Ray Train workers; returns the final metrics and
    where the checkpoint and export are. Needs no Ray session: starts or joins one. A worker group
    that loses a worker is restarted from the last checkpoint, up to dist.max_failures times."""
    stage = get_stage(stage_name, cfg)
    data_dir = Path(data_dir).resolve()
    resume = preflight(cfg, stage, data_dir)
    run_dir = Path(stage.settings.out_dir).resolve()
    run_name, started = f"{stage.name}-{time.strftime('%Y%m%d-%H%M%S')}", time.time()
    dc = cfg.dist
    result = fit_workers(cfg, worker_loop, WorkerArgs(cfg.to_dict(), stage.name, str(data_dir), str(run_dir),
                                                      resume).to_dict(), run_name)
    storage = Path(dc.storage_path).resolve()
    export = run_dir / "export"
    export_meta = export / "meta.json"
    logged = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    evaluation = next((r for r in reversed(logged) if r["stage"] == "evaluate"), None)
    curves = plot_training_curves([r for r in logged if r["stage"] == stage.name], run_dir / f"{stage.name}_curves.png",
                                  f"{stage.label} on {dc.num_workers} workers, {data_dir.name}",
                                  global_batch=stage.settings.batch_size,
                                  num_noise=getattr(stage.settings, "num_noise", None)) if stage.trains else None
    summary = {"stage": stage.name, "metrics": result.metrics, "evaluation": evaluation,
               "curves": str(curves) if curves else None,
               "run": str(storage / run_name), "checkpoint": result.checkpoint.path if result.checkpoint else None,
               "export": str(export) if stage.trains and export_meta.is_file()
               and export_meta.stat().st_mtime >= started else None,        # this run's, not an older one
               "metrics_log": str(run_dir / "metrics.jsonl")}
    if stage.trains and summary["export"] is None and not dc.stop_after:
        raise FlipDataError(f"{stage.name} ended without writing its export; see {summary['run']}", path=str(export))
    write_json_atomic(run_dir / f"{stage.name}_result.json", summary)
    return summary


def run_pipeline(cfg: FlipConfig) -> dict[str, Any]:
    """preprocess -> pretrain -> finetune (evaluates at the end) -> evaluate the export."""
    from flip_dist.data.preprocess import preprocess
    from flip_dist.train.encoders import preprocess_config

    out: dict[str, Any] = {}
    data_dir = cfg.preprocess.out_dir
    with ray_session(cfg.ray):
        if not (Path(data_dir) / "manifest.json").is_file() or cfg.preprocess.overwrite:
            out["preprocess"] = {k: v for k, v in preprocess(preprocess_config(cfg)).items()
                                 if k in ("num_samples", "num_train", "num_test", "num_features", "timings")}
        pre = run_stage(cfg, "pretrain", data_dir)
        out["pretrain"] = pre
        if pre["export"] is None:
            raise FlipConfigError("pretraining stopped before its last step (dist.stop_after), so there is no "
                                  f"export to finetune from; resume it with dist.resume=latest ({pre['checkpoint']})")
        ft_cfg = copy.deepcopy(cfg)
        ft_cfg.finetune.init = pre["export"]
        ft_cfg.dist.resume = None
        ft = run_stage(ft_cfg, "finetune", data_dir)
        out["finetune"] = ft
        ev_cfg = copy.deepcopy(ft_cfg)
        ev_cfg.finetune.init = ft["export"]
        out["evaluate"] = run_stage(ev_cfg, "evaluate", data_dir)
    write_json_atomic(Path(cfg.finetune.out_dir) / "pipeline_result.json", out)
    return out
