"""Inner-product PNN (Qu et al., ICDM 2016): the DNN reads [z ; p], z = flatten(E) (linear
signals) and p_ij = <e_i, e_j> for the F(F-1)/2 field pairs (quadratic signals).

v = the DNN's last hidden layer, out_dim = 128; the head is PNN's output layer.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from flip_dist.models.id_models.base import DNN_HIDDEN, IDModel, dnn, pairs


class PNN(IDModel):
    def __init__(self, num_fields: int, embed_dim: int, *,
                 dnn_hidden: Sequence[int] = DNN_HIDDEN) -> None:
        super().__init__(num_fields, embed_dim, dnn_hidden[-1])
        i, j = pairs(num_fields)
        self.register_buffer("pi", i, persistent=False)
        self.register_buffer("pj", j, persistent=False)
        num_pairs = num_fields * (num_fields - 1) // 2
        self.deep = dnn(num_fields * embed_dim + num_pairs, dnn_hidden)

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        p = (emb[:, self.pi] * emb[:, self.pj]).sum(-1)  # (B, F(F-1)/2)
        return self.deep(torch.cat([emb.flatten(1), p], dim=1))
