"""The common face of the ID-based models (paper Sec. III-A): E (B, F, D) in, (v, logit) out.

The embedding layer lives outside (`flip_dist.models.embedding.FeatureEmbedding`) so that it can
be sharded; a model here holds only the feature-interaction layer and the prediction layer.
Every model's prediction layer is one `Linear(out_dim, 1)` on v, so v is exactly what the
prediction layer reads (the representation of Eq. 4, D_tab = out_dim) and FLIP's
Linear_ID(v) of Eq. 15 is `model.head`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec.modules.mlp import MLP

DNN_HIDDEN: tuple[int, ...] = (300, 300, 128)  # paper V-A.4: DNN layers of every ID model


class IDModel(nn.Module):
    """Base class: subclasses build their layers and implement `represent(emb) -> v`."""

    out_dim: int

    def __init__(self, num_fields: int, embed_dim: int, out_dim: int) -> None:
        super().__init__()
        if num_fields < 1 or embed_dim < 1:
            raise ValueError(f"num_fields and embed_dim must be >= 1, "
                             f"got {num_fields}, {embed_dim}")
        self.num_fields, self.embed_dim, self.out_dim = num_fields, embed_dim, out_dim
        self.head = nn.Linear(out_dim, 1)  # the prediction layer (Eq. 15: Linear_ID)

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        """E (B, F, D) -> v (B, out_dim)."""
        raise NotImplementedError

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E (B, F, D) -> (v (B, out_dim), logit (B,))."""
        if emb.dim() != 3 or emb.shape[1:] != (self.num_fields, self.embed_dim):
            raise ValueError(f"{type(self).__name__} expects embeddings (B, {self.num_fields}, "
                             f"{self.embed_dim}), got {tuple(emb.shape)}")
        v = self.represent(emb)
        return v, self.head(v).squeeze(-1)


def dnn(in_dim: int, hidden: Sequence[int]) -> MLP:
    """ReLU MLP (activation on every layer, the last hidden layer included)."""
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"DNN hidden sizes must be a non-empty list of positive ints, "
                         f"got {hidden}")
    return MLP(in_dim, list(hidden), activation=torch.relu)


def pairs(num_fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Field indices (i, j), i < j, of the F(F-1)/2 pairwise interactions."""
    i, j = torch.triu_indices(num_fields, num_fields, offset=1)
    return i, j
