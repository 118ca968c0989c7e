"""DCN-V2 (Wang et al., WWW 2021), the paper's default ID model.

Cross layer: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l (full-rank W_l, or U_l V_l^T with `low_rank`),
deep tower: DNN [300, 300, 128], both on x_0 = flatten(E).
parallel: v = [x_L ; h], out_dim = F*D + 128;  stacked: v = DNN(x_L), out_dim = 128.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet

from flip_dist.models.id_models.base import DNN_HIDDEN, IDModel, dnn


class DCNv2(IDModel):
    def __init__(self, num_fields: int, embed_dim: int, *, cross_layers: int = 3,
                 dnn_hidden: Sequence[int] = DNN_HIDDEN, structure: str = "parallel",
                 low_rank: int | None = None) -> None:
        if structure not in ("parallel", "stacked"):
            raise ValueError(f"structure must be 'parallel' or 'stacked', got {structure!r}")
        in_dim = num_fields * embed_dim
        out_dim = in_dim + dnn_hidden[-1] if structure == "parallel" else dnn_hidden[-1]
        super().__init__(num_fields, embed_dim, out_dim)
        self.structure = structure
        self.cross = (CrossNet(in_dim, cross_layers) if low_rank is None
                      else LowRankCrossNet(in_dim, cross_layers, low_rank=low_rank))
        self.deep = dnn(in_dim, dnn_hidden)

    def represent(self, emb: torch.Tensor) -> torch.Tensor:
        x0 = emb.flatten(1)
        if self.structure == "stacked":
            return self.deep(self.cross(x0))
        return torch.cat([self.cross(x0), self.deep(x0)], dim=1)
