"""Finetuning's learning rate, picked from a grid as the paper does (Sec. V-A4: Adam, "learning rate
selected from {1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3}"), on a validation slice of the train split.

The test split is never read while choosing: a seeded `finetune.val_fraction` of the train rows is
held out, each `finetune.lr_grid` entry finetunes (the single-process loop, flip_dist.train.local)
on the rest and is scored (AUC) on the slice, and the best AUC wins. The final finetuning then
trains on the whole train split with the chosen rate and is the only run evaluated on test.
`lr_search.json` and `lr_search.png` (validation AUC against the rate) go to the run folder."""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flip_dist.config import FlipConfig
from flip_dist.data.batches import ShardReader
from flip_dist.errors import FlipConfigError
from flip_dist.io_atomic import write_json_atomic
from flip_dist.train.local import evaluate, finetune_local, train_local

PAPER_LR_GRID = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3)   # the paper's finetuning set (Sec. V-A4)


def _rows(reader: ShardReader, idx: np.ndarray) -> ShardReader:
    part = copy.copy(reader)
    part.table = reader.table.take(pa.array(idx))
    return part


def split_train(reader: ShardReader, val_fraction: float, seed: int) -> tuple[ShardReader, ShardReader]:
    """(the train part, the validation slice) of a train split: a seeded `val_fraction` of its rows,
    disjoint from the rest; both keep the split's row order."""
    n = len(reader)
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise FlipConfigError(f"finetune.val_fraction={val_fraction} of {n} train rows leaves no validation "
                              "slice or no rows to train on")
    order = np.random.default_rng(seed).permutation(n)
    return _rows(reader, np.sort(order[n_val:])), _rows(reader, np.sort(order[:n_val]))


def search_lr(cfg: FlipConfig, data_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Finetune once per `finetune.lr_grid` rate on the train split less a validation slice, score
    each on the slice; the report (also `out_dir`/lr_search.json) names the best as `best_lr`. An
    empty grid chooses `finetune.lr` without training."""
    fc = cfg.finetune
    report: dict[str, Any] = {"data": str(data_dir), "mode": fc.mode, "init": fc.init,
                              "val_fraction": fc.val_fraction, "seed": fc.seed, "trials": []}
    if not fc.lr_grid:
        return {**report, "best_lr": fc.lr, "searched": False}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_part, val = split_train(ShardReader(data_dir, "train"), fc.val_fraction, fc.seed)
    report |= {"train_rows": len(train_part), "val_rows": len(val), "searched": True}
    for lr in fc.lr_grid:
        trial = copy.deepcopy(cfg)
        trial.finetune.lr = lr
        t0 = time.perf_counter()
        _, model, history = train_local(trial, "finetune", data_dir, reader=train_part)
        metrics = evaluate(model.sparse, model.dense, val, fc.eval_batch_size)
        report["trials"].append({"lr": lr, "val_auc": metrics["auc"], "val_logloss": metrics["logloss"],
                                 "steps": len(history), "seconds": round(time.perf_counter() - t0, 1)})
        write_json_atomic(out / "lr_search.json", report)          # progress, should a long search stop
    # A diverged run (NaN AUC) never wins; on a tie the smaller rate (earlier in the grid) does.
    best = max(report["trials"], key=lambda t: t["val_auc"] if math.isfinite(t["val_auc"]) else -math.inf)
    report["best_lr"] = best["lr"]
    write_json_atomic(out / "lr_search.json", report)
    _plot(report, out / "lr_search.png")
    return report


def finetune_with_lr_search(cfg: FlipConfig, data_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """`search_lr`, then the final finetuning on the whole train split at the chosen rate, evaluated
    on test (the only time test is read); its metrics join the report as `final`."""
    report = search_lr(cfg, data_dir, out_dir)
    final = copy.deepcopy(cfg)
    final.finetune.lr = report["best_lr"]
    t0 = time.perf_counter()
    result = finetune_local(final, data_dir)
    report["final"] = {"lr": report["best_lr"], **result["metrics"], "steps": len(result["history"]),
                       "seconds": round(time.perf_counter() - t0, 1)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(out_dir) / "lr_search.json", report)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'lr':>10}{'val AUC':>10}{'val logloss':>13}{'steps':>7}{'s':>8}"]
    for t in report["trials"]:
        mark = "  <- best" if t["lr"] == report["best_lr"] else ""
        lines.append(f"{t['lr']:>10.0e}{t['val_auc']:>10.4f}{t['val_logloss']:>13.4f}{t['steps']:>7}"
                     f"{t['seconds']:>8.1f}{mark}")
    note = "" if report["searched"] else " (no lr_grid: as configured)"
    lines.append(f"finetune.lr = {report['best_lr']:g}{note}")
    if "final" in report:
        f = report["final"]
        lines.append(f"final finetuning on the whole train split: test AUC {f['auc']:.4f}, logloss {f['logloss']:.4f}")
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = report["trials"]
    lrs, aucs = [t["lr"] for t in trials], [t["val_auc"] for t in trials]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(lrs, aucs, marker="o")
    best = next(t for t in trials if t["lr"] == report["best_lr"])
    ax.plot([best["lr"]], [best["val_auc"]], marker="*", markersize=14, color="#c44e52", linestyle="none",
            label=f"chosen: {best['lr']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("finetuning learning rate (finetune.lr)")
    ax.set_ylabel("validation AUC")
    ax.set_title(f"lr search [{report['mode']}] on {Path(report['data']).name}: "
                 f"{report['val_rows']} validation rows of train", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
