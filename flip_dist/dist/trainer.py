"""The driver side of a distributed stage: a Ray Train TorchTrainer over flip_dist.dist.worker,
with the train split streamed to the workers by Ray Data. Jobs (ray_jobs/) and the CLI call these."""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from flip_dist.config import FlipConfig
from flip_dist.data.batches import ShardReader
from flip_dist.data.shards import read_manifest, shard_files
from flip_dist.dist.metrics_log import read_metrics
from flip_dist.dist.worker import CKPT_MANIFEST, check_checkpoint, worker_loop
from flip_dist.errors import FlipConfigError
from flip_dist.io_atomic import write_json_atomic
from flip_dist.ray_runtime import ray_session

log = logging.getLogger(__name__)

# What every worker process needs in its environment: DeepSpeed on the right accelerator, no
# tokenizer threads fighting over a worker's CPUs, op builds cached in the project.
def _worker_env(cfg: FlipConfig) -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    env = {"TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": "disabled",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(root / ".cache" / "torch_extensions"))}
    if not cfg.dist.use_gpu:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(max(1, int(cfg.dist.cpus_per_worker))))
    return env


def latest_checkpoint(storage: Path, stage: str) -> Path:
    """The newest complete checkpoint of `stage` under the Ray Train storage folder."""
    found = []
    for manifest in storage.glob(f"*/checkpoint_*/{CKPT_MANIFEST}"):
        meta = json.loads(manifest.read_text())
        if meta.get("stage") == stage:
            try:
                check_checkpoint(manifest.parent)
            except Exception as e:     # a checkpoint some rank never finished: skip it, say so
                log.warning("skipping %s: %s", manifest.parent, e)
                continue
            found.append((manifest.stat().st_mtime, meta["step"], manifest.parent))
    if not found:
        raise FlipConfigError(f"dist.resume=latest: no complete {stage} checkpoint under {storage}")
    return max(found)[2]


def preflight(cfg: FlipConfig, stage: str, data_dir: Path) -> None:
    """What can be checked before any worker starts (a worker's error arrives wrapped in Ray
    Train's, after tens of seconds): the dataset, the DeepSpeed preset, the checkpoint to start from."""
    from flip_dist.dist.ds_config import load_ds_config
    from flip_dist.dist.worker import STAGES
    from flip_dist.train.checkpoint import read_meta

    if stage not in STAGES:
        raise FlipConfigError(f"stage {stage!r}: one of {STAGES}")
    manifest = read_manifest(data_dir)       # names the folder if it is not a processed dataset
    tc = cfg.pretrain if stage == "pretrain" else cfg.finetune
    load_ds_config(cfg.dist.ds_config, micro_batch=tc.batch_size, world_size=cfg.dist.num_workers,
                   grad_accum=cfg.dist.grad_accum, grad_clip=tc.grad_clip, precision=cfg.dist.precision)
    if stage != "evaluate" and manifest["num_train"] // cfg.dist.num_workers < tc.batch_size:
        raise FlipConfigError(f"{stage}.batch_size={tc.batch_size} on {cfg.dist.num_workers} workers needs more than "
                              f"the {manifest['num_train']} train rows of {data_dir}")
    if stage == "evaluate" and not tc.init:
        raise FlipConfigError("evaluate needs finetune.init: a finetuning export folder")
    if tc.init:
        expected = {"pretrain": "pretrain", "finetune": "pretrain", "evaluate": "finetune"}[stage]
        found = read_meta(tc.init).get("stage")
        if found != expected:
            raise FlipConfigError(f"{stage}.init {tc.init} is a {found!r} checkpoint, expected {expected!r}")


def run_stage(cfg: FlipConfig, stage: str, data_dir: str | Path) -> dict[str, Any]:
    """Run one stage on `cfg.dist.num_workers` Ray Train workers; returns the final metrics and
    where the checkpoint and export are. Needs no Ray session: starts or joins one."""
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    data_dir = Path(data_dir).resolve()
    preflight(cfg, stage, data_dir)
    tc = cfg.pretrain if stage == "pretrain" else cfg.finetune
    run_dir = Path(tc.out_dir).resolve()
    storage = Path(cfg.dist.storage_path).resolve()
    resume = cfg.dist.resume
    if resume == "latest":
        resume = str(latest_checkpoint(storage, stage))
    elif resume:
        resume = str(Path(resume).resolve())
    if resume:
        written_by = check_checkpoint(Path(resume))["world_size"]
        if written_by != cfg.dist.num_workers:   # the workers say the same; failing here costs no start-up
            raise FlipConfigError(f"checkpoint {resume} was written by {written_by} workers, this run has "
                                  f"{cfg.dist.num_workers}: DeepSpeed ZeRO's optimizer partitions do not re-shard. "
                                  f"Resume with dist.num_workers={written_by}, or start a new run from an export.")
    run_name, started = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}", time.time()
    dc = cfg.dist
    with ray_session(cfg.ray):
        import ray
        import ray.data

        datasets = {}
        if dc.data == "ray" and stage != "evaluate":
            # Block order reshuffled each epoch (the dataset re-executes), rows within a worker's
            # local shuffle buffer (dist.shuffle_buffer_rows).
            datasets["train"] = ray.data.read_parquet(shard_files(data_dir, "train"),
                                                      columns=ShardReader.COLUMNS).randomize_block_order()
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"config": cfg.to_dict(), "stage": stage, "data_dir": str(data_dir),
                               "run_dir": str(run_dir), "resume": resume},
            scaling_config=ScalingConfig(num_workers=dc.num_workers, use_gpu=dc.use_gpu,
                                         resources_per_worker={"CPU": dc.cpus_per_worker,
                                                               **({"GPU": 1} if dc.use_gpu else {})}),
            run_config=RunConfig(name=run_name, storage_path=str(storage),
                                 checkpoint_config=CheckpointConfig(num_to_keep=dc.keep_checkpoints),
                                 worker_runtime_env={"env_vars": _worker_env(cfg)}),
            datasets=datasets or None,
            dataset_config=DataConfig(datasets_to_split=["train"]) if datasets else None,
        )
        result = trainer.fit()
        del ray
    export = run_dir / "export"
    export_meta = export / "meta.json"
    logged = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    evaluation = next((r for r in reversed(logged) if r["stage"] == "evaluate"), None)
    summary = {"stage": stage, "metrics": result.metrics, "evaluation": evaluation, "run": str(storage / run_name),
               "checkpoint": result.checkpoint.path if result.checkpoint else None,
               "export": str(export) if stage != "evaluate" and export_meta.is_file()
               and export_meta.stat().st_mtime >= started else None,        # this run's, not an older one
               "metrics_log": str(run_dir / "metrics.jsonl")}
    write_json_atomic(run_dir / f"{stage}_result.json", summary)
    return summary


def run_pipeline(cfg: FlipConfig) -> dict[str, Any]:
    """preprocess -> pretrain -> finetune (evaluates at the end) -> evaluate the export."""
    from flip_dist.data.preprocess import preprocess

    out: dict[str, Any] = {}
    data_dir = cfg.preprocess.out_dir
    with ray_session(cfg.ray):
        if not (Path(data_dir) / "manifest.json").is_file() or cfg.preprocess.overwrite:
            out["preprocess"] = {k: v for k, v in preprocess(cfg.preprocess).items()
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
