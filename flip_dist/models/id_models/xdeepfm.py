"""xDeepFM (Lian et al., KDD 2018): y = w_lin^T a + w_cin^T p+ + w_dnn^T h + b.

CIN layer k: X^k_{h,*} = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_{i,*} * X^0_{j,*}) (a 1x1 convolution
over the H_{k-1} x F outer products, identity activation as in the paper); p^k = sum pooling of
X^k over D, p+ = [p^1 ; ... ; p^K]. The linear term is a map over the flattened embeddings (no
second table). v = [flatten(E) ; p+ ; h], out_dim = F*D + sum(cin_layers) + 128.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flip_dist.models.id_models.base import DNN_HIDDEN, IDModel, dnn


class CIN(nn.Module):
    def __init__(self, num_fields: int, layers: Sequence[int]) -> None:
        super().__init__()
        sizes = [num_fields, *layers]
        self.convs = nn.ModuleList(nn.Conv1d(sizes[k] * num_fields, sizes[k + 1], kernel_size=1)
                                   for k in range(len(layers)))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        b, f, d = x0.shape
        x, pooled = x0, []
        for conv in self.convs:
            z = (x.unsqueeze(2) * x0.unsqueeze(1)).reshape(b, -1, d)  # (B, H_{k-1} * F, D)
            x = conv(z)                                               # (B, H_k, D)
            pooled.append(x.sum(-1))
        return torch.cat(pooled, dim=1)


class XDeepFM(IDModel):
    def __init__(self, num_fields: int, embed_dim: int, *,
                 cin_layers: Sequence[int] = (100, 100, 100),
                 dnn_hidden: Sequence[int] = DNN_HIDDEN) -> None:
        in_dim = num_fields * embed_dim
        super().__init__(num_fields, embed_dim, in_dim + sum(cin_layers) + dnn_hidden[-1])
        self.cin = CIN(num_fields, cin_layers)
        self.deep = dnn(in_dim, dnn_hidden)

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        x = emb.flatten(1)
        return torch.cat([x, self.cin(emb), self.deep(x)], dim=1)
