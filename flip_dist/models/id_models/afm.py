"""AFM (Xiao et al., IJCAI 2017): y = w_0 + sum_f w_f . e_f + p^T sum_{i<j} a_ij (e_i * e_j),
a_ij = softmax_{ij}(h^T ReLU(W (e_i * e_j) + b)).

The first-order term is a linear map over the flattened embeddings (no second table).
v = [flatten(E) ; sum_{i<j} a_ij (e_i * e_j)], out_dim = F*D + D: the head holds w and p.
"""
from __future__ import annotations

import torch
from torch import nn

from flip_dist.models.id_models.base import IDModel, pairs


class AFM(IDModel):
    def __init__(self, num_fields: int, embed_dim: int, *, attention_dim: int = 16) -> None:
        super().__init__(num_fields, embed_dim, num_fields * embed_dim + embed_dim)
        i, j = pairs(num_fields)
        self.register_buffer("pi", i, persistent=False)
        self.register_buffer("pj", j, persistent=False)
        self.attention = nn.Sequential(nn.Linear(embed_dim, attention_dim), nn.ReLU(),
                                       nn.Linear(attention_dim, 1, bias=False))

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        inter = emb[:, self.pi] * emb[:, self.pj]               # (B, P, D) pairwise products
        a = torch.softmax(self.attention(inter), dim=1)         # (B, P, 1) attention scores
        pooled = (a * inter).sum(1)                             # (B, D)
        return torch.cat([emb.flatten(1), pooled], dim=1)
