"""DeepFM (Guo et al., IJCAI 2017): y = <w, x> + sum_{i<j} <e_i, e_j> + w_dnn^T h + b.

FM pair term via the bi-interaction vector p = 1/2 [(sum_f e_f)^2 - sum_f e_f^2] (D values,
sum_d p_d = sum_{i<j} <e_i, e_j>). The first-order term is a linear map over the flattened
embeddings (sum_f w_f . e_f), so no second table. v = [flatten(E) ; p ; h], out_dim = F*D + D + 128;
the head's weights on p start at 1, which is DeepFM exactly, and may then learn a weighting.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from flip_dist.models.id_models.base import DNN_HIDDEN, IDModel, dnn


class DeepFM(IDModel):
    def __init__(self, num_fields: int, embed_dim: int, *,
                 dnn_hidden: Sequence[int] = DNN_HIDDEN) -> None:
        in_dim = num_fields * embed_dim
        super().__init__(num_fields, embed_dim, in_dim + embed_dim + dnn_hidden[-1])
        self.deep = dnn(in_dim, dnn_hidden)
        with torch.no_grad():
            self.head.weight[0, in_dim:in_dim + embed_dim] = 1.0

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        bi = 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1))  # (B, D)
        x = emb.flatten(1)
        return torch.cat([x, bi, self.deep(x)], dim=1)
