"""The naive reference FLIP pretraining step: what the runtime's speed-ups are measured against
(tools/bench_naive.py).

Built the way the paper's official release (github.com/justarter/FLIP) builds a step, in plain
torch, one process, fp32 (bf16 only under torch.autocast, when asked):

  * three separate PLM passes: the masked text (MLM), the unmasked text (ICL's [CLS]), and the
    unmasked text again (MTM's joint reconstruction); the ID model twice (x for v, x^ for v^);
  * MLM logits over the whole vocabulary at every position, (B, L, V), cross-entropy with
    ignore_index on the unmasked positions (ours: the masked positions only, through the tied
    decoder);
  * the feature table and the NCE output table as dense `nn.Embedding`s, trained by one
    `torch.optim.Adam` together with everything else: dense gradients and Adam moments over all
    their rows (4.5M at GoodReads scale) every step (ours: TorchRec tables, a fused row-wise
    optimizer touching the looked-up rows only);
  * gradient clipping over every parameter, the tables included.

The objectives are ours exactly (MLM Eq. 5-6, MTM with NCE Eq. 7-10, ICL Eq. 11-13, summed as
Eq. 14), from our heads (flip_dist/models/heads.py), ID models and PLM loader, with the same
masking and noise draws (flip_dist/train/steps.py `pretrain_inputs`, which looks rows up in
`DenseTables` here through the same `embed` / `nce` calls it makes on the TorchRec tables): given
the same batch, generator state and weights, its losses equal the runtime's up to float rounding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flip_dist.config import FlipConfig
from flip_dist.data.batches import Batch
from flip_dist.data.manifest import read_manifest
from flip_dist.models.flip import NCE_INIT_STD, NCE_TABLE, nce_bias
from flip_dist.models.heads import ICLHead, MLMHead, MTMHead
from flip_dist.models.masking import IGNORE
from flip_dist.models.objectives import Objectives, objectives
from flip_dist.models.sampling import AliasSampler
from flip_dist.train.steps import TextIds, pretrain_inputs

FEATURE_INIT_STD = 1e-4          # as FeatureEmbedding's (and the authors' code)


class DenseTables(nn.Module):
    """The feature table E and the NCE output table as plain dense `nn.Embedding`s (sparse=False:
    their gradient is a dense (M, D) tensor). `embed` / `nce` have FlipSparse's signatures, so
    `pretrain_inputs` looks rows up here as it does in the TorchRec tables."""

    def __init__(self, num_features: int, embed_dim: int, nce_dim: int | None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_features, embed_dim)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=FEATURE_INIT_STD)
        self.nce_table = nn.Embedding(num_features, nce_dim) if nce_dim else None
        if self.nce_table is not None:
            nn.init.normal_(self.nce_table.weight, mean=0.0, std=NCE_INIT_STD)

    def embed(self, feature_ids: torch.Tensor) -> torch.Tensor:
        """(B, F) ids -> E (B, F, D)."""
        return self.embedding(feature_ids)

    def nce(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, C) ids -> rows [o_j, b_j] (N, C, nce_dim)."""
        return self.nce_table(ids)

    @torch.no_grad()
    def init_bias(self, counts: np.ndarray, mode: str = "log_q") -> None:
        self.nce_table.weight[:, -1] = torch.as_tensor(nce_bias(counts, mode), dtype=self.nce_table.weight.dtype)


class NaiveFlip(nn.Module):
    """Tables + PLM + ID model + the three heads, run the naive way (see the module doc)."""

    def __init__(self, tables: DenseTables, plm: nn.Module, id_model: nn.Module, d_text: int, text_vocab: int,
                 num_fields: int, obj: Objectives, nce_dim: int = 32, mtm_hidden: int = 256, icl_dim: int = 128,
                 tau: float = 0.7, icl_norm: str = "layernorm", mlm_tied: bool = True) -> None:
        super().__init__()
        self.tables, self.plm, self.id_model, self.obj = tables, plm, id_model, obj
        d_tab = id_model.out_dim
        words = plm.get_input_embeddings().weight if mlm_tied and hasattr(plm, "get_input_embeddings") else None
        # the same heads (and parameter names) as FlipPretrainDense, so its state dict loads here
        self.mlm = MLMHead(d_text, d_tab, text_vocab, joint=obj.joint, tied=words) if obj.mlm else None
        self.mtm = MTMHead(d_tab, d_text, num_fields, nce_dim, mtm_hidden, joint=obj.joint) if obj.mtm else None
        self.icl = ICLHead(d_text, d_tab, icl_dim, tau, icl_norm) if obj.icl else None

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.plm(input_ids=ids, attention_mask=mask).last_hidden_state

    def mlm_loss(self, w_hat: torch.Tensor, v: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 5-6 with logits over the whole vocabulary at every position (B, L, V); the loss of
        MLMHead exactly (per-instance mean over its masked tokens, then over the instances)."""
        B, L, _ = w_hat.shape
        h = w_hat
        if self.mlm.joint:
            h = torch.cat([h, v[:, None, :].expand(B, L, v.shape[-1])], dim=-1)       # [w^_il (+) v_i]
        logits = self.mlm.decoder(self.mlm.transform(h))                               # (B, L, V)
        ce = F.cross_entropy(logits.float().view(B * L, -1), labels.reshape(-1), ignore_index=IGNORE,
                             reduction="none").view(B, L)
        n = (labels != IGNORE).sum(1)
        has = n > 0
        if not bool(has.any()):
            return logits.sum() * 0.0
        return (ce.sum(1)[has] / n[has]).mean()

    def forward(self, emb: torch.Tensor, emb_masked: torch.Tensor, input_ids: torch.Tensor,
                masked_input_ids: torch.Tensor, attention_mask: torch.Tensor, mlm_labels: torch.Tensor,
                tab_masked: torch.Tensor, nce_rows: torch.Tensor | None, log_kq: torch.Tensor | None
                ) -> dict[str, torch.Tensor]:
        """The same keyword arguments as FlipPretrainDense (pretrain_inputs' output)."""
        o = self.obj
        B = input_ids.shape[0]
        need_v = o.icl or (o.mlm and o.joint)
        v = self.id_model(emb)[0] if need_v else None                    # Eq. 4, ID model on x
        v_hat = self.id_model(emb_masked)[0] if o.mtm else None          # ... and again on x^
        losses: dict[str, torch.Tensor] = {}
        if self.mlm is not None:                                          # PLM pass 1: masked text
            w_hat = self.encode_text(masked_input_ids, attention_mask)
            losses["mlm"] = self.mlm_loss(w_hat, v, mlm_labels)
        if self.mtm is not None:                                          # PLM pass 2: unmasked text
            w_mtm = self.encode_text(input_ids, attention_mask) if o.joint else None
            rows, _, h = self.mtm.queries(v_hat, w_mtm, attention_mask, tab_masked)
            losses["mtm"] = self.mtm.nce_loss(h, nce_rows, log_kq, rows, B)
        if self.icl is not None:                                          # PLM pass 3: unmasked text again
            w_icl = self.encode_text(input_ids, attention_mask)
            losses["icl"] = self.icl(w_icl[:, 0], v)
        losses["total"] = sum(losses.values()) if losses else emb.sum() * 0.0
        return losses


@dataclass
class NaiveTrainer:
    """One process, one torch.optim.Adam over every parameter (tables included), fp32; bf16 only
    as torch.autocast around the forward when `bf16`."""

    model: NaiveFlip
    sampler: AliasSampler | None
    text: TextIds
    obj: Objectives
    r_text: float
    r_tab: float
    num_noise: int
    lr: float
    grad_clip: float
    seed: int = 0
    bf16: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.gen = torch.Generator(device=self.device).manual_seed(self.seed)

    def inputs(self, batch: Batch) -> dict[str, Any]:
        return pretrain_inputs(batch.to(self.device), self.model.tables, self.sampler, self.obj, self.r_text,
                               self.r_tab, self.num_noise, self.text, self.gen)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(**self.inputs(batch))

    def step(self, batch: Batch, phases: dict[str, float] | None = None) -> dict[str, float]:
        """Forward, backward, clip, Adam: one training step; returns the losses as floats.
        `phases`, if given, receives each phase's seconds (inputs = masking and table lookups)."""
        clock = _Clock(phases)
        self.optimizer.zero_grad(set_to_none=True)
        clock("zero_grad")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            inputs = self.inputs(batch)
            clock("inputs")
            losses = self.model(**inputs)
        clock("forward")
        losses["total"].backward()
        clock("backward")
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        clock("clip")
        self.optimizer.step()
        clock("adam")
        return {k: float(v.detach()) for k, v in losses.items()}


class _Clock:
    """Adds the seconds since its last call to `phases[name]` (a no-op without `phases`)."""

    def __init__(self, phases: dict[str, float] | None) -> None:
        self.phases, self.t = phases, time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.phases is not None:
            now = time.perf_counter()
            self.phases[name] = self.phases.get(name, 0.0) + now - self.t
            self.t = now


def build_naive(cfg: FlipConfig, data_dir: str | Path, bf16: bool = False,
                device: torch.device | str = "cpu") -> NaiveTrainer:
    """The naive model and its optimizer for a processed dataset and a pretraining config (the
    PLM, ID model, head sizes, mask ratios, K, tau, lr, clipping and seed of `cfg`)."""
    from flip_dist.train.encoders import build_encoders

    device = torch.device(device)
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    s, m = cfg.pretrain, cfg.model
    obj = objectives(s.objectives)
    torch.manual_seed(s.seed)
    enc = build_encoders(cfg, manifest)
    tables = DenseTables(manifest.num_features, m.embed_dim, m.nce_dim if obj.mtm else None)
    sampler = None
    if obj.mtm:
        counts = np.load(data_dir / "feature_counts.npy")
        tables.init_bias(counts, m.nce_bias_init)
        sampler = AliasSampler(counts, device=device)
    model = NaiveFlip(tables, enc.plm, enc.id_model, enc.info.hidden_size, enc.info.vocab_size, manifest.num_fields,
                      obj, m.nce_dim, m.mtm_hidden, m.icl_dim, s.tau, m.icl_norm, m.mlm_tied).to(device)
    return NaiveTrainer(model, sampler, TextIds(manifest.text_mask_id, enc.info.vocab_size), obj, s.r_text, s.r_tab,
                        s.num_noise, s.lr, s.grad_clip, s.seed, bf16, device)


@torch.no_grad()
def copy_weights(naive: NaiveFlip, dense: nn.Module, sparse: nn.Module) -> None:
    """Load a runtime model's weights into the naive one: the dense side (a FlipPretrainDense:
    same module names) and the whole tables of an unsharded FlipSparse (for equality checks)."""
    from flip_dist.models.embedding import TABLE_NAME

    missing, unexpected = naive.load_state_dict(dense.state_dict(), strict=False)
    if unexpected or any(not k.startswith("tables.") for k in missing):
        raise ValueError(f"dense state does not fit the naive model: missing {missing}, unexpected {unexpected}")
    naive.tables.embedding.weight.copy_(sparse.embedding.ebc.embedding_bags[TABLE_NAME].weight)
    if naive.tables.nce_table is not None:
        naive.tables.nce_table.weight.copy_(sparse.nce.ebc.embedding_bags[NCE_TABLE].weight)


def dense_table_bytes(trainer: NaiveTrainer) -> int:
    """Bytes of the two dense tables with their gradient and Adam's two moments (4 copies)."""
    t = trainer.model.tables
    n = sum(e.weight.numel() * e.weight.element_size() for e in (t.embedding, t.nce_table) if e is not None)
    return 4 * n


def mlm_logit_bytes(batch_size: int, seq_len: int, vocab: int) -> int:
    """Bytes of one fp32 (B, L, V) logit tensor (the naive MLM materialises it and its gradient)."""
    return batch_size * seq_len * vocab * 4


__all__ = ["DenseTables", "NaiveFlip", "NaiveTrainer", "build_naive", "copy_weights", "dense_table_bytes",
           "mlm_logit_bytes"]
