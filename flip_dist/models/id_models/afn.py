"""AFN (Cheng et al., AAAI 2020): logarithmic neurons learn interactions of adaptive order.

Neuron l, dimension d: y_{l,d} = exp(sum_f w_{l,f} ln|e_{f,d}|) = prod_f |e_{f,d}|^{w_{l,f}},
then a DNN on flatten(Y). |e| is clamped at `eps` before the log; batch normalisation on ln|E|
and on Y (as FuxiCTR does) keeps the exponent in range with the tiny (std 1e-4) embeddings.
v = the DNN's last hidden layer, out_dim = 128.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flip_dist.models.id_models.base import DNN_HIDDEN, IDModel, dnn


class AFN(IDModel):
    def __init__(self, num_fields: int, embed_dim: int, *, log_neurons: int = 1200,
                 dnn_hidden: Sequence[int] = DNN_HIDDEN, eps: float = 1e-7) -> None:
        super().__init__(num_fields, embed_dim, dnn_hidden[-1])
        self.eps = eps
        self.log_norm = nn.BatchNorm1d(num_fields)
        self.w = nn.Linear(num_fields, log_neurons, bias=False)  # w_{l,f}
        self.exp_norm = nn.BatchNorm1d(log_neurons)
        self.deep = dnn(log_neurons * embed_dim, dnn_hidden)

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        log_e = self.log_norm(emb.abs().clamp_min(self.eps).log())      # (B, F, D)
        y = torch.exp(self.w(log_e.transpose(1, 2)).transpose(1, 2))    # (B, L, D)
        return self.deep(self.exp_norm(y).flatten(1))
