"""Integrity of resumable checkpoints.

A resumable checkpoint holds files only pickle can read (torch.distributed.checkpoint's metadata,
DeepSpeed's engine and optimizer states). Those are loaded only after every file matches the
SHA-256 that the manifest recorded when the checkpoint was written, and the manifest matches its
own digest: a truncated or corrupted checkpoint is refused by name before anything is unpickled.
That guards against damage, not against someone who can rewrite the whole folder: resume only
checkpoints that you or your cluster wrote (README, "Trust boundary")."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from flip_dist.errors import FlipDataError
from flip_dist.io_atomic import sha256_file, write_json_atomic

CKPT_MANIFEST = "flip_checkpoint.json"


class CheckpointError(FlipDataError):
    """A checkpoint that is incomplete, damaged, or not this run's."""


def json_digest(obj: Any) -> str:
    """SHA-256 of a JSON value, keys sorted: the same value gives the same digest anywhere."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _files(folder: Path, exclude: tuple[str, ...]) -> list[str]:
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*"))
            if p.is_file() and str(p.relative_to(folder)) not in exclude]


def digest_files(folder: str | Path, exclude: tuple[str, ...] = (CKPT_MANIFEST,)) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, bytes}} of every file under `folder` but the `exclude`d top-level ones."""
    folder = Path(folder)
    return {rel: {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}
            for rel in _files(folder, exclude)}


def write_checkpoint_manifest(folder: str | Path, body: dict[str, Any], files: dict[str, dict[str, Any]]) -> None:
    """The manifest: `body` (stage, step, identity...), every file's digest, and its own digest."""
    sealed = {**body, "files": files}
    write_json_atomic(Path(folder) / CKPT_MANIFEST, {**sealed, "manifest_sha256": json_digest(sealed)})


def read_checkpoint_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest after checking its own digest (not yet the files': verify_checkpoint)."""
    path = Path(folder) / CKPT_MANIFEST
    if not path.is_file():
        raise CheckpointError(f"not a flip_dist checkpoint (no {CKPT_MANIFEST})", path=str(folder))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        claimed = manifest.pop("manifest_sha256")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint manifest is damaged ({type(e).__name__})", path=str(path)) from None
    if claimed != json_digest(manifest):
        raise CheckpointError("checkpoint manifest does not match its own digest (damaged or edited)", path=str(path))
    return manifest


def verify_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The manifest of a complete, undamaged checkpoint; else a CheckpointError naming the file."""
    folder = Path(folder)
    manifest = read_checkpoint_manifest(folder)
    for rel, want in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError("checkpoint file is missing", path=str(path))
        if path.stat().st_size != want["bytes"]:
            raise CheckpointError(f"checkpoint file has {path.stat().st_size} bytes, the manifest says "
                                  f"{want['bytes']} (truncated?)", path=str(path))
        if sha256_file(path) != want["sha256"]:
            raise CheckpointError("checkpoint file does not match its SHA-256 in the manifest (damaged)",
                                  path=str(path))
    unlisted = sorted(set(_files(folder, (CKPT_MANIFEST,))) - set(manifest["files"]))
    if unlisted:
        raise CheckpointError(f"checkpoint holds files its manifest does not list: {unlisted[:5]}", path=str(folder))
    return manifest


def load_rank_state(folder: str | Path, rank: int) -> dict[str, Any]:
    """A rank's own state (step, RNG states): tensors and plain values only (weights_only=True), so
    even a checkpoint whose manifest was forged cannot run code through this file."""
    path = Path(folder) / f"rank{rank}.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:       # pickle.UnpicklingError for anything but tensors and plain values
        raise CheckpointError(f"refused to load ({type(e).__name__}: {str(e)[:300]})", path=str(path)) from None


