"""Reading a processed dataset folder back: manifest, shard lists, vocabulary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flip_dist.errors import FlipDataError

MANIFEST = "manifest.json"
REQUIRED_KEYS = ("dataset", "num_samples", "num_train", "num_test", "num_fields", "num_features",
                 "fields", "tokenizer", "max_length")


def shard_files(folder: str | Path, split: str) -> list[str]:
    return sorted(str(p) for p in (Path(folder) / split).glob("*.parquet"))


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FlipDataError("no manifest.json: not a processed dataset (or an unfinished one)", path=str(folder))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FlipDataError(f"manifest is not valid JSON: {e}", path=str(path)) from e
    for key in REQUIRED_KEYS:
        if key not in manifest:
            raise FlipDataError("manifest lacks a required key", path=str(path), key=key)
    return manifest
