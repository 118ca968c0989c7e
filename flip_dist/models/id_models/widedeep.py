"""Wide & Deep (Cheng et al., DLRS 2016): y = w_wide^T x + w_deep^T h + b.

The wide (linear) part is taken over the flattened embeddings, sum_f w_f . e_f, instead of a
second one-dimensional table over the raw ids; it is the head's weight on the e block of
v = [flatten(E) ; h], out_dim = F*D + 128.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from flip_dist.models.id_models.base import DNN_HIDDEN, IDModel, dnn


class WideDeep(IDModel):
    def __init__(self, num_fields: int, embed_dim: int, *,
                 dnn_hidden: Sequence[int] = DNN_HIDDEN) -> None:
        in_dim = num_fields * embed_dim
        super().__init__(num_fields, embed_dim, in_dim + dnn_hidden[-1])
        self.deep = dnn(in_dim, dnn_hidden)

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        x = emb.flatten(1)
        return torch.cat([x, self.deep(x)], dim=1)
