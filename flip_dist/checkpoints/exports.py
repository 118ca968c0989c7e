"""Exports: what a finished stage leaves for the next one and for other tools, in one format for
both runtimes. Plain state dicts (one `<name>.pt` a module, floating tensors as fp32) loaded with
weights_only=True, never unpickling arbitrary objects, and meta.json with each file's SHA-256;
written into a temporary folder that replaces the old export in one rename."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flip_dist.checkpoints.identity import dataset_fingerprint
from flip_dist.checkpoints.integrity import CheckpointError, digest_files
from flip_dist.data.manifest import Manifest
from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.io_atomic import atomic_output_dir, sha256_file
from flip_dist.models.embedding import TABLE_NAME
from flip_dist.models.flip import NCE_TABLE

META = "meta.json"
# Export file name -> the TorchRec table it holds, whole (the distributed runtime gathers its shards).
TABLE_FILES = {"embedding": TABLE_NAME, "nce": NCE_TABLE}
# Loads a whole table into a runtime's tables, which may be sharded: (table name, full weight).
TableLoader = Callable[[str, torch.Tensor], None]


def save_state_dicts(folder: str | Path, states: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any],
                     extra: Callable[[Path], None] | None = None) -> Path:
    """One `<name>.pt` a module and meta.json; `extra(tmp)` may add files (a Hugging Face folder)
    before the rename makes the whole folder appear at once."""
    with atomic_output_dir(folder, overwrite=True, marker=META) as tmp:
        for name, state in states.items():
            torch.save({k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu())
                        for k, v in state.items()}, tmp / f"{name}.pt")
        if extra is not None:
            extra(tmp)
        (tmp / META).write_text(json.dumps({**meta, "modules": sorted(states),
                                            "files": digest_files(tmp, exclude=(META,))}, indent=2))
    return Path(folder)


def dense_heads_state(dense: nn.Module) -> dict[str, torch.Tensor]:
    """The dense module's own layers (heads, alpha), without the two encoders saved apart."""
    return {k: v for k, v in dense.state_dict().items() if not k.startswith(("plm.", "id_model."))}


def write_export(folder: str | Path, *, plm: nn.Module, id_model: nn.Module, dense: nn.Module,
                 tables: dict[str, torch.Tensor], meta: dict[str, Any], hf_plm: bool = False) -> Path:
    """The export of a stage: the encoders, the heads, the whole tables ({export name: weight}) and
    `meta`; `hf_plm` adds the PLM as a Hugging Face folder (`plm_hf/`, fp32) for other tools."""
    states = {"plm": plm.state_dict(), "id_model": id_model.state_dict(), "heads": dense_heads_state(dense)}
    for name, weight in tables.items():
        states[name] = {f"ebc.embedding_bags.{TABLE_FILES[name]}.weight": weight}

    def hf(tmp: Path) -> None:   # fp32 copies: a bf16 engine keeps training/evaluating its own module
        plm.save_pretrained(str(tmp / "plm_hf"), state_dict={k: v.float() for k, v in states["plm"].items()})

    return save_state_dicts(folder, states, meta, extra=hf if hf_plm else None)


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META
    if not path.is_file():
        raise FlipDataError("not a flip_dist checkpoint (no meta.json)", path=str(folder))
    return json.loads(path.read_text())


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


def load_module(folder: str | Path, name: str, module: nn.Module, strict: bool = True) -> None:
    path = Path(folder) / f"{name}.pt"
    if not path.is_file():
        raise FlipDataError(f"checkpoint has no {name}.pt", path=str(folder))
    state = load_state_file(folder, f"{name}.pt")
    missing, unexpected = module.load_state_dict(state, strict=strict)
    if strict and (missing or unexpected):
        raise FlipDataError(f"{name}: missing {missing}, unexpected {unexpected}", path=str(path))


def check_export(folder: str | Path, expect: str, manifest: Manifest, label: str) -> dict[str, Any]:
    """The meta of an export a stage starts from (`label`, e.g. 'finetune.init'), after checking
    that the stage `expect` wrote it, on this dataset (its tables index this vocabulary)."""
    meta = read_meta(folder)
    if meta.get("stage") != expect:
        raise FlipConfigError(f"{label} {folder} is a {meta.get('stage')!r} checkpoint, expected {expect!r}")
    theirs = meta.get("dataset_fingerprint")
    if theirs is not None and theirs != dataset_fingerprint(manifest):
        raise FlipConfigError(f"{label} {folder} was trained on another dataset ({meta.get('data')}): "
                              "its tables index another vocabulary than this run's data")
    return meta


def load_export(folder: str | Path, plm: nn.Module, id_model: nn.Module, load_table: TableLoader,
                dense: nn.Module | None) -> None:
    """Start from an export (single-process or distributed: the same files): the encoders, the
    tables through `load_table` (which may write into shards) and, given `dense` and when the
    export has them, its heads (continued pretraining; evaluating a finetuned model)."""
    load_module(folder, "plm", plm)
    load_module(folder, "id_model", id_model)
    for name, table in TABLE_FILES.items():
        if (Path(folder) / f"{name}.pt").is_file():
            state = load_state_file(folder, f"{name}.pt")
            load_table(table, state[f"ebc.embedding_bags.{table}.weight"])
    if dense is not None and (Path(folder) / "heads.pt").is_file():
        load_module(folder, "heads", dense, strict=False)
