"""Single-process checkpoints: plain state dicts loaded with weights_only=True (never unpickling
arbitrary objects), written to a temporary folder and renamed into place."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flip_dist.errors import FlipDataError
from flip_dist.io_atomic import atomic_output_dir

META = "meta.json"


def save_state_dicts(folder: str | Path, states: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any],
                     extra: Any = None) -> Path:
    """One `<name>.pt` a module (floating tensors as fp32) and meta.json; `extra(tmp)` may add
    files (a Hugging Face folder) before the rename makes the whole folder appear at once."""
    with atomic_output_dir(folder, overwrite=True) as tmp:
        for name, state in states.items():
            torch.save({k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu())
                        for k, v in state.items()}, tmp / f"{name}.pt")
        if extra is not None:
            extra(tmp)
        (tmp / META).write_text(json.dumps({**meta, "modules": sorted(states)}, indent=2))
    return Path(folder)


def load_module(folder: str | Path, name: str, module: nn.Module, strict: bool = True) -> None:
    path = Path(folder) / f"{name}.pt"
    if not path.is_file():
        raise FlipDataError(f"checkpoint has no {name}.pt", path=str(folder))
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = module.load_state_dict(state, strict=strict)
    if strict and (missing or unexpected):
        raise FlipDataError(f"{name}: missing {missing}, unexpected {unexpected}", path=str(path))


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META
    if not path.is_file():
        raise FlipDataError("not a flip_dist checkpoint (no meta.json)", path=str(folder))
    return json.loads(path.read_text())
