"""The embedding layer of paper Sec. III-A (E_i = [e_i1, ..., e_iF]) as one TorchRec table.

Feature ids are global (one id space over all fields, special ids such as <MASK> included), so
every field is a feature of the same table "features". Keeping the table in a TorchRec
`EmbeddingBagCollection`, apart from the ID models that read E, lets the distributed runtime
build it on "meta" and shard it with `DistributedModelParallel` without touching model code.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

TABLE_NAME = "features"


def feature_kjt(feature_ids: torch.Tensor, fields: Sequence[str]) -> KeyedJaggedTensor:
    """(B, F) global feature ids, one per field in field order, to a KJT with one key per field.

    Each sample has exactly one id per key (length 1). TorchRec wants values key-major (all
    samples of key 0, then key 1, ...), which is the transpose of the row-major batch.
    """
    if feature_ids.dim() != 2 or feature_ids.shape[1] != len(fields):
        raise ValueError(f"feature_ids must be (B, {len(fields)}) for fields {list(fields)}, "
                         f"got shape {tuple(feature_ids.shape)}")
    if feature_ids.dtype.is_floating_point or feature_ids.dtype == torch.bool:
        # Float ids are exact only to 2^24 (the official code's fault): refuse them.
        raise TypeError(f"feature_ids must be an integer tensor, got {feature_ids.dtype}")
    batch, num_fields = feature_ids.shape
    values = feature_ids.t().reshape(-1).to(torch.int64)  # key-major
    lengths = torch.ones(batch * num_fields, dtype=torch.int64, device=feature_ids.device)
    return KeyedJaggedTensor.from_lengths_sync(keys=list(fields), values=values, lengths=lengths,
                                               stride=batch)


class FeatureEmbedding(nn.Module):
    """One `EmbeddingBagCollection` table over the global feature id space, shared by all fields.

    Pooling is SUM over bags of one id, so each pooled output is exactly the id's row.
    Weights are initialised only through the table config (`init_fn`, normal with std
    `init_std`, 1e-4 like the authors' code), so a "meta" build that TorchRec shards later
    gets the same init; `weight_init_min/max` are set to a uniform of the same std for the
    kernels that ignore `init_fn`.
    """

    def __init__(self, num_features: int, fields: Sequence[str], embedding_dim: int = 32,
                 init_std: float = 1e-4, device: torch.device | str | None = None) -> None:
        super().__init__()
        if num_features <= 0 or embedding_dim <= 0 or not fields:
            raise ValueError(f"need num_features > 0, embedding_dim > 0 and at least one field, "
                             f"got {num_features}, {embedding_dim}, {list(fields)}")
        if len(set(fields)) != len(fields):
            raise ValueError(f"field names must be unique, got {list(fields)}")
        self.fields = list(fields)
        self.num_features, self.embedding_dim, self.init_std = num_features, embedding_dim, init_std
        bound = math.sqrt(3.0) * init_std  # uniform(-b, b) has std b / sqrt(3)
        table = EmbeddingBagConfig(
            num_embeddings=num_features, embedding_dim=embedding_dim, name=TABLE_NAME,
            feature_names=list(fields), pooling=PoolingType.SUM,
            weight_init_min=-bound, weight_init_max=bound,
            # a partial, not a lambda: the config must survive pickling / deep copies
            init_fn=functools.partial(nn.init.normal_, mean=0.0, std=init_std))
        device = torch.device(device) if isinstance(device, str) else device
        self.ebc = EmbeddingBagCollection(tables=[table], device=device)

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        """KJT from `feature_kjt` -> E, (B, F, D) in field order."""
        pooled = self.ebc(kjt)
        if pooled.keys() == self.fields:
            values = pooled.values()
            return values.view(values.shape[0], len(self.fields), self.embedding_dim)
        per_key = pooled.to_dict()  # a sharded collection may order keys its own way
        return torch.stack([per_key[f] for f in self.fields], dim=1)
