"""A spec's cells: every (study, value, arm, seed) with its whole config, and the pretrainings
they start from. A cell is named by what it computes (a digest of its config), not by where it
appears: two studies that ask for the same run share it, every cell that finetunes from the same
pretraining shares that, and a rerun finds what is done by name."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flip_dist.checkpoints.integrity import json_digest
from flip_dist.config import FlipConfig, load_config
from flip_dist.experiments.spec import ExperimentSpec

# What does not change a run's result: where it writes, and how its evaluation is batched.
_WHERE = {"out_dir", "init", "eval_batch_size", "lr_grid", "val_fraction"}
_DIST_WHERE = {"log_every", "checkpoint_every", "keep_checkpoints", "storage_path", "resume", "stop_after",
               "max_failures", "sample_log", "cpus_per_worker"}


@dataclass
class Pretraining:
    key: str
    config: FlipConfig
    runtime: str

    def folder(self, out: Path) -> Path:
        return out / "pretrain" / self.key

    def export(self, out: Path) -> Path:
        return self.folder(out) / "export"


@dataclass
class Cell:
    """One finetuning (and evaluation) of one table row at one value and seed."""
    key: str
    study: str
    value: Any                         # the varied keys' value (None: nothing varied)
    arm: str
    label: str
    seed: int
    config: FlipConfig
    runtime: str
    pretraining: str | None            # the key of the Pretraining it starts from

    def folder(self, out: Path) -> Path:
        return out / "cells" / self.key


def _digest(obj: Any) -> str:
    return json_digest(obj)[:16]


def _stage(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in _WHERE}


def _runtime(cfg: dict[str, Any], runtime: str) -> dict[str, Any]:
    """A distributed run's layout changes its numbers (sharded tables, ZeRO, the worker count)."""
    if runtime == "local":
        return {"runtime": "local"}
    return {"runtime": runtime, "dist": {k: v for k, v in cfg["dist"].items() if k not in _DIST_WHERE}}


def pretraining_key(cfg: FlipConfig, runtime: str) -> str:
    d = cfg.to_dict()
    return _digest({"preprocess": d["preprocess"], "model": d["model"], "pretrain": _stage(d["pretrain"]),
                    **_runtime(d, runtime)})


def cell_key(cfg: FlipConfig, runtime: str, pretraining: str | None) -> str:
    d = cfg.to_dict()
    return _digest({"preprocess": d["preprocess"], "model": d["model"], "finetune": _stage(d["finetune"]),
                    "pretraining": pretraining, **_runtime(d, runtime)})


def value_overrides(keys: tuple[str, ...], value: Any) -> list[str]:
    """Every key of `vary` set to `value`; a mapping value sets its own keys (e.g. a PLM and its weights)."""
    pairs = value.items() if isinstance(value, dict) else ((key, value) for key in keys)
    return [f"{key}={json.dumps(v)}" for key, v in pairs]


def value_label(value: Any) -> str:
    """How a value is shown in tables and on axes: a mapping by its first entry (the PLM's name)."""
    return str(next(iter(value.values()))) if isinstance(value, dict) and value else str(value)


def expand(spec: ExperimentSpec, out: Path) -> tuple[list[Cell], dict[str, Pretraining]]:
    """Every cell of every study, in the spec's order, each with its config's output folders set
    under `out`; and the pretrainings they need, by key."""
    cells: list[Cell] = []
    pretrainings: dict[str, Pretraining] = {}
    base = spec.base_config_path()
    for study in spec.studies:
        for value in (study.values or (None,)):
            varied = value_overrides(study.vary, value) if study.vary else []
            for arm_name in study.arms:
                arm = spec.arms[arm_name]
                for seed in (study.seeds or spec.seeds):
                    cfg = load_config(base, [*spec.set, *varied, *arm.set, f"pretrain.seed={seed}",
                                             f"finetune.seed={seed}", f"finetune.mode={arm.mode}"],
                                      preset=spec.preset)
                    pkey = None
                    if arm.pretrained:
                        pkey = pretraining_key(cfg, spec.pretrain_runtime)
                        if pkey not in pretrainings:
                            pcfg = copy.deepcopy(cfg)
                            pre = Pretraining(pkey, pcfg, spec.pretrain_runtime)
                            pcfg.pretrain.out_dir = str(pre.folder(out))
                            pcfg.dist.storage_path = str(pre.folder(out) / "ray")
                            pretrainings[pkey] = pre
                        cfg.finetune.init = str(pretrainings[pkey].export(out))
                    else:
                        cfg.finetune.init = None
                    key = cell_key(cfg, spec.finetune_runtime, pkey)
                    cell = Cell(key, study.name, value, arm_name, arm.name(cfg), seed, cfg, spec.finetune_runtime, pkey)
                    cfg.finetune.out_dir = str(cell.folder(out))
                    cfg.dist.storage_path = str(cell.folder(out) / "ray")
                    cells.append(cell)
    return cells, pretrainings
