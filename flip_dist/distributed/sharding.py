"""The sparse side across workers: FlipSparse built on "meta", its TorchRec tables given a fused
in-backward optimizer and sharded by DistributedModelParallel; plus the two things a sharded
table needs from outside: rows written in (NCE biases, a pretrained table) and rows read out
(export). Each rank only ever touches its own shards, so nothing here scales with world size."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from flip_dist.config import DistConfig
from flip_dist.errors import FlipConfigError
from flip_dist.train.optim import table_optimizer

log = logging.getLogger(__name__)

for noisy in ("torchrec", "torchrec.distributed", "torchrec.distributed.planner", "fbgemm_gpu"):
    logging.getLogger(noisy).setLevel(logging.ERROR)   # a long dump per table otherwise


def _collections(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from torchrec import EmbeddingBagCollection

    for name, m in module.named_modules():
        if isinstance(m, EmbeddingBagCollection):
            yield name, m


def sharding_plan(module: nn.Module, cfg: DistConfig, pg: dist.ProcessGroup, device: torch.device) -> Any:
    """The planner's plan where it offers what `cfg.sharding` asks, a hand-made one where the
    device needs it (TorchRec's planner offers no row-wise sharding of an EmbeddingBagCollection
    on CPU)."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.sharding_plan import (
        construct_module_sharding_plan,
        data_parallel,
        get_default_sharders,
        row_wise,
        table_wise,
    )
    from torchrec.distributed.types import ShardingPlan

    world = dist.get_world_size(pg)
    by_hand = {"row_wise": row_wise, "data_parallel": data_parallel, "table_wise": lambda: table_wise(rank=0)}
    if (cfg.sharding == "row_wise" and device.type == "cpu") or cfg.sharding == "data_parallel" \
            or (cfg.sharding == "table_wise" and world == 1):
        gen = by_hand[cfg.sharding]()
        return ShardingPlan({name: construct_module_sharding_plan(
            ebc, {t.name: gen for t in ebc.embedding_bag_configs()}, local_size=world, world_size=world,
            device_type=device.type) for name, ebc in _collections(module)})
    constraints = None
    if cfg.sharding != "auto":
        constraints = {t.name: ParameterConstraints(sharding_types=[cfg.sharding])
                       for _, ebc in _collections(module) for t in ebc.embedding_bag_configs()}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device=device.type),
                                       constraints=constraints)
    try:
        return planner.collective_plan(module, get_default_sharders(), pg)
    except Exception as e:   # the planner's own message says which table found no plan
        raise FlipConfigError(f"dist.sharding={cfg.sharding!r}: the TorchRec planner found no plan on "
                              f"{device.type} with {world} workers: {e}") from e


class ReplicatedTables(nn.Module):
    """dist.sharding=none: every worker holds the whole tables (plain torch EmbeddingBags) and a
    plain optimizer; gradients are averaged over ranks after backward. For small vocabularies, and
    for GPUs without fbgemm's CUDA kernels. Same interface as the DistributedModelParallel."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.module, self.fused_optimizer = module, optimizer

    def after_backward(self) -> None:
        if dist.get_world_size() > 1:
            for p in self.module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)        # the runtime already scaled by 1 / world size
        self.fused_optimizer.step()
        self.fused_optimizer.zero_grad(set_to_none=True)


def shard_sparse(build: Callable[..., nn.Module], cfg: DistConfig, optimizer: str, lr: float,
                 pg: dist.ProcessGroup, device: torch.device) -> nn.Module:
    """build(device="meta") -> the tables, each rank materialising only its shards, with the fused
    `optimizer` (a table_optimizer name) updating the touched rows during backward (no dense
    gradient for the tables)."""
    from torch.distributed.optim import _apply_optimizer_in_backward
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    opt_cls, opt_kwargs = table_optimizer(optimizer)
    if cfg.sharding == "none":
        module = build(device=device)
        return ReplicatedTables(module, opt_cls(module.parameters(), lr=lr, **opt_kwargs))
    module = build(device=torch.device("meta"))
    for _, ebc in _collections(module):
        _apply_optimizer_in_backward(opt_cls, ebc.parameters(), {"lr": lr, **opt_kwargs})
    plan = sharding_plan(module, cfg, pg, device)
    dmp = DistributedModelParallel(module, env=ShardingEnv.from_process_group(pg), device=device, plan=plan)
    kinds = {f"{name}.{t}": p.sharding_type for name, mp in plan.plan.items() for t, p in mp.items()}
    log.info("sparse tables sharded over %d workers: %s", dist.get_world_size(pg), kinds)
    return dmp


def set_sparse_lr(dmp: nn.Module, lr: float) -> None:
    """The fused optimizers read their learning rate when they run, i.e. in the next backward."""
    for group in dmp.fused_optimizer.param_groups:
        group["lr"] = lr


def _local_pieces(tensor: Any) -> list[tuple[torch.Tensor, int, int]]:
    """(local tensor, first row, first column) of each piece of a table this rank holds."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(tensor, ShardedTensor):
        return [(s.tensor, s.metadata.shard_offsets[0], s.metadata.shard_offsets[1]) for s in tensor.local_shards()]
    if hasattr(tensor, "to_local") and hasattr(tensor, "placements"):      # DTensor
        raise FlipConfigError("DTensor table state is not supported by this runtime")
    return [(tensor, 0, 0)]


def has_table(dmp: nn.Module, table: str) -> bool:
    return any(k.endswith(f"embedding_bags.{table}.weight") for k in dmp.state_dict())


def table_state(dmp: nn.Module, table: str) -> Any:
    """The (possibly sharded) weight of a table, e.g. 'features' or 'nce_output'."""
    for key, value in dmp.state_dict().items():
        if key.endswith(f"embedding_bags.{table}.weight"):
            return value
    raise KeyError(f"no table {table!r} in {sorted(dmp.state_dict())}")


@torch.no_grad()
def write_rows(dmp: nn.Module, table: str, rows: Callable[[int, int, int, int], np.ndarray | torch.Tensor]) -> None:
    """Fill this rank's pieces of `table`: rows(first_row, n_rows, first_col, n_cols) gives the
    values of that block. The state dict's shards are views of the kernels' weights."""
    for local, r0, c0 in _local_pieces(table_state(dmp, table)):
        n, d = local.shape
        block = torch.as_tensor(rows(r0, n, c0, d), dtype=local.dtype)
        local.copy_(block.to(local.device))


@torch.no_grad()
def load_nce_bias(dmp: nn.Module, table: str, bias: np.ndarray) -> None:
    """b_j into the last column of the NCE output rows, after sharding (a table's init_fn sees
    neither the row offset of its shard nor the frequencies)."""
    state = table_state(dmp, table)
    for local, r0, c0 in _local_pieces(state):
        n, d = local.shape
        full_dim = state.size(1) if hasattr(state, "size") else d
        if c0 + d == full_dim:                         # the piece holding the last column
            local[:, -1] = torch.as_tensor(bias[r0:r0 + n], dtype=local.dtype, device=local.device)


@torch.no_grad()
def gather_table(dmp: nn.Module, table: str, dst: int = 0) -> torch.Tensor | None:
    """The whole table on rank `dst` (None elsewhere), for export: each rank sends its pieces."""
    state = table_state(dmp, table)
    pieces = [(r0, c0, local.detach().cpu().float()) for local, r0, c0 in _local_pieces(state)]
    everyone: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(pieces, everyone, dst=dst)
    if dist.get_rank() != dst:
        return None
    rows, cols = (state.size(0), state.size(1)) if hasattr(state, "size") else state.shape
    full = torch.zeros(rows, cols)
    for rank_pieces in everyone:
        for r0, c0, t in rank_pieces:
            full[r0:r0 + t.shape[0], c0:c0 + t.shape[1]] = t
    return full
