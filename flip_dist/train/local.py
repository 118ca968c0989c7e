"""Single-process FLIP on CPU or one GPU: the loop over a stage (flip_dist.train.stages) with whole
tables stepped by a plain optimizer after backward, the dense side by AdamW (pretraining) / Adam
(finetuning), warmup + cosine decay, and streaming evaluation. The distributed runtime runs the
same stages and steps; it replaces the loop, not the step."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from flip_dist.checkpoints import dataset_fingerprint, write_export
from flip_dist.checkpoints.exports import TABLE_FILES
from flip_dist.config import FlipConfig
from flip_dist.data.batches import ShardReader
from flip_dist.data.manifest import Manifest, read_manifest
from flip_dist.eval.metrics import CTRMetrics
from flip_dist.models.flip import FlipSparse
from flip_dist.train.optim import dense_optimizer, table_optimizer, warmup_cosine
from flip_dist.train.stages import Stage, StageModel, get_stage
from flip_dist.train.steps import finetune_inputs


class LocalTables:
    """Whole tables in this process; their optimizer is stepped after backward by the loop."""

    device = torch.device("cpu")

    def build(self, manifest: Manifest, embed_dim: int, nce_dim: int | None, settings: Any) -> nn.Module:
        return FlipSparse(manifest.num_features, manifest.fields, embed_dim, nce_dim)

    def init_nce_bias(self, sparse: nn.Module, counts: np.ndarray, mode: str) -> None:
        sparse.nce.init_bias(counts, mode)

    def load(self, sparse: nn.Module, table: str, weight: torch.Tensor) -> None:
        for module in (sparse.embedding, sparse.nce):
            if module is not None and table in module.ebc.embedding_bags:
                with torch.no_grad():
                    module.ebc.embedding_bags[table].weight.copy_(weight)

    def lookups(self, sparse: nn.Module) -> nn.Module:
        return sparse

    def export(self, sparse: nn.Module) -> dict[str, torch.Tensor]:
        return {name: module.ebc.embedding_bags[table].weight for name, table in TABLE_FILES.items()
                for module in (sparse.embedding, sparse.nce)
                if module is not None and table in module.ebc.embedding_bags}


def _optimizers(stage: Stage, model: StageModel, total_steps: int) -> tuple[list[torch.optim.Optimizer], list[Any]]:
    s = stage.settings
    opts = [dense_optimizer(model.dense.parameters(), stage.adamw, s.lr, s.weight_decay)]
    if model.sparse is not None:
        opt_cls, kwargs = table_optimizer(s.table_optimizer)
        opts.append(opt_cls(model.sparse.parameters(), lr=s.embed_lr, **kwargs))
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine(total_steps, s.warmup_ratio)) for o in opts]
    return opts, scheds


def _loop(batches: Iterable, total: int, step_fn: Callable[[Any], dict[str, torch.Tensor]], loss_key: str,
          params: list[nn.Parameter], opts: list, scheds: list, grad_clip: float, desc: str) -> list[dict]:
    history = []
    bar = tqdm(total=total, desc=desc, unit="step")
    t0, seen = time.perf_counter(), 0
    for step, batch in enumerate(batches):
        if step >= total:
            break
        losses = step_fn(batch)
        for o in opts:
            o.zero_grad(set_to_none=True)
        losses[loss_key].backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        seen += len(batch)
        row = {k: float(v.detach()) for k, v in losses.items() if v.dim() == 0}
        row["step"] = step
        row["samples_per_s"] = seen / (time.perf_counter() - t0)
        history.append(row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k not in ("step", "samples_per_s")})
        bar.update(1)
    bar.close()
    return history


def build_local(cfg: FlipConfig, stage_name: str, data_dir: str | Path) -> tuple[Stage, StageModel]:
    """A stage's modules in this process, started from its `init` if the config gives one."""
    stage = get_stage(stage_name, cfg)
    return stage, stage.build(read_manifest(data_dir), data_dir, LocalTables())


def train_local(cfg: FlipConfig, stage_name: str, data_dir: str | Path,
                reader: ShardReader | None = None) -> tuple[Stage, StageModel, list[dict]]:
    """Build a training stage and run it to its total steps on the train split of `data_dir` (or on
    `reader`'s rows of it: flip_dist.train.lr_search trains on the split less a validation slice)."""
    stage, model = build_local(cfg, stage_name, data_dir)
    s = stage.settings
    reader = reader if reader is not None else ShardReader(data_dir, "train")
    total = stage.total_steps(len(reader), 1)
    opts, scheds = _optimizers(stage, model, total)
    gen = torch.Generator().manual_seed(s.seed)

    def step(batch: Any) -> dict[str, torch.Tensor]:
        losses = stage.losses(model.dense(**stage.inputs(model, model.sparse, batch, gen)))
        return {**losses, **stage.extras(model)}

    batches = (b for e in range(s.epochs) for b in reader.batches(s.batch_size, shuffle=True, seed=s.seed + e,
                                                                   drop_last=True))
    # Clipping covers the dense side only, as in the distributed runtime, where the tables' optimizer
    # is fused into backward, outside DeepSpeed's clipping (one config, the same model in both).
    history = _loop(batches, total, step, stage.loss_key, list(model.dense.parameters()), opts, scheds,
                    s.grad_clip, stage.label)
    return stage, model, history


def export_local(cfg: FlipConfig, folder: str | Path, stage: Stage, model: StageModel, data_dir: str | Path,
                 steps: int) -> Path:
    """The export of a stage trained in this process (the format the distributed runtime writes)."""
    return write_export(folder, plm=model.encoders.plm, id_model=model.encoders.id_model, dense=model.dense,
                        tables=LocalTables().export(model.sparse) if model.sparse is not None else {},
                        meta={"stage": stage.name, "config": cfg.to_dict(), "data": str(data_dir),
                              "dataset_fingerprint": dataset_fingerprint(read_manifest(data_dir)),
                              "steps": steps, "runtime": "local"})


def pretrain_local(cfg: FlipConfig, data_dir: str | Path) -> dict[str, Any]:
    """Pretrain on the train split of `data_dir`; export to cfg.pretrain.out_dir."""
    stage, model, history = train_local(cfg, "pretrain", data_dir)
    ckpt = export_local(cfg, cfg.pretrain.out_dir, stage, model, data_dir, len(history))
    return {"checkpoint": str(ckpt), "history": history}


def finetune_local(cfg: FlipConfig, data_dir: str | Path) -> dict[str, Any]:
    """Finetune (cfg.finetune.mode) on train, evaluate AUC/logloss on test."""
    stage, model, history = train_local(cfg, "finetune", data_dir)
    fc = cfg.finetune
    metrics = evaluate(model.sparse, model.dense, ShardReader(data_dir, "test"), fc.eval_batch_size, fc.eval_rows)
    if model.dense.alpha is not None:
        metrics["alpha"] = float(model.dense.alpha)
    return {"metrics": metrics, "history": history}


@torch.no_grad()
def evaluate(sparse: FlipSparse | None, dense: nn.Module, reader: ShardReader, batch_size: int,
             max_rows: int = 0) -> dict:
    dense.eval()
    metrics = CTRMetrics()
    for batch in reader.batches(batch_size, max_rows=max_rows):
        out = dense(**finetune_inputs(batch, sparse))
        metrics.update(out["logit"], batch.labels)
    dense.train()
    return metrics.compute()
