"""Single-process FLIP on CPU or one GPU: pretrain (Eq. 14) and finetune (Eq. 17-19) loops with
AdamW on the dense side, Adam on the tables, warmup + cosine decay, streaming evaluation.
The distributed runtime replaces the loops, not the step (flip_dist/train/steps.py)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from flip_dist.config import FlipConfig
from flip_dist.data.batches import ShardReader
from flip_dist.data.shards import read_manifest
from flip_dist.errors import FlipConfigError
from flip_dist.eval.metrics import CTRMetrics
from flip_dist.models.flip import FlipFinetuneDense, FlipPretrainDense, FlipSparse
from flip_dist.models.objectives import objectives
from flip_dist.models.id_models import build_id_model
from flip_dist.models.plm import load_plm
from flip_dist.models.sampling import AliasSampler
from flip_dist.text_assets import MINILM, ROBERTA_BPE
from flip_dist.models.embedding import TABLE_NAME
from flip_dist.models.flip import NCE_TABLE
from flip_dist.train.checkpoint import dataset_fingerprint, load_module, load_state_file, read_meta, save_state_dicts
from flip_dist.train.steps import TextIds, finetune_inputs, pretrain_inputs

log = logging.getLogger(__name__)


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warm = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def sparse_optimizer(name: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The tables' optimizer by name, for both runtimes: the single process steps it after
    backward, the distributed one hands it to TorchRec, which fuses it into the backward pass."""
    import torchrec.optim

    return {"rowwise_adagrad": (torchrec.optim.RowWiseAdagrad, {"eps": 1e-8}),
            "adagrad": (torch.optim.Adagrad, {"eps": 1e-8}),
            "sgd": (torch.optim.SGD, {}),
            "adam": (torch.optim.Adam, {})}[name]


def _optimizer(dense: nn.Module, sparse: nn.Module | None, cfg: Any, total_steps: int,
               adamw: bool, sparse_opt: str = "adam") -> tuple[list[torch.optim.Optimizer], list[Any]]:
    """Dense: AdamW (pretraining) / Adam (finetuning). Tables: Adam by default; `adagrad` or `sgd`
    match the fused optimizers of the distributed runtime (the equivalence test)."""
    dense_params = [p for p in dense.parameters() if p.requires_grad]
    # foreach: one kernel per op over all tensors, not a Python loop per tensor (3x faster on CPU).
    opt = (torch.optim.AdamW if adamw else torch.optim.Adam)(dense_params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                             foreach=True)
    opts = [opt]
    if sparse is not None:
        opt_cls, kwargs = sparse_optimizer(sparse_opt)
        opts.append(opt_cls(sparse.parameters(), lr=cfg.embed_lr, **kwargs))
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine(total_steps, cfg.warmup_ratio)) for o in opts]
    return opts, scheds


def _steps(n_rows: int, cfg: Any) -> int:
    per_epoch = n_rows // cfg.batch_size
    total = per_epoch * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def _check_text(manifest: dict, plm: str, tokenizer: str, vocab_size: int) -> None:
    """Token ids mean nothing to a PLM of another vocabulary: refuse to start rather than train on
    silently wrong tokens."""
    named = {MINILM, ROBERTA_BPE}
    data_tok = manifest.get("tokenizer_name")
    wrong_family = data_tok in named and tokenizer in named and data_tok != tokenizer
    if wrong_family or manifest["text_vocab_size"] > vocab_size:
        raise FlipConfigError(f"the dataset was tokenized with {data_tok} ({manifest['text_vocab_size']} tokens) "
                              f"but the PLM {plm} expects {tokenizer} ({vocab_size}): "
                              "preprocess with the PLM's tokenizer (--tokenizer)")


def check_text_matches(manifest: dict, model: Any) -> None:
    """The same check from the PLM's config alone (the driver, before workers load weights)."""
    from flip_dist.models.plm import text_spec

    _check_text(manifest, model.plm, *text_spec(model.plm, model.plm_path))


def build_encoders(cfg: FlipConfig, manifest: dict) -> tuple[nn.Module, nn.Module, Any]:
    """The PLM and the ID model for a processed dataset, after checking that its token ids are
    the PLM's (every runtime builds them here)."""
    plm, info = load_plm(cfg.model.plm, cfg.model.plm_path, trust_remote_code=cfg.model.trust_remote_code,
                         num_layers=cfg.model.plm_layers, dropout=cfg.model.plm_dropout)
    _check_text(manifest, info.name, info.tokenizer, info.vocab_size)
    id_model = build_id_model(cfg.model.id_model, manifest["num_fields"], cfg.model.embed_dim, **cfg.model.id_params)
    return plm, id_model, info


def _loop(batches: Iterable, total: int, step_fn: Callable[[Any], dict[str, torch.Tensor]],
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
        losses["total" if "total" in losses else "loss"].backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        seen += len(batch)
        row = {k: float(v) for k, v in losses.items() if v.dim() == 0}
        row["step"] = step
        row["samples_per_s"] = seen / (time.perf_counter() - t0)
        history.append(row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k not in ("step", "samples_per_s")})
        bar.update(1)
    bar.close()
    return history


def dense_heads_state(dense: nn.Module) -> dict[str, torch.Tensor]:
    """The dense module's own layers (heads, alpha), without the two encoders saved apart."""
    return {k: v for k, v in dense.state_dict().items() if not k.startswith(("plm.", "id_model."))}


def load_training_state(folder: str | Path, expect: str, plm: nn.Module, id_model: nn.Module,
                        load_table: Callable, dense: nn.Module | None) -> None:
    """Start from a checkpoint (single-process, or a distributed export: the same files): the
    encoders, the tables (through `load_table(name, full_weight)`, which may write into shards)
    and, given `dense` and when the checkpoint has them, its heads (continued pretraining;
    evaluating a finetuned model). `expect`: the stage that must have written it."""
    found = read_meta(folder).get("stage")
    if found != expect:
        raise FlipConfigError(f"{folder} is a {found!r} checkpoint, expected {expect!r}")
    load_module(folder, "plm", plm)
    load_module(folder, "id_model", id_model)
    for name, table in (("embedding", TABLE_NAME), ("nce", NCE_TABLE)):
        if (Path(folder) / f"{name}.pt").is_file():
            state = load_state_file(folder, f"{name}.pt")
            load_table(table, state[f"ebc.embedding_bags.{table}.weight"])
    if dense is not None and (Path(folder) / "heads.pt").is_file():
        load_module(folder, "heads", dense, strict=False)


def _table_loader(sparse: FlipSparse | None) -> Callable[[str, torch.Tensor], None]:
    """load_table for whole, unsharded tables (the distributed worker writes into its shards)."""
    def load(name: str, weight: torch.Tensor) -> None:
        for module in (sparse.embedding, sparse.nce) if sparse is not None else ():
            if module is not None and name in module.ebc.embedding_bags:
                with torch.no_grad():
                    module.ebc.embedding_bags[name].weight.copy_(weight)
    return load


def build_pretrain(cfg: FlipConfig, data_dir: str | Path
                   ) -> tuple[FlipSparse, FlipPretrainDense, AliasSampler | None, TextIds, ShardReader]:
    pc = cfg.pretrain
    obj = objectives(pc.objectives)
    torch.manual_seed(pc.seed)
    reader = ShardReader(data_dir, "train")
    m = reader.manifest
    plm, id_model, info = build_encoders(cfg, m)
    counts = np.load(Path(data_dir) / "feature_counts.npy")
    sparse = FlipSparse(m["num_features"], m["fields"], cfg.model.embed_dim, cfg.model.nce_dim if obj.mtm else None)
    if sparse.nce is not None:
        sparse.nce.init_bias(counts, cfg.model.nce_bias_init)
    sampler = AliasSampler(counts) if obj.mtm else None
    dense = FlipPretrainDense(plm, id_model, info.hidden_size, info.vocab_size, m["num_fields"], obj,
                              cfg.model.nce_dim, cfg.model.mtm_hidden, cfg.model.icl_dim, pc.tau, cfg.model.icl_norm)
    if pc.init:
        load_training_state(pc.init, "pretrain", plm, id_model, _table_loader(sparse), dense)
    return sparse, dense, sampler, TextIds(int(m["text_mask_id"]), info.vocab_size), reader


def save_pretrain(cfg: FlipConfig, folder: str | Path, sparse: FlipSparse, dense: FlipPretrainDense,
                  data_dir: str | Path, steps: int) -> Path:
    modules = {"embedding": sparse.embedding, "id_model": dense.id_model, "plm": dense.plm, "nce": sparse.nce}
    states = {k: m.state_dict() for k, m in modules.items() if m is not None}
    states["heads"] = dense_heads_state(dense)
    return save_state_dicts(folder, states, {"stage": "pretrain", "config": asdict(cfg), "data": str(data_dir),
                                             "dataset_fingerprint": dataset_fingerprint(read_manifest(data_dir)),
                                             "steps": steps, "runtime": "local"})


def pretrain_local(cfg: FlipConfig, data_dir: str | Path, sparse_opt: str = "adam") -> dict[str, Any]:
    """Pretrain on the train split of `data_dir`; save a checkpoint under cfg.pretrain.out_dir."""
    pc = cfg.pretrain
    sparse, dense, sampler, text, reader = build_pretrain(cfg, data_dir)
    total = _steps(len(reader), pc)
    opts, scheds = _optimizer(dense, sparse, pc, total, adamw=True, sparse_opt=sparse_opt)
    gen = torch.Generator().manual_seed(pc.seed)

    def step(batch):
        inputs = pretrain_inputs(batch, sparse, sampler, dense.obj, pc.r_text, pc.r_tab, pc.num_noise, text, gen)
        return dense(**inputs)

    batches = (b for e in range(pc.epochs) for b in reader.batches(pc.batch_size, shuffle=True, seed=pc.seed + e,
                                                                    drop_last=True))
    history = _loop(batches, total, step, list(dense.parameters()) + list(sparse.parameters()), opts, scheds,
                    pc.grad_clip, f"pretrain[{pc.objectives}]") if total else []
    ckpt = save_pretrain(cfg, pc.out_dir, sparse, dense, data_dir, len(history))
    return {"checkpoint": str(ckpt), "history": history}


def finetune_local(cfg: FlipConfig, data_dir: str | Path, sparse_opt: str = "adam") -> dict[str, Any]:
    """Finetune (cfg.finetune.mode) on train, evaluate AUC/logloss on test."""
    fc = cfg.finetune
    torch.manual_seed(fc.seed)
    reader = ShardReader(data_dir, "train")
    m = reader.manifest
    plm, id_model, info = build_encoders(cfg, m)
    sparse = FlipSparse(m["num_features"], m["fields"], cfg.model.embed_dim, None) if fc.mode != "flip_plm" else None
    if fc.init:
        load_training_state(fc.init, "pretrain", plm, id_model, _table_loader(sparse), None)
    torch.manual_seed(fc.seed)   # the new layers depend on the seed alone (the distributed worker does the same)
    dense = FlipFinetuneDense(fc.mode, id_model, plm, info.hidden_size)
    total = _steps(len(reader), fc)
    opts, scheds = _optimizer(dense, sparse, fc, total, adamw=False, sparse_opt=sparse_opt)

    def step(batch):
        return dense(**finetune_inputs(batch, sparse))

    batches = (b for e in range(fc.epochs) for b in reader.batches(fc.batch_size, shuffle=True, seed=fc.seed + e,
                                                                    drop_last=True))
    params = list(dense.parameters()) + (list(sparse.parameters()) if sparse is not None else [])
    history = _loop(batches, total, step, params, opts, scheds, fc.grad_clip, f"finetune[{fc.mode}]")
    metrics = evaluate(sparse, dense, ShardReader(data_dir, "test"), fc.eval_batch_size, fc.eval_rows)
    if dense.alpha is not None:
        metrics["alpha"] = float(dense.alpha)
    return {"metrics": metrics, "history": history}


@torch.no_grad()
def evaluate(sparse: FlipSparse | None, dense: FlipFinetuneDense, reader: ShardReader, batch_size: int,
             max_rows: int = 0) -> dict:
    dense.eval()
    metrics = CTRMetrics()
    for batch in reader.batches(batch_size, max_rows=max_rows):
        out = dense(**finetune_inputs(batch, sparse))
        metrics.update(out["logit"], batch.labels)
    dense.train()
    return metrics.compute()
