"""Resumable checkpoints of the distributed runtime: what each rank writes and reads back, how a
checkpoint is published outside Ray Train, and which checkpoint a run continues from (an explicit
folder, `latest`, or the one Ray Train hands a restarted worker group). Every one is verified file
by file (flip_dist.checkpoints.integrity) before anything pickled in it is read."""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from flip_dist.checkpoints.identity import check_resumable
from flip_dist.checkpoints.integrity import (
    CKPT_MANIFEST,
    CheckpointError,
    digest_files,
    load_rank_state,
    read_checkpoint_manifest,
    verify_checkpoint,
    write_checkpoint_manifest,
)
from flip_dist.errors import FlipConfigError
from flip_dist.io_atomic import atomic_output_dir

log = logging.getLogger(__name__)


def save_resumable(folder: Path, *, sparse: nn.Module | None, engine: Any, rank_state: dict[str, Any],
                   shared: bool, body: dict[str, Any]) -> None:
    """Every rank writes its files (the table shards and their fused optimizer through
    torch.distributed.checkpoint, its part of the DeepSpeed engine state, `rank_state`: its step
    and RNGs); then the digests of all ranks' files go into one manifest (`body` plus the files),
    which rank 0 writes last. `shared`: all ranks write into the same folder (else each into its
    own, merged by Ray Train)."""
    import torch.distributed.checkpoint as dcp

    rank, world = dist.get_rank(), dist.get_world_size()
    if sparse is not None:
        dcp.save({"tables": sparse.state_dict(), "optim": sparse.fused_optimizer.state_dict()},
                 checkpoint_id=str(folder / "sparse"))
    engine.save_checkpoint(str(folder / "dense"), tag="state")
    torch.save(rank_state, folder / f"rank{rank}.pt")
    dist.barrier()
    mine = digest_files(folder) if not shared or rank == 0 else {}
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    files: dict[str, Any] = {}
    for digests in everyone:
        for rel, digest in digests.items():
            if files.setdefault(rel, digest) != digest:
                raise CheckpointError(f"two ranks wrote {rel} with different contents", path=str(folder))
    if rank == 0:
        write_checkpoint_manifest(folder, {**body, "world_size": world}, files)


def publish_resumable(final: Path, save: Callable[[Path], None]) -> None:
    """Outside Ray Train (torchrun, one-GPU checks): every rank saves into one hidden folder
    (`save(tmp)`), which replaces `final` in one rename when all have finished, never over a
    folder that holds no checkpoint manifest."""
    rank = dist.get_rank()
    with ExitStack() as stack:
        tmp = [stack.enter_context(atomic_output_dir(final, overwrite=True, marker=CKPT_MANIFEST))
               if rank == 0 else None]
        dist.broadcast_object_list(tmp, src=0)
        save(Path(tmp[0]))
        dist.barrier()


def restore_resumable(folder: str | Path, *, sparse: nn.Module | None, engine: Any, stage: str,
                      identity: dict[str, str]) -> dict[str, Any]:
    """Load a checkpoint into this rank's tables and engine, after verifying it file by file and
    checking this run may resume it; returns the rank's own state (step, RNGs)."""
    import torch.distributed.checkpoint as dcp

    path = Path(folder)
    manifest = verify_checkpoint(path)
    check_resumable(manifest, path, stage, dist.get_world_size(), identity)
    if sparse is not None:
        state = {"tables": sparse.state_dict(), "optim": sparse.fused_optimizer.state_dict()}
        dcp.load(state, checkpoint_id=str(path / "sparse"))
        sparse.load_state_dict(state["tables"])
        sparse.fused_optimizer.load_state_dict(state["optim"])
    load_path, _ = engine.load_checkpoint(str(path / "dense"), tag="state")
    if load_path is None:
        raise CheckpointError("DeepSpeed found no engine state", path=str(path / "dense"))
    return load_rank_state(path, dist.get_rank())


def resolve_resume(resume: str | None, storage: str | Path, stage: str, world: int,
                   identity: dict[str, str]) -> str | None:
    """The checkpoint to continue from (the driver, before workers start), verified and checked to
    belong to this run (stage, workers, dataset): `latest` is the newest good one of this dataset
    and config under the storage folder, skipping damaged ones by name; a folder is taken as given."""
    if not resume:
        return None
    storage = Path(storage).resolve()
    if resume == "latest":
        found = find_latest_checkpoint(storage, stage, identity)
        if found is None:
            raise FlipConfigError(f"dist.resume=latest: no complete {stage} checkpoint of this dataset and config "
                                  f"under {storage}")
        resume = str(found)
    path = Path(resume).resolve()
    check_resumable(verify_checkpoint(path), path, stage, world, identity)
    return str(path)


def restart_checkpoint(storage: str | Path, stage: str, identity: dict[str, str]) -> str | None:
    """After a worker-group restart, Ray Train hands every worker the last checkpoint all ranks
    reported (None on a first start or outside Ray Train). If it does not verify, the newest good
    one of this dataset and config is taken."""
    try:
        import ray.train

        ckpt = ray.train.get_checkpoint()
    except Exception:       # no Ray installed, or not inside a Ray Train worker
        return None
    if ckpt is None:
        return None
    try:
        verify_checkpoint(ckpt.path)
        return ckpt.path
    except (CheckpointError, OSError) as e:
        log.warning("the checkpoint Ray Train restored does not verify (%s); looking for an older one", e)
        found = find_latest_checkpoint(storage, stage, identity)
        if found is None:
            raise CheckpointError("no checkpoint of this run verifies; cannot continue after the restart",
                                  path=str(ckpt.path)) from e
        return str(found)


def find_latest_checkpoint(storage: str | Path, stage: str, identity: dict[str, str]) -> Path | None:
    """The newest checkpoint under a Ray Train storage folder (`<run>/checkpoint_*`) of this stage
    and identity (dataset and config fingerprints) that verifies. Damaged ones are skipped, each
    named in a warning; checkpoints of another dataset or config are not considered."""
    candidates = []
    for folder in Path(storage).glob("*/checkpoint_*"):
        if not folder.is_dir():
            continue
        try:
            manifest = read_checkpoint_manifest(folder)
        except CheckpointError as e:
            if (folder / CKPT_MANIFEST).exists():
                log.warning("skipping checkpoint: %s", e)
            continue
        if manifest.get("stage") == stage and manifest.get("identity") == identity:
            candidates.append((manifest["step"], (folder / CKPT_MANIFEST).stat().st_mtime, folder))
    for _, _, folder in sorted(candidates, key=lambda c: (c[1], c[0]), reverse=True):
        try:
            verify_checkpoint(folder)
            return folder
        except CheckpointError as e:
            log.warning("skipping damaged checkpoint: %s", e)
    return None
