"""Checkpoints and exports.

Exports (and single-process checkpoints): plain state dicts loaded with weights_only=True (never
unpickling arbitrary objects), with meta.json, written to a temporary folder and renamed into place.
Resumable distributed checkpoints: a manifest of SHA-256 digests that is checked before any of their
pickled files is loaded, and the identity (dataset, config) that decides which run may resume them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flip_dist.errors import FlipDataError
from flip_dist.io_atomic import atomic_output_dir, sha256_file

META = "meta.json"


def save_state_dicts(folder: str | Path, states: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any],
                     extra: Any = None) -> Path:
    """One `<name>.pt` a module (floating tensors as fp32) and meta.json; `extra(tmp)` may add
    files (a Hugging Face folder) before the rename makes the whole folder appear at once."""
    with atomic_output_dir(folder, overwrite=True, marker=META) as tmp:
        for name, state in states.items():
            torch.save({k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu())
                        for k, v in state.items()}, tmp / f"{name}.pt")
        if extra is not None:
            extra(tmp)
        (tmp / META).write_text(json.dumps({**meta, "modules": sorted(states),
                                            "files": digest_files(tmp, exclude=(META,))}, indent=2))
    return Path(folder)


# Keys that do not change what a run computes: where it writes, how often it reports, how it is resumed.
_VOLATILE = {"dist": {"log_every", "checkpoint_every", "keep_checkpoints", "storage_path", "resume", "stop_after",
                      "max_failures", "sample_log", "cpus_per_worker"},
             "stage": {"out_dir", "eval_batch_size", "eval_rows"}}
_VOLATILE_MANIFEST = {"timings", "started_at_unix", "raw_dir", "tokenizer"}


def _json_digest(obj: Any) -> str:
    """SHA-256 of a JSON value, keys sorted: the same value gives the same digest anywhere."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _fingerprint(obj: Any) -> str:
    return _json_digest(obj)[:16]


def dataset_fingerprint(manifest: dict[str, Any]) -> str:
    """Same for the same processed data wherever it lies (paths and timings left out)."""
    return _fingerprint({k: v for k, v in manifest.items() if k not in _VOLATILE_MANIFEST})


def run_identity(config: dict[str, Any], stage: str, manifest: dict[str, Any]) -> dict[str, str]:
    """What a checkpoint must share with a run to be resumed by it: the dataset, and the config of
    the model, the stage and the runtime's layout (not where it writes or how often it reports)."""
    section = "pretrain" if stage == "pretrain" else "finetune"
    relevant = {"model": config["model"],
                section: {k: v for k, v in config[section].items() if k not in _VOLATILE["stage"]},
                "dist": {k: v for k, v in config["dist"].items() if k not in _VOLATILE["dist"]}}
    return {"dataset": dataset_fingerprint(manifest), "config": _fingerprint(relevant)}


def load_module(folder: str | Path, name: str, module: nn.Module, strict: bool = True) -> None:
    path = Path(folder) / f"{name}.pt"
    if not path.is_file():
        raise FlipDataError(f"checkpoint has no {name}.pt", path=str(folder))
    state = load_state_file(folder, f"{name}.pt")
    missing, unexpected = module.load_state_dict(state, strict=strict)
    if strict and (missing or unexpected):
        raise FlipDataError(f"{name}: missing {missing}, unexpected {unexpected}", path=str(path))


def load_state_file(folder: str | Path, name: str) -> dict[str, torch.Tensor]:
    """A state dict of an export, after its digest in meta.json (where the export has one) matches:
    a truncated file is named as such rather than failing inside torch.load."""
    path = Path(folder) / name
    want = read_meta(folder).get("files", {}).get(name)
    if want is not None and (path.stat().st_size != want["bytes"] or sha256_file(path) != want["sha256"]):
        raise CheckpointError("export file does not match its SHA-256 in meta.json (damaged or truncated)",
                              path=str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:       # an older export without digests, damaged: say which file
        raise CheckpointError(f"could not load ({type(e).__name__}: {str(e)[:200]})", path=str(path)) from None


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META
    if not path.is_file():
        raise FlipDataError("not a flip_dist checkpoint (no meta.json)", path=str(folder))
    return json.loads(path.read_text())


# ---------------------------------------------------------------- resumable checkpoints: integrity
# A resumable checkpoint holds files only pickle can read (torch.distributed.checkpoint's metadata,
# DeepSpeed's engine and optimizer states). Those are loaded only after every file matches the
# SHA-256 that the manifest recorded when the checkpoint was written, and the manifest matches its
# own digest: a truncated or corrupted checkpoint is refused by name before anything is unpickled.
# That guards against damage, not against someone who can rewrite the whole folder: resume only
# checkpoints that you or your cluster wrote (README, "Trust boundary").
CKPT_MANIFEST = "flip_checkpoint.json"


class CheckpointError(FlipDataError):
    """A checkpoint that is incomplete, damaged, or not this run's."""


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
    from flip_dist.io_atomic import write_json_atomic

    sealed = {**body, "files": files}
    write_json_atomic(Path(folder) / CKPT_MANIFEST, {**sealed, "manifest_sha256": _json_digest(sealed)})


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
    if claimed != _json_digest(manifest):
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


def find_latest_checkpoint(storage: str | Path, stage: str, identity: dict[str, str]) -> Path | None:
    """The newest checkpoint under a Ray Train storage folder (`<run>/checkpoint_*`) of this stage
    and identity (dataset and config fingerprints) that verifies. Damaged ones are skipped, each
    named in a warning; checkpoints of another dataset or config are not considered."""
    import logging

    log = logging.getLogger(__name__)
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
