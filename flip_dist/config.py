"""Typed, validated configuration, loaded from YAML (safe loading) with dotted overrides.

One place checks every key: unknown keys, wrong types and out-of-range values fail with a
FlipConfigError that names the key. Experiments live in YAML files (ray_jobs/configs/)."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from flip_dist.errors import FlipConfigError

DATASETS = ("ml-100k", "ml-1m", "bookcrossing", "goodreads")


@dataclass
class RayConfig:
    address: Optional[str] = None      # None: start a local Ray in-process (loopback only)
    num_cpus: Optional[int] = None     # local Ray only; None = all cores
    temp_dir: Optional[str] = None     # local Ray's session folder (default /tmp/ray)

    def validate(self) -> None:
        _check(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", "must be >= 1")


@dataclass
class PreprocessConfig:
    dataset: str = "ml-100k"
    raw_dir: str = "data/raw/ml-100k"
    out_dir: str = "data/processed/ml-100k"
    tokenizer: str = "minilm"          # a local folder, or 'minilm' / 'roberta-bpe' (text_assets.py)
    max_length: int = 256
    min_count: int = 1                 # values seen fewer times in train map to the field's OOV
    train_ratio: float = 0.9
    seed: int = 42                     # split seed for datasets without timestamps
    num_workers: int = 2               # Ray tasks that parse / count / encode at once
    part_bytes: int = 64 << 20         # raw bytes per parse task (line-aligned ranges)
    staging_rows: int = 50_000         # rows per staging file: the unit of work after parsing
    batch_rows: int = 4096             # rows per tokenizer batch
    rows_per_shard: int = 250_000      # target rows per output Parquet file
    max_bad_fraction: float = 0.01     # more malformed rows than this fails the run
    overwrite: bool = False

    def validate(self) -> None:
        _check(self.dataset in DATASETS, "preprocess.dataset", f"must be one of {list(DATASETS)}, not {self.dataset!r}")
        _check(8 <= self.max_length <= 4096, "preprocess.max_length", "must be in 8..4096")
        _check(self.min_count >= 1, "preprocess.min_count", "must be >= 1")
        _check(0.0 < self.train_ratio < 1.0, "preprocess.train_ratio", "must be in (0, 1)")
        _check(self.num_workers >= 1, "preprocess.num_workers", "must be >= 1")
        _check(self.part_bytes >= 1 << 10, "preprocess.part_bytes", "must be >= 1024")
        _check(self.batch_rows >= 1, "preprocess.batch_rows", "must be >= 1")
        _check(self.staging_rows >= 1, "preprocess.staging_rows", "must be >= 1")
        _check(self.rows_per_shard >= 1, "preprocess.rows_per_shard", "must be >= 1")
        _check(0.0 <= self.max_bad_fraction <= 1.0, "preprocess.max_bad_fraction", "must be in [0, 1]")


@dataclass
class FlipConfig:
    """The whole experiment. Sections grow with the pretrain/finetune/runtime issues."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> "FlipConfig":
        for f in fields(self):
            getattr(self, f.name).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise FlipConfigError(f"config key {key!r}: {why}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise FlipConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise FlipConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise FlipConfigError(f"config key {key!r}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise FlipConfigError(f"config key {key!r}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise FlipConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise FlipConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for k in data:
        if k not in known:
            raise FlipConfigError(f"config key {prefix + k!r} is unknown; known: {sorted(known)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name] or {}, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, prefix + f.name)
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` strings (value parsed as YAML) merged into a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise FlipConfigError(f"override {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise FlipConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FlipConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FlipConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise FlipConfigError(f"config file {p} is not valid YAML: {e}") from e
    data = apply_overrides(data, overrides or [])
    return _build(FlipConfig, data, "").validate()
