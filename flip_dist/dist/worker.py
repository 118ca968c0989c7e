"""What each Ray Train worker runs: the FLIP pretraining / finetuning / evaluation loop with the
tables sharded by TorchRec (fused optimizer in backward) and the dense side (PLM + ID model +
heads) in a DeepSpeed engine. Same code on CPU (gloo) and GPU (nccl).

The step itself is flip_dist/train/steps.py, shared with the single-process loops. Differences
from one process, by design: the tables' fused optimizer updates rows during backward (before
DeepSpeed's step) and is outside DeepSpeed's gradient clipping and accumulation; the tables'
gradient is divided by the world size, so that it is the mean over the global batch like the
dense gradient that DeepSpeed averages."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from flip_dist.config import FlipConfig, _build
from flip_dist.data.batches import Batch, ShardReader
from flip_dist.data.stream import RankStream, list_shards
from flip_dist.dist.ds_config import load_ds_config, zero_stage
from flip_dist.dist.metrics_log import MetricsLog
from flip_dist.dist.sharding import (gather_table, has_table, load_nce_bias, set_sparse_lr, shard_sparse,
                                     write_rows)
from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.eval.metrics import CTRMetrics
from flip_dist.models.embedding import TABLE_NAME
from flip_dist.models.flip import NCE_TABLE, FlipFinetuneDense, FlipPretrainDense, FlipSparse, nce_bias
from flip_dist.models.objectives import objectives
from flip_dist.models.masking import RowShard
from flip_dist.models.sampling import AliasSampler
from flip_dist.train.checkpoint import (CKPT_MANIFEST, CheckpointError, digest_files,
                                       find_latest_checkpoint, load_rank_state, read_meta, run_identity,
                                       save_state_dicts,
                                       verify_checkpoint, write_checkpoint_manifest)
from flip_dist.train.local import build_encoders, dense_heads_state, load_training_state, warmup_cosine
from flip_dist.train.steps import TextIds, finetune_inputs, pretrain_inputs

log = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune", "evaluate")


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

    def __init__(self, cfg: FlipConfig, stage: str, data_dir: str, run_dir: str, resume: str | None) -> None:
        if stage not in STAGES:
            raise FlipConfigError(f"stage {stage!r}: one of {STAGES}")
        self.cfg, self.stage, self.data_dir = cfg, stage, Path(data_dir)
        self.tc = cfg.pretrain if stage == "pretrain" else cfg.finetune
        self.env = init_distributed(cfg.dist.use_gpu)
        self.run_dir = Path(run_dir)
        self.log = MetricsLog(self.run_dir, enabled=self.env.rank == 0)
        self.resume = resume
        from flip_dist.data.shards import read_manifest

        self.manifest = read_manifest(self.data_dir)
        self.identity = run_identity(cfg.to_dict(), stage, self.manifest)
        self.pad_id = int(self.manifest.get("text_pad_id") or 0)
        self.train: ShardReader | None = None
        self.stream: RankStream | None = None
        if stage != "evaluate" and cfg.dist.data == "exact":
            self.train = ShardReader(self.data_dir, "train")
        elif stage != "evaluate":
            self.stream = RankStream(list_shards(self.data_dir, "train"), self.env.rank, self.env.world,
                                     self.tc.batch_size, cfg.dist.shuffle_buffer_rows, self.tc.seed, self.pad_id)
        self.ledger = None
        if cfg.dist.sample_log and stage != "evaluate":     # which rows each step trained, for audits
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            self.ledger = open(self.run_dir / "samples" / f"rank{self.env.rank}.jsonl", "a", encoding="utf-8")
        world_batch = self.tc.batch_size * self.env.world
        self.steps_per_epoch = (self.manifest["num_train"] // self.env.world) // self.tc.batch_size
        if stage != "evaluate" and self.steps_per_epoch == 0:
            raise FlipConfigError(f"{stage}.batch_size={self.tc.batch_size} x {self.env.world} workers = {world_batch} "
                                  f"is more than the {self.manifest['num_train']} train rows")
        total = self.steps_per_epoch * self.tc.epochs
        self.total_steps = min(total, self.tc.max_steps) if self.tc.max_steps else total
        self.step = 0
        self.gen = torch.Generator(device=self.env.device).manual_seed(self.tc.seed)   # same on every rank
        torch.manual_seed(self.tc.seed + self.env.rank)

    # ------------------------------------------------------------------ model
    def build(self) -> None:
        cfg, m, env = self.cfg, self.manifest, self.env
        plm, id_model, info = build_encoders(cfg, m)
        self.plm, self.id_model, self.info = plm, id_model, info
        self.text = TextIds(int(m["text_mask_id"]), info.vocab_size)
        self.sparse = self.sampler = None
        if self.stage == "pretrain":
            obj = self.obj = objectives(self.tc.objectives)
            nce_dim = cfg.model.nce_dim if obj.mtm else None
            self.sparse = self._tables(nce_dim)
            counts = np.load(self.data_dir / "feature_counts.npy")
            if obj.mtm:
                self.sampler = AliasSampler(counts, device=env.device)
                load_nce_bias(self.sparse, NCE_TABLE, nce_bias(counts, cfg.model.nce_bias_init))
            dense: nn.Module = FlipPretrainDense(plm, id_model, info.hidden_size, info.vocab_size, m["num_fields"],
                                                 obj, cfg.model.nce_dim, cfg.model.mtm_hidden, cfg.model.icl_dim,
                                                 self.tc.tau, cfg.model.icl_norm)
            if self.tc.init:
                self._load_state(self.tc.init, "pretrain", dense)
        else:
            mode = self.tc.mode
            if self.stage == "evaluate" and self.tc.init:    # the mode the export was finetuned in
                mode = read_meta(self.tc.init).get("config", {}).get("finetune", {}).get("mode", mode)
            if mode != "flip_plm":
                self.sparse = self._tables(None)
            torch.manual_seed(self.tc.seed)   # the new layers from the seed alone, as in one process
            dense = FlipFinetuneDense(mode, id_model, plm, info.hidden_size)
            if self.stage == "evaluate" and not self.tc.init:
                raise FlipConfigError("evaluate needs finetune.init: a finetuning export folder")
            if self.tc.init:   # finetune starts from pretraining; evaluate loads a finetuned model
                self._load_state(self.tc.init, "pretrain" if self.stage == "finetune" else "finetune",
                                 dense if self.stage == "evaluate" else None)
        self.engine = self._engine(dense)

    def _tables(self, nce_dim: int | None) -> nn.Module:
        m, cfg = self.manifest, self.cfg
        return shard_sparse(lambda d: FlipSparse(m["num_features"], m["fields"], cfg.model.embed_dim, nce_dim, device=d),
                            cfg.dist, self.tc.embed_lr, dist.group.WORLD, self.env.device)

    def _engine(self, dense: nn.Module) -> Any:
        import deepspeed

        tc, dc = self.tc, self.cfg.dist
        params = [p for p in dense.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if self.stage == "pretrain" else torch.optim.Adam
        opt = opt_cls(params, lr=tc.lr, weight_decay=tc.weight_decay)
        # DeepSpeed steps the schedule once per optimizer step, i.e. every grad_accum micro-batches
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(max(self.total_steps // dc.grad_accum, 1), tc.warmup_ratio))
        self.ds_config = load_ds_config(dc.ds_config, micro_batch=tc.batch_size, world_size=self.env.world,
                                        grad_accum=dc.grad_accum, grad_clip=tc.grad_clip, precision=dc.precision)
        engine, _, _, _ = deepspeed.initialize(model=dense, optimizer=opt, lr_scheduler=sched, config=self.ds_config)
        self.dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
        return engine

    def _load_state(self, folder: str, expect: str, dense: nn.Module | None) -> None:
        def load_table(name: str, weight: torch.Tensor) -> None:
            if self.sparse is None or not has_table(self.sparse, name):
                return
            if weight.shape[0] != self.manifest["num_features"]:
                raise FlipDataError(f"table {name} has {weight.shape[0]} rows, the dataset "
                                    f"{self.manifest['num_features']} features: another dataset's?", path=str(folder))
            write_rows(self.sparse, name, lambda r0, n, c0, d: weight[r0:r0 + n, c0:c0 + d])
        load_training_state(folder, expect, self.plm, self.id_model, load_table, dense)

    # ------------------------------------------------------------------ data
    def _sparse_view(self) -> Any:
        return self.sparse.module if self.sparse is not None else None

    def batches(self, epoch: int, skip: int) -> Iterator[Batch]:
        """This rank's batches of one epoch from batch `skip` on: a function of (seed, epoch, rank)
        alone, so a resumed run trains exactly what the uninterrupted one would have."""
        if self.stream is not None:      # ray: this rank's seeded share, streamed by Ray Data
            yield from self.stream.batches(epoch, skip)
            return
        B, env = self.tc.batch_size, self.env  # exact: the single process's global batches, sliced
        for i, idx in enumerate(self.train.batch_indices(B * env.world, shuffle=True, seed=self.tc.seed + epoch,
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
                    v = _ScaleGrad.apply(v, 1.0 / self.env.world)
                out[k] = v.to(self.dtype)
        return out

    def pretrain_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        tc = self.tc
        batch = batch.to(self.env.device)
        inputs = pretrain_inputs(batch, self._sparse_view(), self.sampler, self.obj, tc.r_text, tc.r_tab,
                                 tc.num_noise, self.text, self.gen, self.env.shard)
        losses = self.engine(**self._to_engine(inputs))
        self.engine.backward(losses["total"])
        return losses

    def finetune_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        batch = batch.to(self.env.device)
        out = self.engine(**self._to_engine(finetune_inputs(batch, self._sparse_view())))
        self.engine.backward(out["loss"])
        return {k: v for k, v in out.items() if k.startswith("loss")}

    def fit(self) -> dict[str, Any]:
        """Train to total_steps (or stop_after steps of this run), reporting and checkpointing."""
        step_fn = self.pretrain_step if self.stage == "pretrain" else self.finetune_step
        accum = self.cfg.dist.grad_accum      # steps below count micro-batches
        factor = warmup_cosine(max(self.total_steps // accum, 1), self.tc.warmup_ratio)
        dc, start = self.cfg.dist, self.step
        stop = min(self.total_steps, start + dc.stop_after) if dc.stop_after else self.total_steps
        data = self._positions()
        t0, seen, last = time.perf_counter(), 0, {}
        from tqdm.auto import tqdm

        bar = tqdm(total=stop, initial=start, desc=f"{self.stage}[rank {self.env.rank}]", unit="step",
                   disable=self.env.rank != 0)
        while self.step < stop:
            batch = next(data, None)
            if not _all_have(batch is not None, self.env.device):
                raise FlipDataError(f"{self.stage} ran out of training data at step {self.step} of {stop}: the "
                                    f"shards hold fewer rows than the manifest's num_train="
                                    f"{self.manifest['num_train']}", path=str(self.data_dir / "train"))
            if self.sparse is not None:
                set_sparse_lr(self.sparse, self.tc.embed_lr * factor(self.step // accum))
            losses = step_fn(batch)
            if hasattr(self.sparse, "after_backward"):     # replicated tables: a plain optimizer
                self.sparse.after_backward()
            self.engine.step()
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
                self.log.write(self.stage, self.step, row)
                checkpoint = self.step == stop or (dc.checkpoint_every and self.step % dc.checkpoint_every == 0)
                self.report(row, checkpoint=bool(checkpoint))
            elif dc.checkpoint_every and self.step % dc.checkpoint_every == 0:
                self.report(last, checkpoint=True)
        bar.close()
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
        for idx in reader.batch_indices(self.tc.eval_batch_size * env.world, max_rows=self.tc.eval_rows):
            per = -(-len(idx) // env.world)
            padded = np.concatenate([idx, np.repeat(idx[-1:], per * env.world - len(idx))])
            valid = max(0, min(per, len(idx) - env.rank * per))
            batch = reader.take(padded[env.rank * per:(env.rank + 1) * per]).to(env.device)
            out = self.engine(**self._to_engine(finetune_inputs(batch, self._sparse_view())))
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
        metrics = {**metrics, "step": self.step, "stage": self.stage}
        if not _under_ray_train():
            if checkpoint:
                self._save_checkpoint_locally()
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

    def _save_checkpoint_locally(self) -> None:
        """Outside Ray Train (torchrun, one-GPU checks): run_dir/checkpoints/step-N, written into a
        hidden folder every rank shares, renamed when all have finished (never over a folder that
        holds no checkpoint manifest)."""
        from flip_dist.io_atomic import check_replaceable

        final = self.run_dir / "checkpoints" / f"step-{self.step:08d}"
        tmp = final.parent / f".{final.name}.tmp"
        if self.env.rank == 0:
            check_replaceable(final, CKPT_MANIFEST)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        self.save_checkpoint(tmp, shared=True)
        dist.barrier()
        if self.env.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)

    def save_checkpoint(self, folder: Path, shared: bool) -> None:
        """Every rank writes its files (the table shards, its part of the engine state, its RNGs);
        then the digests of all ranks' files go into one manifest, which rank 0 writes last.
        `shared`: all ranks write into the same folder (else each into its own, merged by Ray)."""
        import torch.distributed.checkpoint as dcp

        if self.sparse is not None:
            dcp.save({"tables": self.sparse.state_dict(), "optim": self.sparse.fused_optimizer.state_dict()},
                     checkpoint_id=str(folder / "sparse"))
        self.engine.save_checkpoint(str(folder / "dense"), tag="state")
        torch.save({"step": torch.tensor(self.step), "generator": self.gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    **({"cuda_rng": torch.cuda.get_rng_state()} if self.env.device.type == "cuda" else {})},
                   folder / f"rank{self.env.rank}.pt")
        dist.barrier()
        mine = digest_files(folder) if not shared or self.env.rank == 0 else {}
        everyone: list[Any] = [None] * self.env.world
        dist.all_gather_object(everyone, mine)
        files: dict[str, Any] = {}
        for digests in everyone:
            for rel, digest in digests.items():
                if files.setdefault(rel, digest) != digest:
                    raise CheckpointError(f"two ranks wrote {rel} with different contents", path=str(folder))
        if self.env.rank == 0:
            write_checkpoint_manifest(folder, {
                "stage": self.stage, "step": self.step, "total_steps": self.total_steps,
                "world_size": self.env.world, "zero_stage": zero_stage(self.ds_config),
                "sharding": self.cfg.dist.sharding, "data": str(self.data_dir), "identity": self.identity,
                "config": asdict(self.cfg)}, files)

    def restore(self, folder: str | Path) -> None:
        """Continue from a checkpoint: verified file by file before anything pickled in it is read."""
        import torch.distributed.checkpoint as dcp

        path = Path(folder)
        manifest = verify_checkpoint(path)
        check_resumable(manifest, path, self.stage, self.env.world, self.identity)
        if self.sparse is not None:
            state = {"tables": self.sparse.state_dict(), "optim": self.sparse.fused_optimizer.state_dict()}
            dcp.load(state, checkpoint_id=str(path / "sparse"))
            self.sparse.load_state_dict(state["tables"])
            self.sparse.fused_optimizer.load_state_dict(state["optim"])
        load_path, _ = self.engine.load_checkpoint(str(path / "dense"), tag="state")
        if load_path is None:
            raise CheckpointError("DeepSpeed found no engine state", path=str(path / "dense"))
        mine = load_rank_state(path, self.env.rank)
        self.step = int(mine["step"])
        self.gen.set_state(mine["generator"])
        torch.set_rng_state(mine["torch_rng"])
        if "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"])
        self.log.rewind(self.stage, self.step)      # the steps after the checkpoint are trained again

    # ------------------------------------------------------------------ export
    def export(self, folder: Path) -> None:
        """Plain files other tools start from: the PLM as a Hugging Face folder and state dicts
        (the whole tables gathered from their shards) in the single-process checkpoint format."""
        import deepspeed

        tables = {name: gather_table(self.sparse, table) for name, table in (("embedding", TABLE_NAME), ("nce", NCE_TABLE))
                  if self.sparse is not None and has_table(self.sparse, table)}
        dense = self.engine.module
        params = list(dense.parameters()) if zero_stage(self.ds_config) == 3 else []
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
            if self.env.rank != 0:
                return
            states = {"plm": self.plm.state_dict(), "id_model": self.id_model.state_dict(),
                      "heads": dense_heads_state(dense)}
            for name, table in (("embedding", TABLE_NAME), ("nce", NCE_TABLE)):
                if name in tables:
                    states[name] = {f"ebc.embedding_bags.{table}.weight": tables[name]}

            def hf(tmp: Path) -> None:   # fp32 copies: the engine keeps training/evaluating its bf16 module
                self.plm.save_pretrained(str(tmp / "plm_hf"), state_dict={k: v.float() for k, v in states["plm"].items()})

            save_state_dicts(folder, states, {"stage": self.stage, "config": asdict(self.cfg),
                                              "data": str(self.data_dir), "steps": self.step,
                                              "dataset_fingerprint": self.identity["dataset"],
                                              "runtime": "distributed", "world_size": self.env.world}, extra=hf)


def check_resumable(manifest: dict[str, Any], path: Path, stage: str, world: int, identity: dict[str, str]) -> None:
    """A verified checkpoint may be resumed by this run: same stage, same number of workers (ZeRO's
    optimizer partitions do not re-shard), same dataset. Another config only warns (an explicit
    resume may change e.g. the number of steps on purpose; `latest` never picks such a checkpoint)."""
    if manifest["stage"] != stage:
        raise CheckpointError(f"checkpoint is from {manifest['stage']}, not {stage}", path=str(path))
    if manifest["world_size"] != world:
        raise CheckpointError(
            f"checkpoint was written by {manifest['world_size']} workers, this run has {world}: the tables "
            "would re-shard, but DeepSpeed ZeRO's optimizer partitions do not. Resume with "
            f"dist.num_workers={manifest['world_size']}, or start a new run from an export.", path=str(path))
    theirs = manifest.get("identity", {})
    if theirs.get("dataset") != identity["dataset"]:
        raise CheckpointError(f"checkpoint belongs to another dataset (fingerprint {theirs.get('dataset')}, this "
                              f"run's data {identity['dataset']}): its tables index another vocabulary", path=str(path))
    if theirs.get("config") != identity["config"]:
        log.warning("checkpoint %s was written with another config than this run's; resuming it as asked", path)


def _restart_checkpoint(cfg: FlipConfig, stage: str, identity: dict[str, str]) -> Any:
    """After a worker-group restart, Ray Train hands every worker the last checkpoint all ranks
    reported. If it does not verify, the newest good one of this dataset and config is taken."""
    if not _under_ray_train():
        return None
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    try:
        verify_checkpoint(ckpt.path)
        return ckpt.path
    except (CheckpointError, OSError) as e:
        log.warning("the checkpoint Ray Train restored does not verify (%s); looking for an older one", e)
        found = find_latest_checkpoint(cfg.dist.storage_path, stage, identity)
        if found is None:
            raise CheckpointError("no checkpoint of this run verifies; cannot continue after the restart",
                                  path=str(ckpt.path)) from e
        return str(found)


def worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker; also runs under torchrun or as one process."""
    logging.basicConfig(level=logging.WARNING)
    cfg = _build(FlipConfig, config["config"], "").validate()
    rt = Runtime(cfg, config["stage"], config["data_dir"], config["run_dir"], config.get("resume"))
    rt.build()
    if rt.stage == "evaluate":
        metrics = rt.evaluate()
        rt.log.write("evaluate", 0, metrics)
        rt.report(metrics, checkpoint=False)
        rt.log.close()
        return
    resume = _restart_checkpoint(rt.cfg, rt.stage, rt.identity) or rt.resume
    if resume:
        rt.restore(resume)
    result = rt.fit()
    if rt.ledger is not None:
        rt.ledger.close()
    if result["finished"]:
        rt.export(rt.run_dir / "export")
        if rt.stage == "finetune":
            metrics = rt.evaluate()
            rt.log.write("evaluate", rt.step, metrics)
            rt.report(metrics, checkpoint=False)
    rt.log.close()
