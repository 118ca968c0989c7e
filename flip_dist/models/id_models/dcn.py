"""DCN (Wang et al., ADKDD 2017): cross network v1 beside a DNN.

Cross layer: x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l (one vector w_l per layer: TorchRec's
VectorCrossNet). Cross and deep run in parallel on x_0 = flatten(E); the combination layer reads
v = [x_L ; h], out_dim = F*D + 128.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchrec.modules.crossnet import VectorCrossNet

from flip_dist.models.id_models.base import DNN_HIDDEN, IDModel, dnn


class DCN(IDModel):
    def __init__(self, num_fields: int, embed_dim: int, *, cross_layers: int = 3,
                 dnn_hidden: Sequence[int] = DNN_HIDDEN) -> None:
        in_dim = num_fields * embed_dim
        super().__init__(num_fields, embed_dim, in_dim + dnn_hidden[-1])
        self.cross = VectorCrossNet(in_dim, cross_layers)
        self.deep = dnn(in_dim, dnn_hidden)

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        x0 = emb.flatten(1)
        return torch.cat([self.cross(x0), self.deep(x0)], dim=1)
