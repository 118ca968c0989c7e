"""The single-process comparison of the paper's Table II/III rows on one dataset: pretrain FLIP
once, finetune FLIP, FLIP_ID and FLIP_PLM from it, and the plain ID model (DCNv2 by default)
from scratch; report AUC/logloss side by side, as JSON and a bar chart."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from flip_dist.config import FlipConfig
from flip_dist.eval.curves import plot_training_curves
from flip_dist.io_atomic import write_json_atomic
from flip_dist.train.local import finetune_local, pretrain_local

VARIANTS = (  # (row name, finetune mode, start from the pretraining checkpoint)
    ("FLIP", "flip", True),
    ("FLIP_ID", "flip_id", True),
    ("FLIP_PLM", "flip_plm", True),
    ("{id_model} (no pretraining)", "flip_id", False),
)


def run_local_comparison(cfg: FlipConfig, data_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"data": str(data_dir), "rows": {}}
    pre_cfg = copy.deepcopy(cfg)
    pre_cfg.pretrain.out_dir = str(out / "pretrain")
    t0 = time.perf_counter()
    pre = pretrain_local(pre_cfg, data_dir)
    plot_training_curves(pre["history"], out / "pretrain_curves.png",
                         f"pretrain[{cfg.pretrain.objectives}], one process", global_batch=cfg.pretrain.batch_size,
                         num_noise=cfg.pretrain.num_noise)
    report["pretrain"] = {"seconds": round(time.perf_counter() - t0, 1), "steps": len(pre["history"]),
                          "first": pre["history"][0] if pre["history"] else None,
                          "last": pre["history"][-1] if pre["history"] else None}
    for name, mode, from_pretrain in VARIANTS:
        name = name.format(id_model=cfg.model.id_model.upper())
        fc = copy.deepcopy(cfg)
        fc.finetune.mode = mode
        fc.finetune.init = pre["checkpoint"] if from_pretrain else None
        t0 = time.perf_counter()
        res = finetune_local(fc, data_dir)
        report["rows"][name] = {**res["metrics"], "seconds": round(time.perf_counter() - t0, 1),
                                "steps": len(res["history"])}
        write_json_atomic(out / "comparison.json", report)
    _plot(report, out / "comparison.png")
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'model':<28}{'AUC':>8}{'logloss':>10}{'steps':>7}{'s':>8}"]
    for name, r in report["rows"].items():
        lines.append(f"{name:<28}{r['auc']:>8.4f}{r['logloss']:>10.4f}{r['steps']:>7}{r['seconds']:>8.1f}")
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rows"])
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for a, key in zip(ax, ("auc", "logloss")):
        vals = [report["rows"][n][key] for n in names]
        a.bar(range(len(names)), vals, color=["#4c72b0", "#55a868", "#c44e52", "#8c8c8c"][:len(names)])
        a.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        a.set_title(key)
        lo, hi = min(vals), max(vals)
        a.set_ylim(lo - (hi - lo) * 0.5 - 1e-3, hi + (hi - lo) * 0.5 + 1e-3)
        for i, v in enumerate(vals):
            a.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"FLIP single-process comparison on {Path(report['data']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
