"""What each Ray Train worker runs: the loop over a stage (flip_dist.train.stages) with the tables
sharded by TorchRec (fused optimizer in backward) and the dense side (PLM + ID model + heads) in a
DeepSpeed engine. Same code on CPU (gloo) and GPU (nccl).

The step itself is the stage's, shared with the single-process loop. Differences from one process,
by design: the tables' fused optimizer updates rows during backward (before DeepSpeed's step) and
is outside DeepSpeed's gradient clipping and accumulation; the tables' gradient is divided by the
world size, so that it is the mean over the global batch like the dense gradient that DeepSpeed
averages."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from flip_dist.checkpoints import (
    publish_resumable,
    restart_checkpoint,
    restore_resumable,
    run_identity,
    save_resumable,
    write_export,
)
from flip_dist.config import FlipConfig
from flip_dist.data.batches import Batch, ShardReader
from flip_dist.data.manifest import Manifest, read_manifest
from flip_dist.data.stream import RankStream, list_shards
from flip_dist.distributed.ds_config import load_ds_config, zero_stage
from flip_dist.distributed.metrics_log import MetricsLog
from flip_dist.distributed.sharding import (
    gather_table,
    has_table,
    load_nce_bias,
    set_sparse_lr,
    shard_sparse,
    write_rows,
)
from flip_dist.errors import FlipDataError
from flip_dist.eval.metrics import CTRMetrics
from flip_dist.models.flip import FlipSparse, nce_bias
from flip_dist.models.masking import RowShard
from flip_dist.profiling.memory import TableShape
from flip_dist.profiling.phases import PhaseClock, mark_backward
from flip_dist.train.optim import dense_optimizer, warmup_cosine
from flip_dist.train.stages import Stage, StageModel, get_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerArgs:
    """What the driver hands every worker (Ray Train's train_loop_config is its dict)."""

    config: dict[str, Any]           # FlipConfig.to_dict()
    stage: str
    data_dir: str
    run_dir: str                     # metrics, sample ledgers, the export
    resume: str | None = None        # a verified checkpoint folder to continue from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient times `scale` backward (TorchRec sums table gradients over ranks)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


@dataclass
class WorkerEnv:
    rank: int
    world: int
    device: torch.device

    @property
    def shard(self) -> RowShard:
        return RowShard(self.rank, self.world)


def init_distributed(use_gpu: bool) -> WorkerEnv:
    """Adopt the process group Ray Train made (or make one from torchrun-style variables), and
    let DeepSpeed use it rather than start its own."""
    import deepspeed

    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_gpu else "gloo")
    deepspeed.init_distributed(dist_backend=dist.get_backend())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    return WorkerEnv(dist.get_rank(), dist.get_world_size(), device)


class ShardedTables:
    """The tables sharded over the ranks by TorchRec (or replicated, dist.sharding=none), their
    optimizer fused into backward; rows written in and gathered out shard by shard."""

    def __init__(self, cfg: FlipConfig, env: WorkerEnv) -> None:
        self.cfg, self.device = cfg, env.device
        self.shapes: list[TableShape] = []      # what was built, for the profiler's memory estimate
        self.optimizer = ""

    def build(self, manifest: Manifest, embed_dim: int, nce_dim: int | None, settings: Any) -> nn.Module:
        make = functools.partial(FlipSparse, manifest.num_features, manifest.fields, embed_dim, nce_dim)
        self.shapes = [TableShape("embedding", manifest.num_features, embed_dim),
                       *([TableShape("nce", manifest.num_features, nce_dim)] if nce_dim else [])]
        self.optimizer = settings.table_optimizer
        return shard_sparse(make, self.cfg.dist, settings.table_optimizer, settings.embed_lr, dist.group.WORLD,
                            self.device)

    def init_nce_bias(self, sparse: nn.Module, counts: np.ndarray, mode: str) -> None:
        from flip_dist.models.flip import NCE_TABLE

        load_nce_bias(sparse, NCE_TABLE, nce_bias(counts, mode))

    def load(self, sparse: nn.Module, table: str, weight: torch.Tensor) -> None:
        if has_table(sparse, table):
            write_rows(sparse, table, lambda r0, n, c0, d: weight[r0:r0 + n, c0:c0 + d])

    def lookups(self, sparse: nn.Module) -> nn.Module:
        return sparse.module

    def export(self, sparse: nn.Module) -> dict[str, torch.Tensor]:
        from flip_dist.checkpoints.exports import TABLE_FILES

        return {name: gather_table(sparse, table) for name, table in TABLE_FILES.items() if has_table(sparse, table)}


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def _under_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_size()
        return True
    except Exception:       # no Ray installed, or not inside a Ray Train worker
        return False


def _peak_memory(env: WorkerEnv) -> dict[str, float]:
    """Each rank's peak resident memory (and GPU memory) so far, in GiB, listed by rank."""
    import resource

    mine = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20]          # KiB -> GiB
    if env.device.type == "cuda":
        mine.append(torch.cuda.max_memory_allocated(env.device) / 2**30)
    everyone: list[Any] = [None] * env.world
    dist.all_gather_object(everyone, mine)
    out = {"peak_rss_gib": max(m[0] for m in everyone), "peak_rss_gib_by_rank": [round(m[0], 3) for m in everyone]}
    if env.device.type == "cuda":
        out["peak_gpu_gib_by_rank"] = [round(m[1], 3) for m in everyone]
    return out


def _all_have(flag: bool, device: torch.device) -> bool:
    """Every rank must run the same number of steps (lookups and ZeRO are collectives)."""
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


class Runtime:
    """One worker's state for one stage: modules, engine, data position, logs, checkpoints."""

    def __init__(self, cfg: FlipConfig, stage: Stage, data_dir: str, run_dir: str) -> None:
        self.cfg, self.stage, self.data_dir = cfg, stage, Path(data_dir)
        self.tc = stage.settings
        self.env = init_distributed(cfg.dist.use_gpu)
        self.run_dir = Path(run_dir)
        self.log = MetricsLog(self.run_dir, enabled=self.env.rank == 0)
        self.manifest = read_manifest(self.data_dir)
        self.identity = run_identity(cfg.to_dict(), stage.section, self.manifest)
        self.train: ShardReader | None = None
        self.stream: RankStream | None = None
        if stage.trains and cfg.dist.data == "exact":
            self.train = ShardReader(self.data_dir, "train")
        elif stage.trains:
            self.stream = RankStream(list_shards(self.data_dir, "train"), self.env.rank, self.env.world,
                                     stage.worker_batch(self.env.world), cfg.dist.shuffle_buffer_rows, self.tc.seed,
                                     self.manifest.text_pad_id)
        self.ledger = None
        if cfg.dist.sample_log and stage.trains:     # which rows each step trained, for audits
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            self.ledger = open(self.run_dir / "samples" / f"rank{self.env.rank}.jsonl", "a", encoding="utf-8")
        self.steps_per_epoch = stage.steps_per_epoch(self.manifest.num_train, self.env.world)
        self.total_steps = stage.total_steps(self.manifest.num_train, self.env.world)
        self.step = 0
        self.gen = torch.Generator(device=self.env.device).manual_seed(self.tc.seed)   # same on every rank
        self.clock = PhaseClock.off()     # flip_dist.profiling switches one on

    # ------------------------------------------------------------------ model
    def build(self) -> None:
        self.tables = ShardedTables(self.cfg, self.env)
        self.model: StageModel = self.stage.build(self.manifest, self.data_dir, self.tables, self.env.rank)
        self.sparse = self.model.sparse
        self.engine = self._engine(self.model.dense)

    def _engine(self, dense: nn.Module) -> Any:
        import deepspeed

        tc, dc = self.tc, self.cfg.dist
        opt = dense_optimizer(dense.parameters(), self.stage.adamw, tc.lr, tc.weight_decay)
        # DeepSpeed steps the schedule once per optimizer step, i.e. every grad_accum micro-batches
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(max(self.total_steps // dc.grad_accum, 1), tc.warmup_ratio))
        self.ds_config = load_ds_config(dc.ds_config, micro_batch=self.stage.worker_batch(self.env.world),
                                        world_size=self.env.world,
                                        grad_accum=dc.grad_accum, grad_clip=tc.grad_clip, precision=dc.precision)
        engine, _, _, _ = deepspeed.initialize(model=dense, optimizer=opt, lr_scheduler=sched, config=self.ds_config)
        self.dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
        return engine

    # ------------------------------------------------------------------ data
    def batches(self, epoch: int, skip: int) -> Iterator[Batch]:
        """This rank's batches of one epoch from batch `skip` on: a function of (seed, epoch, rank)
        alone, so a resumed run trains exactly what the uninterrupted one would have."""
        if self.stream is not None:      # ray: this rank's seeded share, streamed by Ray Data
            yield from self.stream.batches(epoch, skip)
            return
        B, env = self.stage.worker_batch(self.env.world), self.env  # exact: the single process's
        # global batches, each rank taking its slice
        for i, idx in enumerate(self.train.batch_indices(self.tc.batch_size, shuffle=True, seed=self.tc.seed + epoch,
                                                         drop_last=True)):
            if i >= skip:
                yield self.train.take(idx[env.rank * B:(env.rank + 1) * B])

    def _positions(self) -> Iterator[Batch]:
        """Batches from the current step on (a resumed run skips what it already trained on)."""
        for epoch in range(self.step // self.steps_per_epoch, self.tc.epochs):
            yield from self.batches(epoch, max(0, self.step - epoch * self.steps_per_epoch))

    # ------------------------------------------------------------------ steps
    SPARSE_OUTPUTS = ("emb", "emb_masked", "nce_rows")

    def _to_engine(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The table lookups in the engine's dtype, their gradient scaled (see the module doc);
        everything else as it is (log K q stays fp32: bf16 would round it by ~0.06)."""
        out = dict(inputs)
        for k in self.SPARSE_OUTPUTS:
            v = out.get(k)
            if v is not None:
                if v.requires_grad:
                    v = mark_backward(_ScaleGrad.apply(v, 1.0 / self.env.world), self.clock, "lookups")
                out[k] = v.to(self.dtype)
        return out

    def _forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.clock.switch("lookups")
        lookups = self.tables.lookups(self.sparse) if self.sparse is not None else None
        inputs = self._to_engine(self.stage.inputs(self.model, lookups, batch.to(self.env.device), self.gen,
                                                   self.env.shard))
        self.clock.switch("heads")           # the PLM's hooks switch to plm_fwd and back
        return self.engine(**inputs)

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One micro-batch's forward and backward; returns its losses and what the stage measured."""
        losses = self.stage.losses(self._forward(batch))
        # Backward starts with the heads; what DeepSpeed does after autograd counts as the optimizer's.
        self.engine.backward(mark_backward(losses[self.stage.loss_key], self.clock, "heads", at_end="optimizer"))
        self.clock.switch("other")
        return {**losses, **self.stage.extras(self.model)}

    def next_batch(self, data: Iterator[Batch], stop: int) -> Batch:
        """The next batch, once every rank has one (lookups and ZeRO are collectives)."""
        self.clock.switch("data_wait")
        batch = next(data, None)
        self.clock.switch("other")
        if not _all_have(batch is not None, self.env.device):
            raise FlipDataError(f"{self.stage.name} ran out of training data at step {self.step} of {stop}: the "
                                f"shards hold fewer rows than the manifest's num_train="
                                f"{self.manifest.num_train}", path=str(self.data_dir / "train"))
        return batch

    def optimize(self, batch: Batch, lr_factor: Any) -> dict[str, torch.Tensor]:
        """One training step on `batch`: forward, backward (tables updated in it), dense step."""
        if self.sparse is not None:
            set_sparse_lr(self.sparse, self.tc.embed_lr * lr_factor(self.step // self.cfg.dist.grad_accum))
        losses = self.train_step(batch)
        if hasattr(self.sparse, "after_backward"):     # replicated tables: a plain optimizer
            with self.clock.phase("lookups"):
                self.sparse.after_backward()
        with self.clock.phase("optimizer"):
            self.engine.step()
        return losses

    def fit(self) -> dict[str, Any]:
        """Train to total_steps (or stop_after steps of this run), reporting and checkpointing."""
        accum = self.cfg.dist.grad_accum      # steps below count micro-batches
        factor = warmup_cosine(max(self.total_steps // accum, 1), self.tc.warmup_ratio)
        dc, start = self.cfg.dist, self.step
        stop = min(self.total_steps, start + dc.stop_after) if dc.stop_after else self.total_steps
        data = self._positions()
        t0, seen, last = time.perf_counter(), 0, {}
        from tqdm.auto import tqdm

        bar = tqdm(total=stop, initial=start, desc=f"{self.stage.label}[rank {self.env.rank}]", unit="step",
                   disable=self.env.rank != 0)
        while self.step < stop:
            batch = self.next_batch(data, stop)
            losses = self.optimize(batch, factor)
            self.step += 1
            seen += len(batch)
            if self.ledger is not None and batch.row_ids is not None:
                self.ledger.write(json.dumps({"step": self.step, "rows": batch.row_ids.tolist()}) + "\n")
                self.ledger.flush()
            bar.update(1)
            if self.step % dc.log_every == 0 or self.step == stop:
                row = _mean_over_ranks({k: float(v.detach()) for k, v in losses.items() if v.dim() == 0},
                                       self.env.device)
                row["samples_per_s"] = seen * self.env.world / (time.perf_counter() - t0)
                row.update(_peak_memory(self.env))
                row["lr"] = float(self.engine.get_lr()[0])
                last = row
                bar.set_postfix({k: f"{row[k]:.4f}" for k in losses if k in row})
                self.log.write(self.stage.name, self.step, row)
                checkpoint = self.step == stop or (dc.checkpoint_every and self.step % dc.checkpoint_every == 0)
                self.report(row, checkpoint=bool(checkpoint))
            elif dc.checkpoint_every and self.step % dc.checkpoint_every == 0:
                self.report(last, checkpoint=True)
        bar.close()
        if self.ledger is not None:
            self.ledger.close()
        return {"steps": self.step, "last": last, "finished": self.step >= self.total_steps}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """AUC / logloss on the whole test split: each global batch is split over the ranks,
        padded to equal parts (every rank must make the same lookups), padding not counted; the
        predictions are then gathered so every rank computes the metrics on all of them."""
        reader = ShardReader(self.data_dir, "test")
        env, logits, labels = self.env, [], []
        self.engine.eval()
        for idx in reader.batch_indices(self.tc.eval_batch_size, max_rows=self.tc.eval_rows):
            per = -(-len(idx) // env.world)
            padded = np.concatenate([idx, np.repeat(idx[-1:], per * env.world - len(idx))])
            valid = max(0, min(per, len(idx) - env.rank * per))
            batch = reader.take(padded[env.rank * per:(env.rank + 1) * per])
            out = self._forward(batch)
            logits.append(out["logit"][:valid].float().cpu())
            labels.append(batch.labels[:valid].cpu())
        self.engine.train()
        gathered: list[Any] = [None] * env.world
        dist.all_gather_object(gathered, (torch.cat(logits), torch.cat(labels)))
        metrics = CTRMetrics()
        metrics.update(torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered]))
        result = metrics.compute()
        dense = self.engine.module
        if getattr(dense, "alpha", None) is not None:
            result["alpha"] = float(dense.alpha)
        return result

    # ------------------------------------------------------------------ checkpoints
    def report(self, metrics: dict[str, Any], checkpoint: bool) -> None:
        """Every rank reports (Ray Train synchronises on it); with a checkpoint, every rank adds
        its own files to one checkpoint folder that Ray registers only when all have uploaded."""
        metrics = {**metrics, "step": self.step, "stage": self.stage.name}
        if not _under_ray_train():
            if checkpoint:
                final = self.run_dir / "checkpoints" / f"step-{self.step:08d}"
                publish_resumable(final, lambda tmp: self.save_checkpoint(tmp, shared=True))
            return
        import ray.train

        if not checkpoint:
            ray.train.report(metrics)
            return
        tmp = Path(tempfile.mkdtemp(prefix=f"flip-ckpt-r{self.env.rank}-"))
        try:
            self.save_checkpoint(tmp, shared=False)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def save_checkpoint(self, folder: Path, shared: bool) -> None:
        """This rank's part of a resumable checkpoint: tables, engine, step and RNG states."""
        rank_state = {"step": torch.tensor(self.step), "generator": self.gen.get_state(),
                      "torch_rng": torch.get_rng_state(),
                      **({"cuda_rng": torch.cuda.get_rng_state()} if self.env.device.type == "cuda" else {})}
        save_resumable(folder, sparse=self.sparse, engine=self.engine, rank_state=rank_state, shared=shared,
                       body={"stage": self.stage.name, "step": self.step, "total_steps": self.total_steps,
                             "zero_stage": zero_stage(self.ds_config), "sharding": self.cfg.dist.sharding,
                             "data": str(self.data_dir), "identity": self.identity, "config": self.cfg.to_dict()})

    def restore(self, folder: str | Path) -> None:
        """Continue from a checkpoint: verified file by file before anything pickled in it is read."""
        mine = restore_resumable(folder, sparse=self.sparse, engine=self.engine, stage=self.stage.name,
                                 identity=self.identity)
        self.step = int(mine["step"])
        self.gen.set_state(mine["generator"])
        torch.set_rng_state(mine["torch_rng"])
        if "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"])
        self.log.rewind(self.stage.name, self.step)      # the steps after the checkpoint are trained again

    # ------------------------------------------------------------------ export
    def export(self, folder: Path) -> None:
        """Plain files other tools start from: the PLM as a Hugging Face folder and state dicts
        (the whole tables gathered from their shards) in the single-process export format."""
        import deepspeed

        tables = self.tables.export(self.sparse) if self.sparse is not None else {}
        dense = self.engine.module
        params = list(dense.parameters()) if zero_stage(self.ds_config) == 3 else []
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
            if self.env.rank != 0:
                return
            write_export(folder, plm=self.model.encoders.plm, id_model=self.model.encoders.id_model, dense=dense,
                         tables=tables, hf_plm=True,
                         meta={"stage": self.stage.name, "config": self.cfg.to_dict(), "data": str(self.data_dir),
                               "steps": self.step, "dataset_fingerprint": self.identity["dataset"],
                               "runtime": "distributed", "world_size": self.env.world})


def worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker (its config is WorkerArgs.to_dict()); also runs under
    torchrun or as one process."""
    logging.basicConfig(level=logging.WARNING)
    args = WorkerArgs(**config)
    cfg = FlipConfig.from_dict(args.config)
    stage = get_stage(args.stage, cfg)
    rt = Runtime(cfg, stage, args.data_dir, args.run_dir)
    rt.build()
    if not stage.trains:
        metrics = rt.evaluate()
        rt.log.write(stage.name, 0, metrics)
        rt.report(metrics, checkpoint=False)
        rt.log.close()
        return
    resume = restart_checkpoint(cfg.dist.storage_path, stage.name, rt.identity) or args.resume
    if resume:
        rt.restore(resume)
    else:       # a fresh run: an earlier run's rows of this stage in the same folder are not its curves
        rt.log.rewind(stage.name, -1)
    result = rt.fit()
    if result["finished"]:
        rt.export(rt.run_dir / "export")
        if stage.evaluates_after:
            metrics = rt.evaluate()
            rt.log.write("evaluate", rt.step, metrics)
            rt.report(metrics, checkpoint=False)
    rt.log.close()
