"""Typed, validated configuration, loaded from YAML (safe loading), with named presets and dotted overrides.

Every rule lives in one declarative place, the section classes below (pydantic v2): unknown keys,
wrong types, out-of-range values and conflicts across sections fail with a FlipConfigError that
names the dotted key (`config key 'pretrain.batch_size': must be in ...`), whether the value came
from a file, a `--set` override, a constructor or an assignment (`cfg.finetune.mode = "x"`).

A config file holds the base sections, and optionally named variants layered on them:

    pretrain: {batch_size: 32, ...}          # the base
    presets:                                 # optional: name -> partial sections,
      paper: {pretrain: {batch_size: 1024}}  #   deep-merged over the base
    default_preset: paper                    # optional: the preset used when none is asked for

`load_config(path, overrides, preset)` applies the base, then the preset (the argument, else the
file's default_preset, else none), then the `section.key=value` overrides. `FlipConfig.to_dict()`
and `FlipConfig.from_dict()` carry a config to Ray workers and into checkpoints. Experiments live in
YAML files (ray_jobs/configs/)."""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from flip_dist.errors import FlipConfigError

# ---------------------------------------------------------------------------------------- choices
Dataset = Literal["ml-100k", "ml-1m", "bookcrossing", "goodreads"]
DATASETS = get_args(Dataset)
# Caps that catch a typo (an extra zero or two) before it asks a cluster for the impossible.
MAX_WORKERS = 4096
MAX_BATCH = 1 << 20
# The registry (flip_dist.models.id_models.ID_MODELS) imports torch and checks it holds exactly these:
# named here so that validating a data-only config does not import torch (2 s).
IdModelName = Literal["dcnv2", "deepfm", "autoint", "afm", "pnn", "widedeep", "dcn", "xdeepfm", "afn"]
ID_MODEL_NAMES = get_args(IdModelName)
ShardingType = Literal["auto", "row_wise", "table_wise", "column_wise", "table_row_wise", "data_parallel", "none"]
SHARDING_TYPES = get_args(ShardingType)
# The embedding tables' optimizer (pretrain.table_optimizer, finetune.table_optimizer).
TableOptimizer = Literal["rowwise_adagrad", "adagrad", "sgd", "adam"]
TABLE_OPTIMIZERS = get_args(TableOptimizer)
SPARSE_OPTIMIZERS = TABLE_OPTIMIZERS     # the former name (when it was dist.sparse_optimizer)

MAX_CONFIG_BYTES = 1 << 20
PRESETS_KEY, DEFAULT_PRESET_KEY = "presets", "default_preset"
# Keys that moved: an old config that sets one is told where it went.
_MOVED = {"dist.sparse_optimizer": "pretrain.table_optimizer and finetune.table_optimizer"}


# ------------------------------------------------------------------------------ scalar conversion
# What a value may be, exactly as the hand-written loader accepted it: YAML's `true` is not a
# number, a float is not an integer, non-finite floats are refused; text that spells a number or a
# boolean is accepted (PyYAML reads `1e-4`, without a dot, as a string). After conversion the core
# type is checked strictly.

def _refuse(what: str, value: Any) -> PydanticCustomError:
    return PydanticCustomError("flip_type", "expected {what}, got {got}", {"what": what, "got": repr(value)})


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise _refuse("true/false", value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _refuse("an integer", value)
    try:
        return int(value)
    except ValueError:
        raise _refuse("an integer", value) from None


def _to_float(value: Any) -> float:
    if isinstance(value, bool):          # YAML's `true` is not 1.0
        raise _refuse("a number", value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _refuse("a number", value) from None
    except OverflowError:                # an integer beyond a float's range
        raise _refuse("a finite number", value) from None
    if not math.isfinite(number):
        raise _refuse("a finite number", value)
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, os.PathLike):   # code may assign a Path to a folder key
        value = os.fspath(value)
    if not isinstance(value, (str, int, float)):
        raise _refuse("a string", value)
    return str(value)


def _to_dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise _refuse("a mapping", value)
    return value


Bool = Annotated[bool, BeforeValidator(_to_bool), Strict()]
Int = Annotated[int, BeforeValidator(_to_int), Strict()]
Float = Annotated[float, BeforeValidator(_to_float), Strict(), Field(allow_inf_nan=False)]
Str = Annotated[str, BeforeValidator(_to_str), Strict()]
Mapping = Annotated[dict, BeforeValidator(_to_dict)]


_T = TypeVar("_T")
_C = TypeVar("_C")
Choice = Annotated[_T, BeforeValidator(_to_str)]   # Choice[Literal[...]]: a number is turned into text first


def _rule(default: Any, why: str, shown_as: str | None = None, **bounds: Any) -> Any:
    """A field with bounds (ge / gt / le / lt) or choices. `why` is what a failure says:
    `config key 'section.<shown_as or the field name>': <why>`; `{value}` in it is the value's repr."""
    return Field(default, description=why, json_schema_extra={"shown_as": shown_as} if shown_as else None,
                 **bounds)


# ------------------------------------------------------------------------------------- sections
# The sections are pydantic *dataclasses* rather than BaseModels: they stay real dataclasses, so the
# code that reads a class attribute as a key's default (`PreprocessConfig.max_line_bytes`) or uses
# `dataclasses.asdict` / `fields` / `replace` keeps working, and no BaseModel method is shadowed.
_SECTIONS: dict[type, str] = {}        # section class -> its dotted path in FlipConfig
_MISSING = object()


def _section(name: str) -> Callable[[type[_C]], type[_C]]:
    """A pydantic dataclass (unknown keys refused, assignments validated) whose constructor and
    assignments raise FlipConfigError naming `<name>.<key>` instead of pydantic's ValidationError."""

    def wrap(cls: type[_C]) -> type[_C]:
        cls = dataclass(config=ConfigDict(extra="forbid", validate_assignment=True))(cls)
        init, setattr_ = cls.__init__, cls.__setattr__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as e:
                raise _config_error(e, cls, name) from None

        @functools.wraps(setattr_)
        def __setattr__(self: Any, key: str, value: Any) -> None:
            before = self.__dict__.get(key, _MISSING)
            try:
                setattr_(self, key, value)
            except ValidationError as e:
                if before is not _MISSING:     # a failed rule across keys must not leave the value set
                    self.__dict__[key] = before
                raise _config_error(e, cls, name) from None

        cls.__init__, cls.__setattr__ = __init__, __setattr__   # type: ignore[method-assign]
        _SECTIONS[cls] = name
        return cls

    return wrap


# Other typed, validated files (flip_dist.experiments.spec) build their sections with these.
config_section, rule = _section, _rule


@_section("ray")
class RayConfig:
    address: Str | None = None         # None: start a local Ray in-process (loopback only)
    num_cpus: Int | None = _rule(None, f"must be in 1..{MAX_WORKERS}", ge=1, le=MAX_WORKERS)
                                       # local Ray only; None = all cores
    temp_dir: Str | None = None        # local Ray's session folder (default /tmp/ray)


@_section("preprocess")
class PreprocessConfig:
    dataset: Choice[Dataset] = _rule("ml-100k", f"must be one of {list(DATASETS)}, not {{value}}")
    raw_dir: Str = "data/raw/ml-100k"
    out_dir: Str = "data/processed/ml-100k"
    tokenizer: Str = "minilm"          # a local folder, or 'minilm' / 'roberta-bpe' (text_assets.py)
    max_length: Int = _rule(256, "must be in 8..4096", ge=8, le=4096)
    min_count: Int = _rule(1, "must be >= 1", ge=1)   # values seen fewer times in train map to the field's OOV
    train_ratio: Float = _rule(0.9, "must be in (0, 1)", gt=0.0, lt=1.0)
    seed: Int = 42                     # split seed for datasets without timestamps
    num_workers: Int = _rule(2, f"must be in 1..{MAX_WORKERS}", ge=1, le=MAX_WORKERS)
                                       # Ray tasks that parse / count / encode at once
    part_bytes: Int = _rule(64 << 20, "must be in 1 KiB..64 GiB", ge=1 << 10, le=1 << 36)
                                       # raw bytes per parse task (line-aligned ranges)
    staging_rows: Int = _rule(100_000, "must be in 1..2^28", ge=1, le=1 << 28)
                                       # rows per staging file: the unit of work after parsing,
                                       # and so about the rows per output shard (train and test)
    batch_rows: Int = _rule(4096, "must be in 1..2^24", ge=1, le=1 << 24)   # rows per tokenizer batch
    max_bad_fraction: Float = _rule(0.01, "must be in [0, 1]", ge=0.0, le=1.0)
                                       # more malformed rows than this fails the run
    max_line_bytes: Int = _rule(1 << 20, "must be in 64..2^30", ge=64, le=1 << 30)
                                       # a raw line longer than this is a bad row (never held whole)
    max_inflation: Float = _rule(200.0, "must be in 1..1e6", ge=1.0, le=1e6)
                                       # a compressed raw file may decompress to at most this many times
                                       #   its size (gzip bombs); real JSON/CSV inflates 3-15x
    overwrite: Bool = False            # replace out_dir, only if it holds an earlier manifest.json


@_section("model")
class ModelConfig:
    id_model: Choice[IdModelName] = _rule("dcnv2", f"must be one of {sorted(ID_MODEL_NAMES)}")
    id_params: Mapping = Field(default_factory=dict)   # hyper-parameters passed to the ID model
    embed_dim: Int = _rule(32, "must be in 1..16384", ge=1, le=1 << 14)   # D (paper V-A4)
    plm: Str = "minilm"                # minilm | tinybert | roberta-base | roberta-large | a folder
    plm_path: Str | None = None        # local weights for a named PLM (else random weights)
    plm_layers: Int = _rule(0, "must be in 0..1024 (0 = all)", ge=0, le=1024)
                                       # > 0: keep only the first layers (quick CPU runs)
    trust_remote_code: Bool = False
    nce_dim: Int = _rule(32, "must be in 2..16384", ge=2, le=1 << 14)   # NCE output rows [o_j (nce_dim - 1), b_j]
    mtm_hidden: Int = _rule(256, "must be in 1..65536", "icl_dim/mtm_hidden", ge=1, le=1 << 16)
                                       # hidden size of each g_ID^(f)
    nce_bias_init: Choice[Literal["log_q", "map"]] = _rule("log_q", "must be log_q or map")
                                       # log_q (starts at the noise prior) | map (authors' code)
    icl_dim: Int = _rule(128, "must be in 1..65536", "icl_dim/mtm_hidden", ge=1, le=1 << 16)   # d (paper IV-C5)
    icl_norm: Choice[Literal["l2", "layernorm"]] = _rule("layernorm", "must be l2 or layernorm")
                                       # layernorm: dot product of LayerNorm'd projections (the paper,
                                       #   Eq. 11-12, and its code) | l2 (cosine)
    plm_dropout: Float | None = _rule(None, "must be in [0, 1)", ge=0.0, lt=1.0)
                                       # None keeps the PLM's own; 0 for bit-comparable runs
    mlm_tied: Bool = True              # the MLM decoder shares the PLM's word embeddings (BERT);
                                       #   false: an output layer of its own (Eq. 5 read literally)
    plm_length_groups: Int = _rule(4, "must be in 1..256", ge=1, le=256)
                                       # the PLM runs on this many groups of rows of similar length, each
                                       #   padded to its own longest row (1: one call, padded to the batch's;
                                       #   use 1 with ZeRO-3, which gathers the parameters for every call)


@_section("dist")
class DistConfig:
    """The distributed runtime (Ray Train workers, TorchRec sharding, DeepSpeed)."""

    num_workers: Int = _rule(2, f"must be in 1..{MAX_WORKERS}", ge=1, le=MAX_WORKERS)
    cpus_per_worker: Float = _rule(0.5, "must be in (0, 1024]", gt=0.0, le=1024.0)
                                       # fractional on small nodes: Ray Data's tasks need CPU too, and
                                       #   workers holding whole CPUs leave a 2-core node none: it waits forever
    use_gpu: Bool = False              # True: nccl, one GPU a worker
    ds_config: Str = "zero2"           # a ds_configs/ preset name or a JSON path
    precision: Choice[Literal["fp32", "bf16"]] | None = _rule(None, "must be fp32 or bf16 (fp16 is refused)")
                                       # None: the preset's; fp32 | bf16
    sharding: Choice[ShardingType] = _rule("row_wise", f"must be one of {list(SHARDING_TYPES)}")
                                       # every table; auto = the TorchRec planner decides; none = replicated
                                       #   plain tables (GPUs without fbgemm's CUDA kernels)
    grad_accum: Int = _rule(1, "must be in 1..65536", ge=1, le=1 << 16)
                                       # DeepSpeed micro-batches per dense step (tables step every one)
    data: Choice[Literal["ray", "exact"]] = _rule("ray", "must be ray or exact")
                                       # ray: Ray Data shards | exact: every rank reads the same global
                                       #   batch order and takes its slice (bit-comparable to one process)
    shuffle_buffer_rows: Int = _rule(10_000, "must be in 0..2^28", ge=0, le=1 << 28)
                                       # Ray Data local shuffle buffer per worker
    log_every: Int = _rule(10, "must be >= 1", ge=1)   # steps between metric reports
    checkpoint_every: Int = _rule(0, "must be >= 0 / >= 1 / >= 0", "checkpoint_every/keep_checkpoints/stop_after",
                                  ge=0)               # steps between checkpoints (0: only at the end)
    keep_checkpoints: Int = _rule(2, "must be >= 0 / >= 1 / >= 0", "checkpoint_every/keep_checkpoints/stop_after",
                                  ge=1)
    storage_path: Str = "runs/ray"     # Ray Train storage: checkpoints and results
    resume: Str | None = None          # a checkpoint folder, or "latest" (the newest under the run)
    stop_after: Int = _rule(0, "must be >= 0 / >= 1 / >= 0", "checkpoint_every/keep_checkpoints/stop_after",
                            ge=0)     # > 0: stop (with a checkpoint) after this many steps of this run
    max_failures: Int = _rule(2, "must be in 0..1000", ge=0, le=1000)
                                       # worker-group restarts (from the last checkpoint) before the run fails
    sample_log: Bool = False           # each rank writes the row ids of every step it trained (auditing resume)


# The bounds both training stages share.
def _batch_size(default: int) -> Any:
    return _rule(default, f"must be in 1..{MAX_BATCH}", ge=1, le=MAX_BATCH)


def _epochs(default: int) -> Any:
    return _rule(default, "must be in 1..100000", ge=1, le=100_000)


def _max_steps(default: int) -> Any:
    return _rule(default, "must be in 0..2^40", ge=0, le=1 << 40)


def _lr(default: float) -> Any:
    return _rule(default, "must be in (0, 10]", "lr/embed_lr", gt=0.0, le=10.0)


def _embed_lr(default: float) -> Any:
    return _rule(default, "must be in (0, 10]", "lr/embed_lr", gt=0.0, le=10.0)


def _table_optimizer(default: str) -> Any:
    return _rule(default, f"must be one of {list(TABLE_OPTIMIZERS)}")


def _weight_decay(default: float) -> Any:
    return _rule(default, "must be >= 0", ge=0.0)


def _warmup_ratio(default: float) -> Any:
    return _rule(default, "must be in [0, 1)", ge=0.0, lt=1.0)


def _grad_clip(default: float) -> Any:
    return _rule(default, "must be >= 0 (0 = off)", ge=0.0)


@_section("pretrain")
class PretrainConfig:
    objectives: Str = "full"           # a Table VII variant: see flip_dist.models.objectives.ABLATIONS
    r_text: Float = _rule(0.15, "must be in (0, 1]", gt=0.0, le=1.0)
                                       # text mask ratio (fields, or tokens when not field-level)
    r_tab: Float = _rule(0.15, "must be in (0, 1]", gt=0.0, le=1.0)   # tabular mask ratio
    num_noise: Int = _rule(25, "must be in 1..65536", ge=1, le=1 << 16)   # K (Eq. 10)
    tau: Float = _rule(0.7, "must be in (0, 1e4]", gt=0.0, le=1e4)        # ICL temperature (Eq. 11-12)
    batch_size: Int = _batch_size(256) # the global batch: rows per step over all workers
    epochs: Int = _epochs(1)
    max_steps: Int = _max_steps(0)     # > 0: stop after this many steps
    lr: Float = _lr(5e-5)              # dense side, AdamW, cosine decay (paper V-A4)
    embed_lr: Float = _embed_lr(1e-2)  # sparse side (feature and NCE tables). Measured (ML-100K, MLM +
                                       #   MTM, 100 steps): 1e-3 leaves MTM at the noise prior (4.24 ->
                                       #   4.22): clipped by MLM's gradient, the MTM head waits on o_j
                                       #   growing; 1e-2 -> 4.00
    table_optimizer: Choice[TableOptimizer] = _table_optimizer("rowwise_adagrad")
                                       # the tables' optimizer in every runtime; fused into backward by
                                       #   TorchRec in the distributed one (adam: GPU only there)
    weight_decay: Float = _weight_decay(0.01)
    warmup_ratio: Float = _warmup_ratio(0.05)
    grad_clip: Float = _grad_clip(1.0)
    seed: Int = 0
    init: Str | None = None            # a pretraining checkpoint to continue from (weights and heads)
    out_dir: Str = "runs/pretrain"

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: str) -> str:
        from flip_dist.models.objectives import ABLATIONS  # torch-free

        if value not in ABLATIONS:
            raise PydanticCustomError("flip_rule", "must be one of {names}", {"names": str(sorted(ABLATIONS))})
        return value


@_section("finetune")
class FinetuneConfig:
    mode: Choice[Literal["flip", "flip_id", "flip_plm"]] = _rule("flip", "must be flip, flip_id or flip_plm")
    init: Str | None = None            # a pretraining checkpoint folder; None = from scratch
    batch_size: Int = _batch_size(256) # the global batch, as in pretraining
    epochs: Int = _epochs(1)
    max_steps: Int = _max_steps(0)
    lr: Float = _lr(5e-5)              # dense side (paper: Adam, picked from 1e-5..5e-3)
    embed_lr: Float = _embed_lr(1e-3)
    table_optimizer: Choice[TableOptimizer] = _table_optimizer("rowwise_adagrad")
                                       # the tables' optimizer in every runtime; fused into backward by
                                       #   TorchRec in the distributed one (adam: GPU only there)
    weight_decay: Float = _weight_decay(0.0)
    warmup_ratio: Float = _warmup_ratio(0.0)
    grad_clip: Float = _grad_clip(1.0)
    eval_batch_size: Int = _rule(1024, f"must be in 1..{MAX_BATCH}", ge=1, le=MAX_BATCH)   # global too
    eval_rows: Int = _rule(0, "must be >= 0 (0 = all)", ge=0)
                                       # > 0: evaluate on the first rows of test only (quick checks)
    seed: Int = 0
    out_dir: Str = "runs/finetune"
    lr_grid: tuple[Annotated[Float, Field(gt=0.0, le=10.0)], ...] = _rule(
        (), "must be learning rates, each in (0, 10] (empty: finetune.lr alone)")
                                       # `flip-dist lr-search` picks finetune.lr from these (the paper's
                                       #   set: 1e-5 5e-5 1e-4 5e-4 1e-3 5e-3) on a validation slice of train
    val_fraction: Float = _rule(0.1, "must be in (0, 1)", gt=0.0, lt=1.0)
                                       # the share of the train split held out to score each lr_grid entry


@_section("")
class FlipConfig:
    """The whole experiment: one section per stage, plus the runtime's."""

    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_section_is_defaults(cls, value: Any) -> Any:
        return value or {}             # `pretrain:` with nothing under it

    @model_validator(mode="after")
    def _tables_optimizer_runs_here(self) -> FlipConfig:
        for stage in ("pretrain", "finetune"):
            if getattr(self, stage).table_optimizer == "adam" and not (self.dist.use_gpu or
                                                                       self.dist.sharding == "none"):
                raise PydanticCustomError(
                    "flip_rule", "adam is a GPU-only fused optimizer in TorchRec; use rowwise_adagrad on CPU",
                    {"key": f"{stage}.table_optimizer"})
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlipConfig:
        """A validated config from a plain mapping of sections (e.g. `to_dict()`'s output)."""
        return _validate(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict of sections: {section: {key: value}}."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- validation errors
_CONSTRAINTS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error")
_NOT_A_MAPPING = ("dataclass_type", "dataclass_exact_type", "dict_type")


def _config_error(error: ValidationError, root: type, prefix: str = "") -> FlipConfigError:
    """The one place a pydantic ValidationError becomes a FlipConfigError naming the dotted key
    (the first error found: the one to fix first). `prefix`: the dotted path of `root`."""
    e = error.errors(include_url=False)[0]
    loc = [str(part) for part in e["loc"]]
    owner, info = root, None           # the section holding the key, and the key's field
    for i, part in enumerate(loc):
        fields = getattr(owner, "__pydantic_fields__", {})
        if part not in fields:
            break
        info = fields[part]
        if i == len(loc) - 1 or info.annotation not in _SECTIONS:
            break
        owner, info = info.annotation, None
    key = ".".join(p for p in (prefix.rstrip("."), *loc) if p)
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = sorted(getattr(owner, "__pydantic_fields__", {}))
        moved = f" (it moved to {_MOVED[key]})" if key in _MOVED else ""
        return FlipConfigError(f"config key {key!r} is unknown; known: {known}{moved}")
    if kind in _NOT_A_MAPPING:
        return FlipConfigError(f"config key {key or '<root>'!r}: expected a mapping")
    if kind.startswith("flip_"):       # our own checks: conversions, choices, rules across sections
        if "key" in ctx:
            key = ".".join(p for p in (prefix.rstrip("."), ctx["key"]) if p)
        return FlipConfigError(f"config key {key!r}: {e['msg']}")
    if kind in _CONSTRAINTS and info is not None and info.description:
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if shown_as := extra.get("shown_as"):
            key = ".".join([*key.split(".")[:-1], shown_as])
        return FlipConfigError(f"config key {key!r}: {info.description.format(value=repr(e.get('input')))}")
    return FlipConfigError(f"config key {key or '<root>'!r}: {e['msg']}")


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _validate(cls: type, data: Any, prefix: str = "") -> Any:
    """`cls` (a section or FlipConfig) built and validated from a mapping; errors name `prefix` + key."""
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as e:
        raise _config_error(e, cls, prefix) from None


# -------------------------------------------------------------------------------- YAML and files
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


# --------------------------------------------------------------------------------------- presets
def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` layered on `base`: mappings merge key by key (recursively), anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def split_presets(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str | None]:
    """A raw config mapping -> (its base sections, its presets, its default preset's name).
    Each preset must be a mapping of known sections, each with known keys and valid values; a
    preset is checked whether or not it is used (rules across sections: only once applied)."""
    base = {k: v for k, v in data.items() if k not in (PRESETS_KEY, DEFAULT_PRESET_KEY)}
    raw = data.get(PRESETS_KEY) or {}
    if not isinstance(raw, dict):
        raise FlipConfigError(f"config key {PRESETS_KEY!r}: expected a mapping of preset names to sections")
    presets: dict[str, dict[str, Any]] = {}
    for name, body in raw.items():
        where = f"{PRESETS_KEY}.{name}"
        if not isinstance(name, str) or not name:
            raise FlipConfigError(f"config key {PRESETS_KEY!r}: a preset name must be text, not {name!r}")
        body = body or {}
        if not isinstance(body, dict):
            raise FlipConfigError(f"config key {where!r}: expected a mapping of sections")
        sections = FlipConfig.__pydantic_fields__
        for section, values in body.items():
            if section not in sections:
                raise FlipConfigError(f"config key {f'{where}.{section}'!r} is unknown; known: {sorted(sections)}")
            _validate(sections[section].annotation, values or {}, f"{where}.{section}")
        presets[name] = {section: values or {} for section, values in body.items()}
    default = data.get(DEFAULT_PRESET_KEY)
    if default is not None and not isinstance(default, str):
        raise FlipConfigError(f"config key {DEFAULT_PRESET_KEY!r}: expected a preset name, got {default!r}")
    return base, presets, default


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                preset: str | None = None) -> FlipConfig:
    """The validated config: the file's base sections, then the preset (`preset`, else the file's
    `default_preset`, else none), then the `section.key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise FlipConfigError(f"config file {path}: expected a mapping of sections, got {type(data).__name__}")
    try:
        base, presets, default = split_presets(data)
    except FlipConfigError as e:
        raise FlipConfigError(f"config file {path}: {e}") from None
    name = preset if preset is not None else default
    if name is not None:
        if name not in presets:
            known = sorted(presets) or "none"
            source = f"config file {path}" if path is not None else "no config file given"
            raise FlipConfigError(f"{source}: unknown preset {name!r}; known presets: {known}")
        base = deep_merge(base, presets[name])
    data = apply_overrides(base, overrides or [])
    return FlipConfig.from_dict(data)
