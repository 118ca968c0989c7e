"""FLIP assembled: the sparse side (TorchRec tables: feature embeddings, NCE output rows) and the
dense side (PLM, ID model, heads) as separate modules, so the runtime can shard the first with
DistributedModelParallel and give the second to DeepSpeed without changing model code. The
single-process step in flip_dist/train/steps.py composes them."""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from flip_dist.errors import FlipConfigError
from flip_dist.models.embedding import FeatureEmbedding, feature_kjt
from flip_dist.models.heads import ICLHead, MLMHead, MTMHead
from flip_dist.models.objectives import Objectives
from flip_dist.models.plm import encode_by_length

NCE_TABLE = "nce_output"
# Std of the NCE output rows' init, as for the feature table (1e-4, like the authors' code): o_j
# starts near 0, so the score o_j . g + b_j starts at b_j, the value init_bias sets.
NCE_INIT_STD = 1e-4


def nce_bias(counts: np.ndarray, mode: str = "log_q") -> np.ndarray:
    """b_j from the train frequencies (see NCEOutput.init_bias); a sharded table loads its rows."""
    q = np.maximum(counts.astype(np.float64), 1.0) / max(float(counts.sum()), 1.0)
    return np.log(q) + (np.log(len(counts)) if mode == "map" else 0.0)


class NCEOutput(nn.Module):
    """The NCE output table over the whole feature space (rows [o_j, b_j], see MTMHead), in a
    TorchRec collection so the runtime can shard it like the feature table."""

    def __init__(self, num_features: int, dim: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name=NCE_TABLE, embedding_dim=dim, num_embeddings=num_features,
                                       feature_names=["nce"], pooling=PoolingType.SUM,
                                       # a partial, not a lambda: the config must survive pickling
                                       init_fn=functools.partial(nn.init.normal_, mean=0.0, std=NCE_INIT_STD))],
            device=device)

    @torch.no_grad()
    def init_bias(self, counts: np.ndarray, mode: str = "log_q") -> None:
        """b_j from the train frequencies q_j (ids never seen count as once).

        log_q (default): b_j = log q_j, so the corrected logit b_j - log(K q_j) starts at -log K
        for every candidate: the model starts at the noise prior, sigma = 1/(K+1).
        map: b_j = log q_j + log M, as the authors' MAP code; every corrected logit then starts at
        log(M/K) (5.3 on ML-100K, 12 at GoodReads scale), an NCE loss near K log(M/K) that the
        bias must first unlearn, and that dominates gradient clipping meanwhile."""
        weight = self.ebc.embedding_bags[NCE_TABLE].weight
        weight[:, -1] = torch.as_tensor(nce_bias(counts, mode), dtype=weight.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (N, C) -> rows (N, C, dim)."""
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["nce"], values=ids.reshape(-1),
                                                  lengths=torch.ones(ids.numel(), dtype=torch.int32, device=ids.device))
        return self.ebc(kjt)["nce"].view(*ids.shape, self.dim)


class FlipSparse(nn.Module):
    """Everything looked up by feature id: E (Sec. III-A) and the NCE output rows (Eq. 10)."""

    def __init__(self, num_features: int, fields: Sequence[str], embed_dim: int, nce_dim: int | None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.fields = list(fields)
        self.embedding = FeatureEmbedding(num_features, self.fields, embed_dim, device=device)
        self.nce = NCEOutput(num_features, nce_dim, device=device) if nce_dim else None

    def embed(self, feature_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(feature_kjt(feature_ids, self.fields))


class FlipPretrainDense(nn.Module):
    """PLM + ID model + the three heads; inputs are dense tensors only. Each encoder runs once
    on masked and unmasked rows stacked together, and only where an objective needs it."""

    def __init__(self, plm: nn.Module, id_model: nn.Module, d_text: int, text_vocab: int, num_fields: int,
                 obj: Objectives, nce_dim: int = 32, mtm_hidden: int = 256, icl_dim: int = 128,
                 tau: float = 0.7, icl_norm: str = "layernorm", mlm_tied: bool = True, length_groups: int = 1) -> None:
        super().__init__()
        self.plm, self.id_model, self.obj = plm, id_model, obj
        self.length_groups = length_groups
        d_tab = id_model.out_dim
        # The MLM decoder shares the PLM's word embeddings, as BERT's does (mlm_tied=False: its own
        # weights: the two-layer MLP g_PLM of Eq. 5 read literally, with its own output layer).
        words = plm.get_input_embeddings().weight if mlm_tied and hasattr(plm, "get_input_embeddings") else None
        self.mlm = MLMHead(d_text, d_tab, text_vocab, joint=obj.joint, tied=words) if obj.mlm else None
        self.mtm = MTMHead(d_tab, d_text, num_fields, nce_dim, mtm_hidden, joint=obj.joint) if obj.mtm else None
        self.icl = ICLHead(d_text, d_tab, icl_dim, tau, icl_norm) if obj.icl else None

    def needs(self) -> tuple[bool, bool, bool, bool]:
        """(w, w_hat, v, v_hat) needed by the enabled objectives (Eq. 4)."""
        o = self.obj
        need_w = o.icl or (o.mtm and o.joint)
        need_v = o.icl or (o.mlm and o.joint)
        return need_w, o.mlm, need_v, o.mtm

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return encode_by_length(self.plm, ids, mask, self.length_groups)

    def forward(self, emb: torch.Tensor, emb_masked: torch.Tensor, input_ids: torch.Tensor,
                masked_input_ids: torch.Tensor, attention_mask: torch.Tensor, mlm_labels: torch.Tensor,
                tab_masked: torch.Tensor, nce_rows: torch.Tensor | None, log_kq: torch.Tensor | None
                ) -> dict[str, torch.Tensor]:
        B = input_ids.shape[0]
        need_w, need_w_hat, need_v, need_v_hat = self.needs()
        texts = [x for x, n in ((input_ids, need_w), (masked_input_ids, need_w_hat)) if n]
        w = w_hat = v = v_hat = None
        if texts:                                                         # Eq. 4, one PLM call
            states = self.encode_text(torch.cat(texts), attention_mask.repeat(len(texts), 1))
            parts = list(states.split(B))
            w = parts.pop(0) if need_w else None
            w_hat = parts.pop(0) if need_w_hat else None
        tabs = [x for x, n in ((emb, need_v), (emb_masked, need_v_hat)) if n]
        if tabs:                                                          # Eq. 4, one ID-model call
            reps, _ = self.id_model(torch.cat(tabs))
            parts = list(reps.split(B))
            v = parts.pop(0) if need_v else None
            v_hat = parts.pop(0) if need_v_hat else None
        losses: dict[str, torch.Tensor] = {}
        if self.mlm is not None:
            losses["mlm"] = self.mlm(w_hat, v, mlm_labels)                # Eq. 5-6
        if self.mtm is not None:
            rows, _, h = self.mtm.queries(v_hat, w, attention_mask, tab_masked)   # Eq. 7-8
            losses["mtm"] = self.mtm.nce_loss(h, nce_rows, log_kq, rows, B)        # Eq. 10
        if self.icl is not None:
            losses["icl"] = self.icl(w[:, 0], v)                          # Eq. 11-13, [CLS] = w_i1
        losses["total"] = sum(losses.values()) if losses else emb.sum() * 0.0    # Eq. 14
        return losses


FINETUNE_MODES = ("flip", "flip_id", "flip_plm")


class FlipFinetuneDense(nn.Module):
    """Eq. 15-19. A linear layer on v (the ID model's own `head`, which pretraining never trains)
    and one on the [CLS] state; FLIP mixes their logits with alpha in [0, 1] (a sigmoid of a free
    parameter, initialised to 0.5) and sums the three BCEs (Eq. 17); FLIP_ID and FLIP_PLM train
    one side (Eq. 18, 19)."""

    def __init__(self, mode: str, id_model: nn.Module | None, plm: nn.Module | None, d_text: int | None,
                 length_groups: int = 1) -> None:
        super().__init__()
        self.length_groups = length_groups
        if mode not in FINETUNE_MODES:
            raise FlipConfigError(f"finetune.mode {mode!r}: one of {list(FINETUNE_MODES)}")
        self.mode = mode
        self.id_model = id_model if mode in ("flip", "flip_id") else None
        self.plm = plm if mode in ("flip", "flip_plm") else None
        self.linear_plm = nn.Linear(d_text, 1) if self.plm is not None else None
        # shape (1,), not (): DeepSpeed ZeRO cannot flatten 0-dim parameters
        self.alpha_logit = nn.Parameter(torch.zeros(1)) if mode == "flip" else None

    @property
    def alpha(self) -> torch.Tensor | None:
        return torch.sigmoid(self.alpha_logit) if self.alpha_logit is not None else None

    def forward(self, emb: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        def bce(logit: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(logit.float(), labels.float())  # Eq. 2
        if self.id_model is not None:
            _, out["logit_id"] = self.id_model(emb)                                       # Eq. 15
            out["loss_id"] = bce(out["logit_id"])
        if self.plm is not None:
            w_cls = encode_by_length(self.plm, input_ids, attention_mask, self.length_groups)[:, 0]
            out["logit_plm"] = self.linear_plm(w_cls).squeeze(-1)                           # Eq. 15
            out["loss_plm"] = bce(out["logit_plm"])
        if self.mode == "flip":
            a = self.alpha
            out["logit"] = a * out["logit_id"] + (1 - a) * out["logit_plm"]                 # Eq. 16
            out["loss"] = bce(out["logit"]) + out["loss_id"] + out["loss_plm"]               # Eq. 17
        elif self.mode == "flip_id":
            out["logit"], out["loss"] = out["logit_id"], out["loss_id"]                     # Eq. 18
        else:
            out["logit"], out["loss"] = out["logit_plm"], out["loss_plm"]                   # Eq. 19
        return out
