"""What one worker's memory should be, part by part, to hold its peak against: the process before
any model (interpreter, torch, DeepSpeed, TorchRec, transformers, Ray's worker), the dense side's
state as ZeRO partitions it, this rank's share of the tables and their optimizer state, the noise
sampler, and the activations of one step from the transformer's own count (Korthikanti et al.
2022: 34 s b h + 5 a s^2 b bytes a layer in 16 bits, twice that in 32)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

GIB = 2.0 ** 30
TABLE_OPTIMIZER_FLOATS_PER_ROW = {"rowwise_adagrad": lambda dim: 1, "adagrad": lambda dim: dim,
                                  "adam": lambda dim: 2 * dim, "sgd": lambda dim: 0}


@dataclass(frozen=True)
class TableShape:
    name: str
    rows: int
    dim: int


@dataclass(frozen=True)
class MemoryEstimate:
    """GiB a worker holds at its peak, by part."""

    process: float           # measured before building anything
    dense_state: float       # weights, master copies, gradients, optimizer moments (ZeRO-partitioned)
    tables: float            # this rank's rows of every table, with their optimizer state
    sampler: float
    activations: float

    @property
    def total(self) -> float:
        return self.process + self.dense_state + self.tables + self.sampler + self.activations

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in {**asdict(self), "total": self.total}.items()}


def dense_state_bytes(num_params: int, world: int, zero: int, bf16: bool) -> float:
    """Bytes of the dense side per rank. Stage 1 partitions the optimizer moments (and in bf16 the
    fp32 master weights), stage 2 also the gradients, stage 3 also the weights."""
    P, w = float(num_params), float(world)
    weights = (2 if bf16 else 4) * P / (w if zero >= 3 else 1)
    master = 4 * P / (w if zero >= 1 else 1) if bf16 else 0.0
    grads = (2 if bf16 else 4) * P / (w if zero >= 2 else 1) + (4 * P / w if bf16 and zero >= 1 else 0.0)
    moments = 8 * P / (w if zero >= 1 else 1)
    return weights + master + grads + moments


def table_bytes(tables: list[TableShape], world: int, optimizer: str, sharded: bool) -> float:
    """Row-wise (or table-wise) sharding gives each rank 1/world of the rows, updated in backward
    (no gradient kept); replicated plain tables hold all rows and a dense gradient of them."""
    per_row = TABLE_OPTIMIZER_FLOATS_PER_ROW.get(optimizer, lambda dim: 2 * dim)
    if sharded:
        return sum(4.0 * t.rows * (t.dim + per_row(t.dim)) / world for t in tables)
    return sum(4.0 * t.rows * (2 * t.dim + per_row(t.dim)) for t in tables)


def transformer_activation_bytes(tokens: int, seq: int, hidden: int, heads: int, layers: int, bf16: bool) -> float:
    """One forward's saved activations of an encoder (tokens = rows x seq, every PLM pass stacked)."""
    per_layer_16bit = 34.0 * tokens * hidden + 5.0 * heads * seq * tokens
    return per_layer_16bit * layers * (1.0 if bf16 else 2.0)


def buffer_bytes(module: nn.Module | None) -> float:
    if module is None:
        return 0.0
    return float(sum(b.numel() * b.element_size() for b in module.buffers()))


def num_params(module: nn.Module) -> int:
    """Parameters of the whole model, also where ZeRO-3 left each rank a partition only."""
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in module.parameters())


def plm_activation_bytes(plm: nn.Module | None, rows: int, seq: int, bf16: bool) -> float:
    if plm is None:
        return 0.0
    c = plm.config
    return transformer_activation_bytes(rows * seq, seq, c.hidden_size, c.num_attention_heads, c.num_hidden_layers,
                                        bf16)


def gib(n_bytes: float) -> float:
    return n_bytes / GIB


def cuda_peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB
