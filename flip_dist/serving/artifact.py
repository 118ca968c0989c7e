"""The serving artifact's layout, and loading it with torch alone.

A folder with `model.pt` (TorchScript; its spec rides inside as a torch.jit extra file, so the
.pt alone still says what it takes) and `serving.json` (the same spec plus the .pt's SHA-256).
torch.jit.load runs the file's TorchScript code: load only artifacts you or your pipeline wrote.
Imports torch, json and flip_dist.errors only: the scoring side must not pull in training code."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from flip_dist.errors import FlipDataError
from flip_dist.io_atomic import sha256_file

MODEL_FILE = "model.pt"
SERVING_JSON = "serving.json"
SPEC_ENTRY = "serving_spec.json"
FORMAT = "flip_dist.serving.flip_id/1"


def _check_digest(pt: Path, info_path: Path) -> None:
    """A damaged or replaced model.pt is named before torch.jit.load reads it."""
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info.get("model_file", MODEL_FILE) != pt.name:
        return
    if pt.stat().st_size != info.get("bytes") or sha256_file(pt) != info.get("sha256"):
        raise FlipDataError(f"does not match the SHA-256 in {info_path.name} (damaged, truncated or replaced)",
                            path=str(pt))


def load_artifact(model: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """(module in eval mode, spec) of a serving folder or its model.pt."""
    path = Path(model)
    pt = path / MODEL_FILE if path.is_dir() else path
    if not pt.is_file():
        raise FlipDataError(f"no serving model here (want a folder written by export-id, or its {MODEL_FILE})",
                            path=str(path))
    if (pt.parent / SERVING_JSON).is_file():
        _check_digest(pt, pt.parent / SERVING_JSON)
    extra = {SPEC_ENTRY: ""}
    try:
        module = torch.jit.load(str(pt), map_location="cpu", _extra_files=extra)
    except Exception as e:      # not TorchScript, or damaged without a serving.json to say so
        raise FlipDataError(f"cannot be loaded as TorchScript ({type(e).__name__}: {str(e)[:200]})",
                            path=str(pt)) from None
    spec = json.loads(extra[SPEC_ENTRY]) if extra[SPEC_ENTRY] else {}
    if spec.get("format") != FORMAT:
        raise FlipDataError(f"not a flip_dist serving model (format {spec.get('format')!r}, want {FORMAT!r})",
                            path=str(pt))
    return module.eval(), spec
