"""Run a spec's grid: preprocess what is missing, then every pretraining, then every finetuning
cell, then the report. Local cells are Ray tasks (`cpus_per_cell` each, as many at once as the
cluster holds); distributed ones are Ray Train runs, one after another. What is done is on disk
under its key (pretrain/<key>/pretrain.json, cells/<key>/result.json), so a killed grid continues
where it stopped and a finished cell is never run again. On a cluster, `out` must be on storage
every node sees, as Ray Train's storage_path must."""
from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flip_dist.config import FlipConfig
from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.experiments.grid import Cell, Pretraining, expand
from flip_dist.experiments.spec import ExperimentSpec
from flip_dist.io_atomic import write_json_atomic

log = logging.getLogger(__name__)
PRETRAIN_DONE, CELL_DONE = "pretrain.json", "result.json"


def run_local_task(kind: str, config: dict[str, Any], data_dir: str, export_dir: str | None,
                   threads: int) -> dict[str, Any]:
    """One local cell in this process (a Ray task's body): a pretraining exported to `export_dir`,
    or a finetuning evaluated on the whole test split."""
    import torch

    from flip_dist.train.local import export_local, finetune_local, train_local

    torch.set_num_threads(max(1, threads))
    cfg, t0 = FlipConfig.from_dict(config), time.perf_counter()
    if kind == "pretrain":
        stage, model, history = train_local(cfg, "pretrain", data_dir)
        export_local(cfg, export_dir, stage, model, data_dir, len(history))
        return {"history": history, "seconds": round(time.perf_counter() - t0, 1)}
    res = finetune_local(cfg, data_dir)
    return {"metrics": res["metrics"], "history": res["history"], "seconds": round(time.perf_counter() - t0, 1)}


def run_distributed(kind: str, cfg: FlipConfig, data_dir: str) -> dict[str, Any]:
    """One cell as a Ray Train run; resumes its own newest checkpoint if a killed grid left one."""
    from flip_dist.distributed.metrics_log import read_metrics
    from flip_dist.distributed.trainer import run_stage

    stage_dir = Path(cfg.pretrain.out_dir if kind == "pretrain" else cfg.finetune.out_dir)
    if any(Path(cfg.dist.storage_path).glob("*/checkpoint_*")):
        cfg.dist.resume = "latest"
    t0 = time.perf_counter()
    summary = run_stage(cfg, kind, data_dir)
    history = [r for r in read_metrics(stage_dir) if r["stage"] == kind]
    out = {"history": history, "seconds": round(time.perf_counter() - t0, 1)}
    if kind == "finetune":
        out["metrics"] = {k: summary["evaluation"][k] for k in ("auc", "logloss", "count")}
    return out


class GridRun:
    """The driver of one grid: what to run, what is done, where each result goes."""

    def __init__(self, spec: ExperimentSpec, out: str | Path) -> None:
        self.spec, self.out = spec, Path(out)
        self.cells, self.pretrainings = expand(spec, self.out)
        self.failed: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.ran = {"pretrain": 0, "finetune": 0}        # what this call ran (a rerun skips what is done)

    # ------------------------------------------------------------------ state on disk
    def pretrain_done(self, pre: Pretraining) -> bool:
        return (pre.folder(self.out) / PRETRAIN_DONE).is_file() and (pre.export(self.out) / "meta.json").is_file()

    def cell_done(self, cell: Cell) -> bool:
        return (cell.folder(self.out) / CELL_DONE).is_file()

    def results(self) -> dict[str, dict[str, Any]]:
        return {c.key: json.loads((c.folder(self.out) / CELL_DONE).read_text()) for c in self.cells
                if self.cell_done(c)}

    def pretrain_records(self) -> dict[str, dict[str, Any]]:
        return {k: json.loads((p.folder(self.out) / PRETRAIN_DONE).read_text())
                for k, p in self.pretrainings.items() if self.pretrain_done(p)}

    def write_plan(self) -> None:
        plan = {"spec": self.spec.source, "cells": [
            {"key": c.key, "study": c.study, "value": c.value, "arm": c.arm, "label": c.label, "seed": c.seed,
             "pretraining": c.pretraining} for c in self.cells],
            "pretrainings": {k: {"objectives": p.config.pretrain.objectives, "seed": p.config.pretrain.seed}
                             for k, p in self.pretrainings.items()}}
        write_json_atomic(self.out / "plan.json", plan)

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        from flip_dist.ray_runtime import ray_session

        self.out.mkdir(parents=True, exist_ok=True)
        self.write_plan()
        first = next(iter(self.pretrainings.values()), None)
        base = first.config if first is not None else self.cells[0].config
        with ray_session(base.ray):
            t0 = time.perf_counter()
            self._preprocess()
            self.timings["preprocess_s"] = round(time.perf_counter() - t0, 1)
            todo_p = [p for p in self.pretrainings.values() if not self.pretrain_done(p)]
            todo_c = list({c.key: c for c in self.cells if not self.cell_done(c)}.values())   # shared cells once
            bar = tqdm(total=len(todo_p) + len(todo_c), desc=f"experiment {self.spec.name}", unit="run")
            t0 = time.perf_counter()
            self._run_all([("pretrain", p) for p in todo_p], bar)
            self.timings["pretrain_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            ready = [c for c in todo_c if c.pretraining is None or c.pretraining not in self.failed]
            for c in todo_c:
                if c not in ready:
                    self.failed[c.key] = f"its pretraining {c.pretraining} failed"
            self._run_all([("finetune", c) for c in ready], bar)
            self.timings["finetune_s"] = round(time.perf_counter() - t0, 1)
            bar.close()

    def _preprocess(self) -> None:
        from flip_dist.data.preprocess import preprocess
        from flip_dist.train.encoders import preprocess_config

        seen: set[str] = set()
        for cfg in [p.config for p in self.pretrainings.values()] + [c.config for c in self.cells]:
            folder = cfg.preprocess.out_dir
            if folder in seen:
                continue
            seen.add(folder)
            if not (Path(folder) / "manifest.json").is_file():
                log.warning("preprocessing %s into %s", cfg.preprocess.dataset, folder)
                preprocess(preprocess_config(cfg))

    def _run_all(self, jobs: list[tuple[str, Pretraining | Cell]], bar: tqdm) -> None:
        """Distributed jobs in turn from here; local ones as Ray tasks, finished in any order."""
        import ray

        threads = max(1, int(self.spec.cpus_per_cell))
        task = ray.remote(run_local_task).options(num_cpus=self.spec.cpus_per_cell, max_retries=0,
                                                  runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        pending: dict[Any, tuple[str, Pretraining | Cell]] = {}
        for kind, job in jobs:
            cfg, data = job.config, job.config.preprocess.out_dir
            if job.runtime == "distributed":
                self._finish(kind, job, lambda k=kind, c=cfg, d=data: run_distributed(k, c, d), bar)
            else:
                export = str(job.export(self.out)) if kind == "pretrain" else None
                pending[task.remote(kind, cfg.to_dict(), data, export, threads)] = (kind, job)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            kind, job = pending.pop(done[0])
            self._finish(kind, job, lambda ref=done[0]: ray.get(ref), bar)

    def _finish(self, kind: str, job: Pretraining | Cell, result: Any, bar: tqdm) -> None:
        """Record one job's result (or its failure: the grid goes on, the report says what is missing)."""
        try:
            res = result()
        except Exception as e:      # noqa: BLE001 - a failed cell must not stop the others
            cause = e.cause if hasattr(e, "cause") and isinstance(e.cause, (FlipDataError, FlipConfigError)) else e
            self.failed[job.key] = f"{type(cause).__name__}: {cause}"
            (job.folder(self.out)).mkdir(parents=True, exist_ok=True)
            (job.folder(self.out) / "error.txt").write_text("".join(traceback.format_exception(e)))
            log.error("%s %s failed: %s", kind, job.key, self.failed[job.key])
        else:
            self.ran[kind] += 1
            record = {"key": job.key, "kind": kind, **res}
            if isinstance(job, Cell):
                record.update(study=job.study, value=job.value, arm=job.arm, label=job.label, seed=job.seed,
                              pretraining=job.pretraining, steps=len(res["history"]))
                record["last"] = res["history"][-1] if res["history"] else None
                del record["history"]
            else:
                record.update(objectives=job.config.pretrain.objectives, seed=job.config.pretrain.seed)
            write_json_atomic(job.folder(self.out) / (CELL_DONE if isinstance(job, Cell) else PRETRAIN_DONE), record)
        bar.update(1)


def run_analyses_for(grid: GridRun) -> dict[str, Any] | None:
    """RQ5 / RQ6 over the grid's finished pretrainings (one a pretraining variant, first seed)."""
    from flip_dist.analysis.commands import run_analyses

    spec = grid.spec
    if spec.analysis is None:
        return None
    keys = list(dict.fromkeys(c.pretraining for c in grid.cells if c.pretraining is not None and
                              (spec.analysis.study is None or c.study == spec.analysis.study)))   # the spec's order
    exports: dict[str, str] = {}
    for key in sorted(keys, key=lambda k: grid.pretrainings[k].config.pretrain.seed):      # stable: first seed first
        pre = grid.pretrainings[key]
        if grid.pretrain_done(pre):
            exports.setdefault(pre.config.pretrain.objectives, str(pre.export(grid.out)))
    if not exports:
        return None
    cfg = grid.pretrainings[next(iter(keys))].config
    res = run_analyses(cfg, cfg.preprocess.out_dir, exports, grid.out / "analysis", rows=spec.analysis.rows)
    fs = res["field_similarity"]
    summary = [f"RQ5, field-level alignment of `{fs['variant']}` ({spec.analysis.rows} test rows): diagonal minus "
               "off-diagonal similarity " + ", ".join(f"{name} {v['gap']:+.4f}" for name, v in fs.items()
                                                       if isinstance(v, dict)) + ".", "",
               "RQ6, SVD of the learned feature embeddings (share of the top singular value / top 10, effective rank): "
               + "; ".join(f"`{name}` {v['top1_share']:.3f} / {v['top_k_share']:.3f}, {v['effective_rank']:.1f}"
                           for name, v in res["embedding_spectrum"].items()) + "."]
    pictures = {Path(f).stem: f for f in res["files"] if f.endswith(".png")}
    return {**res, "pictures": pictures, "summary": summary}


def run_experiment(spec: ExperimentSpec, out: str | Path) -> dict[str, Any]:
    """The whole grid, then its report; finished cells of an earlier run of `out` are kept. Raises
    after the report when some cells failed (the report lists them)."""
    from flip_dist.experiments.report import write_report

    grid = GridRun(spec, out)
    t0 = time.perf_counter()
    grid.run()
    t1 = time.perf_counter()
    analysis = run_analyses_for(grid)
    grid.timings["analysis_s"] = round(time.perf_counter() - t1, 1)
    grid.timings["total_s"] = round(time.perf_counter() - t0, 1)
    report = write_report(spec, grid.cells, grid.results(), grid.pretrain_records(), grid.out,
                          timings=grid.timings, failed=grid.failed, analysis=analysis)
    if grid.failed:
        raise FlipDataError(f"{len(grid.failed)} of the grid's runs failed (rerun the same command to retry "
                            f"them; finished ones are kept): " + "; ".join(f"{k}: {v}" for k, v in
                                                                          list(grid.failed.items())[:3]),
                            path=str(report))
    return {"report": str(report), "cells": len({c.key for c in grid.cells}), "pretrainings": len(grid.pretrainings),
            "ran": grid.ran, "timings": grid.timings}
