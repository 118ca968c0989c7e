"""An experiment spec: one YAML file that names a base config and the paper's studies over it
(Table II overall, III-IV ID models, V-VI PLMs, VII ablations, Fig. 6-7 sweeps). A study is a
set of finetuning arms (the table's rows) times the values of one varied config key (its row
groups), times the spec's seeds. Validated here, before anything runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from flip_dist.config import Bool, Choice, Float, Int, Str, config_section, load_config, read_yaml, rule
from flip_dist.errors import FlipConfigError

Runtime = Literal["local", "distributed"]
DEFAULT_LABELS = {"flip": "FLIP", "flip_id": "FLIP_ID", "flip_plm": "FLIP_PLM"}


@config_section("experiment.arms")
class Arm:
    """One row of a table: how the model is finetuned, from the pretraining or from scratch."""
    mode: Choice[Literal["flip", "flip_id", "flip_plm"]] = rule("flip", "must be flip, flip_id or flip_plm")
    pretrained: Bool = True            # False: the tables and encoders start fresh (the ID model alone)
    label: Str | None = None           # the row's name; "{id_model}" / "{plm}" are filled in
    set: tuple[Str, ...] = ()          # config overrides of this arm only (e.g. its own budget)

    def name(self, cfg: Any) -> str:
        text = self.label or DEFAULT_LABELS[self.mode]
        return text.format(id_model=_pretty(cfg.model.id_model), plm=_pretty(cfg.model.plm))


@config_section("experiment.studies")
class Study:
    """A table or figure: `arms` x `values` of the config keys in `vary` (varied together)."""
    name: Str
    title: Str = ""
    arms: tuple[Str, ...] = ()
    vary: tuple[Str, ...] = ()         # dotted config keys, all set to each value in turn
    values: tuple[Any, ...] = ()
    baseline: Str | None = None        # an arm: p-values and relative improvement against it, per value
    plot: Choice[Literal["table", "line"]] = rule("table", "must be table or line")
    seeds: tuple[Int, ...] | None = None   # this study's seeds (default: the spec's)


@config_section("experiment.analysis")
class Analysis:
    """RQ5 (field-level similarity, before and after pretraining) and RQ6 (SVD of the learned
    feature embeddings) over the pretrainings of `study` (default: every pretraining of the grid)."""
    rows: Int = rule(256, "must be in 1..100000", ge=1, le=100_000)
    study: Str | None = None


@config_section("experiment")
class ExperimentSpec:
    name: Str
    config: Str                        # the base config file, relative to the spec's folder
    preset: Str | None = None
    set: tuple[Str, ...] = ()          # overrides of every cell
    seeds: tuple[Int, ...] = (0,)      # each sets pretrain.seed and finetune.seed; the split stays
    pretrain_runtime: Choice[Runtime] = rule("local", "must be local or distributed")
    finetune_runtime: Choice[Runtime] = rule("local", "must be local or distributed")
    cpus_per_cell: Float = rule(1.0, "must be in (0, 1024]", gt=0.0, le=1024.0)   # a local cell's Ray task
    arms: dict[str, Arm] = Field(default_factory=dict)
    studies: tuple[Study, ...] = ()
    analysis: Analysis | None = None
    source: Str = ""                   # the spec file (set by load_spec)

    def base_config_path(self) -> Path:
        path = Path(self.config)
        return path if path.is_absolute() or not self.source else Path(self.source).parent / path


def load_spec(path: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    """The validated spec of `path`; `overrides` (`key=value`, YAML values) go to every cell's config.
    Every arm a study names must exist, every study's cells must be valid configs."""
    data = {**_read_spec(Path(path)), "source": str(path)}
    data["set"] = [*(data.get("set") or []), *(overrides or [])]
    try:
        spec = ExperimentSpec(**data)
    except FlipConfigError as e:
        raise FlipConfigError(f"experiment spec {path}: {e}") from None
    _check(spec, Path(path))
    return spec


def select_studies(spec: ExperimentSpec, names: list[str]) -> ExperimentSpec:
    """The spec with only the studies `names` (the rest of the grid is not run, nor reported)."""
    import dataclasses

    known = [s.name for s in spec.studies]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FlipConfigError(f"experiment spec {spec.source}: no study {unknown}; its studies: {known}")
    analysis = spec.analysis if spec.analysis is None or spec.analysis.study in (None, *names) else None
    return dataclasses.replace(spec, studies=tuple(s for s in spec.studies if s.name in names), analysis=analysis)


def _read_spec(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The spec's mapping, layered over the spec its `extends` names (relative to its folder): the
    paper's grids share their arms and studies and differ in data, preset and resources."""
    from flip_dist.config import deep_merge

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise FlipConfigError(f"experiment spec {path}: expected a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = (path.parent / str(parent)).resolve()
    if parent_path in seen:
        raise FlipConfigError(f"experiment spec {path}: `extends` goes round in a circle ({parent_path})")
    base = _read_spec(parent_path, (*seen, parent_path))
    if "config" in base and "config" not in data:       # keep the parent's config path relative to the parent
        base["config"] = str((parent_path.parent / base["config"]).resolve())
    return deep_merge(base, data)


def _check(spec: ExperimentSpec, path: Path) -> None:
    if not spec.studies:
        raise FlipConfigError(f"experiment spec {path}: no studies")
    for seeds in (spec.seeds, *(s.seeds for s in spec.studies if s.seeds is not None)):
        if len(set(seeds)) != len(seeds) or not seeds:
            raise FlipConfigError(f"experiment spec {path}: seeds must be distinct and not empty, got {list(seeds)}")
    names = [s.name for s in spec.studies]
    if len(set(names)) != len(names):
        raise FlipConfigError(f"experiment spec {path}: study names must be distinct, got {names}")
    for study in spec.studies:
        where = f"experiment spec {path}, study {study.name!r}"
        unknown = [a for a in study.arms if a not in spec.arms]
        if not study.arms or unknown:
            raise FlipConfigError(f"{where}: arms {unknown or '[]'} not among the spec's arms {sorted(spec.arms)}")
        if bool(study.vary) != bool(study.values):
            raise FlipConfigError(f"{where}: `vary` and `values` go together")
        if study.baseline is not None and study.baseline not in study.arms:
            raise FlipConfigError(f"{where}: baseline {study.baseline!r} is not one of its arms {list(study.arms)}")
        if study.plot == "line" and not study.vary:
            raise FlipConfigError(f"{where}: a line plot needs `vary` and `values`")
    if spec.analysis is not None and spec.analysis.study not in (None, *names):
        raise FlipConfigError(f"experiment spec {path}: analysis.study {spec.analysis.study!r} is not a study")
    base = spec.base_config_path()
    try:
        load_config(base, list(spec.set), preset=spec.preset)      # the base itself, with its overrides
    except FlipConfigError as e:
        raise FlipConfigError(f"experiment spec {path}: {e}") from None


def _pretty(name: str) -> str:
    return {"dcnv2": "DCNv2", "deepfm": "DeepFM", "autoint": "AutoInt", "minilm": "MiniLM", "tinybert": "TinyBERT",
            "roberta-base": "RoBERTa-Base", "roberta-large": "RoBERTa-Large"}.get(name, name)
