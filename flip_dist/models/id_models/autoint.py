"""AutoInt (Song et al., CIKM 2019): interacting layers of multi-head self-attention over fields.

Per layer and head h: alpha = softmax(<W_Q e_m, W_K e_k>), e~_m^h = sum_k alpha_mk W_V e_k;
e_m <- ReLU([e~_m^1 ; ... ; e~_m^H] + W_Res e_m). Defaults from the AutoInt paper: 3 layers,
2 heads, 32 dims per head. v = flatten of the last layer, out_dim = F * heads * head_dim
(with `dnn_hidden`, AutoInt+: v = [that ; DNN(flatten(E))]).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flip_dist.models.id_models.base import IDModel, dnn


class InteractingLayer(nn.Module):
    def __init__(self, in_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(in_dim, 3 * heads * head_dim, bias=False)
        self.res = nn.Linear(in_dim, heads * head_dim, bias=False)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        b, f, _ = e.shape
        q, k, v = self.qkv(e).view(b, f, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # (B, H, F, F); unscaled inner products, as in the AutoInt paper
        alpha = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        out = (alpha @ v).transpose(1, 2).reshape(b, f, self.heads * self.head_dim)
        return torch.relu(out + self.res(e))


class AutoInt(IDModel):
    def __init__(self, num_fields: int, embed_dim: int, *, attention_layers: int = 3,
                 heads: int = 2, head_dim: int = 32,
                 dnn_hidden: Sequence[int] | None = None) -> None:
        att_dim = heads * head_dim
        out_dim = num_fields * att_dim + (dnn_hidden[-1] if dnn_hidden else 0)
        super().__init__(num_fields, embed_dim, out_dim)
        self.layers = nn.Sequential(*[InteractingLayer(embed_dim if n == 0 else att_dim, heads,
                                                       head_dim)
                                      for n in range(attention_layers)])
        self.deep = dnn(num_fields * embed_dim, dnn_hidden) if dnn_hidden else None

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        v = self.layers(emb).flatten(1)
        if self.deep is not None:
            v = torch.cat([v, self.deep(emb.flatten(1))], dim=1)
        return v
