"""Typed, validated configuration, loaded from YAML (safe loading) with dotted overrides.

One place checks every key: unknown keys, wrong types and out-of-range values fail with a
FlipConfigError that names the key. Experiments live in YAML files (ray_jobs/configs/)."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from flip_dist.errors import FlipConfigError

DATASETS = ("ml-100k", "ml-1m", "bookcrossing", "goodreads")
# Caps that catch a typo (an extra zero or two) before it asks a cluster for the impossible.
MAX_WORKERS = 4096
MAX_BATCH = 1 << 20
# The registry (flip_dist.models.id_models.ID_MODELS) imports torch and checks it holds exactly these:
# named here so that validating a data-only config does not import torch (2 s).
ID_MODEL_NAMES = ("dcnv2", "deepfm", "autoint", "afm", "pnn", "widedeep", "dcn", "xdeepfm", "afn")


@dataclass
class RayConfig:
    address: Optional[str] = None      # None: start a local Ray in-process (loopback only)
    num_cpus: Optional[int] = None     # local Ray only; None = all cores
    temp_dir: Optional[str] = None     # local Ray's session folder (default /tmp/ray)

    def validate(self) -> None:
        _check(self.num_cpus is None or 1 <= self.num_cpus <= MAX_WORKERS, "ray.num_cpus", f"must be in 1..{MAX_WORKERS}")


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
    staging_rows: int = 100_000        # rows per staging file: the unit of work after parsing,
                                       # and so about the rows per output shard (train and test)
    batch_rows: int = 4096             # rows per tokenizer batch
    max_bad_fraction: float = 0.01     # more malformed rows than this fails the run
    max_line_bytes: int = 1 << 20      # a raw line longer than this is a bad row (never held whole)
    max_inflation: float = 200.0       # a compressed raw file may decompress to at most this many times
                                       #   its size (gzip bombs); real JSON/CSV inflates 3-15x
    overwrite: bool = False            # replace out_dir, only if it holds an earlier manifest.json

    def validate(self) -> None:
        _check(self.dataset in DATASETS, "preprocess.dataset", f"must be one of {list(DATASETS)}, not {self.dataset!r}")
        _check(8 <= self.max_length <= 4096, "preprocess.max_length", "must be in 8..4096")
        _check(self.min_count >= 1, "preprocess.min_count", "must be >= 1")
        _check(0.0 < self.train_ratio < 1.0, "preprocess.train_ratio", "must be in (0, 1)")
        _check(1 <= self.num_workers <= MAX_WORKERS, "preprocess.num_workers", f"must be in 1..{MAX_WORKERS}")
        _check(1 << 10 <= self.part_bytes <= 1 << 36, "preprocess.part_bytes", "must be in 1 KiB..64 GiB")
        _check(1 <= self.batch_rows <= 1 << 24, "preprocess.batch_rows", "must be in 1..2^24")
        _check(1 <= self.staging_rows <= 1 << 28, "preprocess.staging_rows", "must be in 1..2^28")
        _check(0.0 <= self.max_bad_fraction <= 1.0, "preprocess.max_bad_fraction", "must be in [0, 1]")
        _check(64 <= self.max_line_bytes <= 1 << 30, "preprocess.max_line_bytes", "must be in 64..2^30")
        _check(1.0 <= self.max_inflation <= 1e6, "preprocess.max_inflation", "must be in 1..1e6")


@dataclass
class ModelConfig:
    id_model: str = "dcnv2"            # one of ID_MODEL_NAMES
    id_params: dict = field(default_factory=dict)   # hyper-parameters passed to the ID model
    embed_dim: int = 32                # D (paper V-A4)
    plm: str = "minilm"                # minilm | tinybert | roberta-base | roberta-large | a folder
    plm_path: Optional[str] = None     # local weights for a named PLM (else random weights)
    plm_layers: int = 0                # > 0: keep only the first layers (quick CPU runs)
    trust_remote_code: bool = False
    nce_dim: int = 32                  # NCE output rows [o_j (nce_dim - 1), b_j]
    mtm_hidden: int = 256              # hidden size of each g_ID^(f)
    nce_bias_init: str = "log_q"       # log_q (starts at the noise prior) | map (authors' code)
    icl_dim: int = 128                 # d (paper IV-C5)
    icl_norm: str = "l2"               # l2 (cosine) | layernorm (official code)
    plm_dropout: Optional[float] = None  # None keeps the PLM's own; 0 for bit-comparable runs

    def validate(self) -> None:
        _check(self.id_model in ID_MODEL_NAMES, "model.id_model", f"must be one of {sorted(ID_MODEL_NAMES)}")
        _check(1 <= self.embed_dim <= 1 << 14, "model.embed_dim", "must be in 1..16384")
        _check(0 <= self.plm_layers <= 1024, "model.plm_layers", "must be in 0..1024 (0 = all)")
        _check(2 <= self.nce_dim <= 1 << 14, "model.nce_dim", "must be in 2..16384")
        _check(self.icl_norm in ("l2", "layernorm"), "model.icl_norm", "must be l2 or layernorm")
        _check(self.nce_bias_init in ("log_q", "map"), "model.nce_bias_init", "must be log_q or map")
        _check(1 <= self.icl_dim <= 1 << 16 and 1 <= self.mtm_hidden <= 1 << 16, "model.icl_dim/mtm_hidden",
               "must be in 1..65536")
        _check(self.plm_dropout is None or 0.0 <= self.plm_dropout < 1.0, "model.plm_dropout", "must be in [0, 1)")


SHARDING_TYPES = ("auto", "row_wise", "table_wise", "column_wise", "table_row_wise", "data_parallel", "none")
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam")


@dataclass
class DistConfig:
    """The distributed runtime (Ray Train workers, TorchRec sharding, DeepSpeed)."""

    num_workers: int = 2
    cpus_per_worker: float = 0.5       # fractional on small nodes: whole CPUs deadlock Ray Data (STACK.md)
    use_gpu: bool = False              # True: nccl, one GPU a worker
    ds_config: str = "zero2"           # a ds_configs/ preset name or a JSON path
    precision: Optional[str] = None    # None: the preset's; fp32 | bf16
    sharding: str = "row_wise"         # every table; auto = the TorchRec planner decides; none = replicated
                                       #   plain tables (GPUs without fbgemm's CUDA kernels)
    sparse_optimizer: str = "rowwise_adagrad"   # fused in backward; adam only on GPU
    grad_accum: int = 1                # DeepSpeed micro-batches per dense step (tables step every one)
    data: str = "ray"                  # ray: Ray Data shards | exact: every rank reads the same global
                                       #   batch order and takes its slice (bit-comparable to one process)
    shuffle_buffer_rows: int = 10_000  # Ray Data local shuffle buffer per worker
    log_every: int = 10                # steps between metric reports
    checkpoint_every: int = 0          # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    storage_path: str = "runs/ray"     # Ray Train storage: checkpoints and results
    resume: Optional[str] = None       # a checkpoint folder, or "latest" (the newest under the run)
    stop_after: int = 0                # > 0: stop (with a checkpoint) after this many steps of this run
    max_failures: int = 2              # worker-group restarts (from the last checkpoint) before the run fails
    sample_log: bool = False           # each rank writes the row ids of every step it trained (auditing resume)

    def validate(self) -> None:
        _check(1 <= self.num_workers <= MAX_WORKERS, "dist.num_workers", f"must be in 1..{MAX_WORKERS}")
        _check(0 < self.cpus_per_worker <= 1024, "dist.cpus_per_worker", "must be in (0, 1024]")
        _check(self.precision in (None, "fp32", "bf16"), "dist.precision", "must be fp32 or bf16 (fp16 is refused)")
        _check(self.sharding in SHARDING_TYPES, "dist.sharding", f"must be one of {list(SHARDING_TYPES)}")
        _check(self.sparse_optimizer in SPARSE_OPTIMIZERS, "dist.sparse_optimizer",
               f"must be one of {list(SPARSE_OPTIMIZERS)}")
        _check(self.sparse_optimizer != "adam" or self.use_gpu or self.sharding == "none", "dist.sparse_optimizer",
               "adam is a GPU-only fused optimizer in TorchRec; use rowwise_adagrad on CPU")
        _check(1 <= self.grad_accum <= 1 << 16, "dist.grad_accum", "must be in 1..65536")
        _check(0 <= self.shuffle_buffer_rows <= 1 << 28, "dist.shuffle_buffer_rows", "must be in 0..2^28")
        _check(0 <= self.max_failures <= 1000, "dist.max_failures", "must be in 0..1000")
        _check(self.data in ("ray", "exact"), "dist.data", "must be ray or exact")
        _check(self.log_every >= 1, "dist.log_every", "must be >= 1")
        _check(self.checkpoint_every >= 0 and self.keep_checkpoints >= 1 and self.stop_after >= 0,
               "dist.checkpoint_every/keep_checkpoints/stop_after", "must be >= 0 / >= 1 / >= 0")


@dataclass
class PretrainConfig:
    objectives: str = "full"           # a Table VII variant: see flip_dist.models.objectives.ABLATIONS
    r_text: float = 0.15               # text mask ratio (fields, or tokens when not field-level)
    r_tab: float = 0.15                # tabular mask ratio
    num_noise: int = 25                # K (Eq. 10)
    tau: float = 0.7                   # ICL temperature (Eq. 11-12)
    batch_size: int = 256
    epochs: int = 1
    max_steps: int = 0                 # > 0: stop after this many steps
    lr: float = 5e-5                   # dense side, AdamW, cosine decay (paper V-A4)
    embed_lr: float = 1e-3             # sparse side (feature and NCE tables)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    init: Optional[str] = None         # a pretraining checkpoint to continue from (weights and heads)
    out_dir: str = "runs/pretrain"

    def validate(self) -> None:
        from flip_dist.models.objectives import ABLATIONS

        _check(self.objectives in ABLATIONS, "pretrain.objectives", f"must be one of {sorted(ABLATIONS)}")
        for key in ("r_text", "r_tab"):
            _check(0.0 < getattr(self, key) <= 1.0, f"pretrain.{key}", "must be in (0, 1]")
        _check(1 <= self.num_noise <= 1 << 16, "pretrain.num_noise", "must be in 1..65536")
        _check(0 < self.tau <= 1e4, "pretrain.tau", "must be in (0, 1e4]")
        _common_train_checks(self, "pretrain")


@dataclass
class FinetuneConfig:
    mode: str = "flip"                 # flip | flip_id | flip_plm
    init: Optional[str] = None         # a pretraining checkpoint folder; None = from scratch
    batch_size: int = 256
    epochs: int = 1
    max_steps: int = 0
    lr: float = 5e-5                   # dense side (paper: Adam, picked from 1e-5..5e-3)
    embed_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    grad_clip: float = 1.0
    eval_batch_size: int = 1024
    eval_rows: int = 0                 # > 0: evaluate on the first rows of test only (quick checks)
    seed: int = 0
    out_dir: str = "runs/finetune"

    def validate(self) -> None:
        _check(self.mode in ("flip", "flip_id", "flip_plm"), "finetune.mode", "must be flip, flip_id or flip_plm")
        _check(1 <= self.eval_batch_size <= MAX_BATCH, "finetune.eval_batch_size", f"must be in 1..{MAX_BATCH}")
        _check(self.eval_rows >= 0, "finetune.eval_rows", "must be >= 0 (0 = all)")
        _common_train_checks(self, "finetune")


def _common_train_checks(cfg: Any, section: str) -> None:
    _check(1 <= cfg.batch_size <= MAX_BATCH, f"{section}.batch_size", f"must be in 1..{MAX_BATCH}")
    _check(1 <= cfg.epochs <= 100_000, f"{section}.epochs", "must be in 1..100000")
    _check(0 <= cfg.max_steps <= 1 << 40, f"{section}.max_steps", "must be in 0..2^40")
    _check(0 < cfg.lr <= 10 and 0 < cfg.embed_lr <= 10, f"{section}.lr/embed_lr", "must be in (0, 10]")
    _check(cfg.weight_decay >= 0, f"{section}.weight_decay", "must be >= 0")
    _check(0.0 <= cfg.warmup_ratio < 1.0, f"{section}.warmup_ratio", "must be in [0, 1)")
    _check(cfg.grad_clip >= 0, f"{section}.grad_clip", "must be >= 0 (0 = off)")


@dataclass
class FlipConfig:
    """The whole experiment: one section per stage, plus the runtime's."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dist: DistConfig = field(default_factory=DistConfig)
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
        if isinstance(value, bool):      # YAML's `true` is not 1.0
            raise FlipConfigError(f"config key {key!r}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FlipConfigError(f"config key {key!r}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise FlipConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
        return number
    if tp is dict or typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise FlipConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return value
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
        try:
            node[parts[-1]] = yaml.load(raw, Loader=_StrictLoader)
        except yaml.YAMLError as e:
            raise FlipConfigError(f"override {item!r}: the value is not valid YAML: {e}") from None
    return data


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (plain YAML keeps the last one, so a
    second `pretrain:` section would silently replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise FlipConfigError(f"key {key!r} appears twice in one mapping (lines {seen[key]} and "
                                      f"{key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


MAX_CONFIG_BYTES = 1 << 20


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content, or a FlipConfigError naming the file and what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise FlipConfigError(f"config file {p} does not exist")
    raw = p.read_bytes()
    if len(raw) > MAX_CONFIG_BYTES:
        raise FlipConfigError(f"config file {p} is {len(raw)} bytes; a config is at most {MAX_CONFIG_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise FlipConfigError(f"config file {p} is not UTF-8 text (byte {e.start}, line {line})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except FlipConfigError as e:
        raise FlipConfigError(f"config file {p}: {e}") from None
    except yaml.YAMLError as e:
        raise FlipConfigError(f"config file {p} is not valid YAML: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FlipConfig:
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise FlipConfigError(f"config file {path}: expected a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return _build(FlipConfig, data, "").validate()
