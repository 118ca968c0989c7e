"""A grid's results as the paper shows them: per study a table of mean +- std over seeds with the
relative AUC improvement over the study's baseline row (Table II's Rel.Impr: (AUC - AUC_base) /
AUC_base) and a paired two-sided t-test over seeds against it (scipy.stats.ttest_rel: each seed
trains both rows on the same split, so the pairs share everything but the method); a picture per
study (bars, or lines for the Fig. 6-7 sweeps); report.json and report.md."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flip_dist.experiments.grid import Cell, value_label
from flip_dist.experiments.spec import ExperimentSpec, Study

METRICS = ("auc", "logloss")


@dataclass
class Row:
    """One table row: an arm at one value of the study's varied keys, over the seeds that finished."""
    value: Any
    arm: str
    label: str
    by_seed: dict[int, dict[str, float]] = field(default_factory=dict)
    vs: str | None = None                         # the row its p-value and Rel.Impr compare against
    rel_impr: float | None = None
    p: dict[str, float | None] = field(default_factory=dict)

    def values(self, metric: str, seeds: list[int] | None = None) -> np.ndarray:
        return np.array([self.by_seed[s][metric] for s in (seeds if seeds is not None else sorted(self.by_seed))])

    def mean(self, metric: str) -> float:
        return float(self.values(metric).mean()) if self.by_seed else math.nan

    def std(self, metric: str) -> float:
        v = self.values(metric)
        return float(v.std(ddof=1)) if len(v) > 1 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "arm": self.arm, "label": self.label, "seeds": sorted(self.by_seed),
                **{f"{m}_{s}": getattr(self, s)(m) for m in METRICS for s in ("mean", "std")},
                "per_seed": {str(k): v for k, v in sorted(self.by_seed.items())},
                "vs": self.vs, "rel_impr": self.rel_impr, "p": self.p}


def paired_p(a: Row, b: Row, metric: str) -> float | None:
    """Two-sided paired t-test over the seeds both rows have; None with fewer than 2 pairs or
    no variance in the differences (the test is undefined there, not significant)."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(a.by_seed) & set(b.by_seed))
    if len(seeds) < 2:
        return None
    diff = a.values(metric, seeds) - b.values(metric, seeds)
    if np.allclose(diff, diff[0]):
        return None
    return float(ttest_rel(a.values(metric, seeds), b.values(metric, seeds)).pvalue)


def study_rows(study: Study, cells: list[Cell], results: dict[str, dict[str, Any]]) -> list[Row]:
    """The rows of a study in the spec's order, each compared with its reference: the baseline arm at
    the same value, or (one arm varied over values) the same arm at the first value."""
    rows: dict[tuple[str, str], Row] = {}
    for c in cells:
        if c.study != study.name:
            continue
        row = rows.setdefault((repr(c.value), c.arm), Row(c.value, c.arm, c.label))
        if c.key in results:
            row.by_seed[c.seed] = {m: results[c.key]["metrics"][m] for m in METRICS}
    base_arm = study.baseline or (study.arms[0] if len(study.arms) > 1 else None)
    first = repr(study.values[0]) if study.values else repr(None)
    for (value, arm), row in rows.items():
        ref = rows.get((value, base_arm)) if base_arm is not None else rows.get((first, arm))
        if ref is None or ref is row or not ref.by_seed or not row.by_seed:
            continue
        row.vs = ref.label + ("" if base_arm is not None or not study.vary else f" at {value_label(ref.value)}")
        row.rel_impr = (row.mean("auc") - ref.mean("auc")) / ref.mean("auc")
        row.p = {m: paired_p(row, ref, m) for m in METRICS}
    return list(rows.values())


def ranking(rows: list[Row]) -> str:
    """The rows by mean test AUC, best first: the sentence a reader looks for under a table."""
    done = sorted((r for r in rows if r.by_seed), key=lambda r: -r.mean("auc"))
    return "By mean test AUC: " + " > ".join(
        f"{r.label}{'' if r.value is None else f' ({value_label(r.value)})'} {r.mean('auc'):.4f}" for r in done) + "."


def _cell_text(row: Row, metric: str) -> str:
    if not row.by_seed:
        return "missing"
    return f"{row.mean(metric):.4f}" + (f" ± {row.std(metric):.4f}" if len(row.by_seed) > 1 else "")


def _p_text(p: float | None) -> str:
    return "-" if p is None else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def markdown_table(study: Study, rows: list[Row]) -> str:
    head = ([" / ".join(study.vary)] if study.vary else []) + ["model", "AUC", "logloss", "Rel.Impr", "vs",
                                                                "p (AUC)", "p (logloss)", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rel = "-" if r.rel_impr is None else f"{100 * r.rel_impr:+.2f}%"
        cols = ([value_label(r.value)] if study.vary else []) + [
            r.label, _cell_text(r, "auc"), _cell_text(r, "logloss"), rel, r.vs or "-",
            _p_text(r.p.get("auc")), _p_text(r.p.get("logloss")), str(len(r.by_seed))]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plot_study(study: Study, rows: list[Row], path: Path) -> Path | None:
    """AUC and logloss of a study: lines over the varied value (Fig. 6-7 sweeps) or grouped bars,
    mean with the seeds' std as error bars."""
    from flip_dist.analysis.figures import pyplot, save_figure_atomic

    plt = pyplot()
    done = [r for r in rows if r.by_seed]
    if not done:
        return None
    arms = list(dict.fromkeys(r.arm for r in done))
    values = list(dict.fromkeys(repr(r.value) for r in done))
    shown = {repr(r.value): r.value if study.plot == "line" else value_label(r.value) for r in done}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, METRICS):
        for i, arm in enumerate(arms):
            mine = {repr(r.value): r for r in done if r.arm == arm}
            label = next(iter(mine.values())).label
            xs = [j for j, v in enumerate(values) if v in mine]
            ys = [mine[values[j]].mean(metric) for j in xs]
            err = [mine[values[j]].std(metric) for j in xs]
            if study.plot == "line":
                ax.errorbar([shown[values[j]] for j in xs], ys, yerr=err, marker="o", capsize=3, label=label)
            else:
                width = 0.8 / len(arms)
                pos = [j - 0.4 + width * (i + 0.5) for j in xs]
                ax.bar(pos, ys, width, yerr=err, capsize=3, label=label)
                for x, y, e in zip(pos, ys, err):     # above the error bar, not across it
                    ax.text(x, y + e, f"{y:.4f}", ha="center", va="bottom", fontsize=7,
                            rotation=90 if len(pos) > 4 else 0)
        if study.plot == "line":
            ax.set_xlabel(" / ".join(study.vary))
        else:
            ax.set_xticks(range(len(values)), [shown[v] if study.vary else "" for v in values])
            if study.vary:
                ax.set_xlabel(" / ".join(study.vary))
            lo = min(r.mean(metric) - r.std(metric) for r in done)
            hi = max(r.mean(metric) + r.std(metric) for r in done)
            pad = (hi - lo) * 0.6 + 1e-3
            ax.set_ylim(lo - pad, hi + pad)
        better = "higher" if metric == "auc" else "lower"
        ax.set_ylabel(f"test {metric.replace('auc', 'AUC')} ({better} is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = max(len(r.by_seed) for r in done)
    fig.suptitle(f"{study.title or study.name}: mean" + (f" ± std over {seeds} seeds" if seeds > 1 else ", one seed"))
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path


def sizes_text(spec: ExperimentSpec, cells: list[Cell]) -> list[str]:
    """What the numbers were measured with: data, models and every arm's budget."""
    from flip_dist.data.manifest import read_manifest

    cfg = cells[0].config
    lines = []
    try:
        m = read_manifest(cfg.preprocess.out_dir)
        lines.append(f"- data: {m.dataset} from `{cfg.preprocess.out_dir}`, {m.num_train} train / {m.num_test} "
                     f"test rows (every test row evaluated), {len(m.fields)} fields, {m.num_features} feature ids")
        per_epoch = m.num_train
    except Exception:   # noqa: BLE001 - the report still renders without the data folder
        per_epoch = None
    pre = next((c.config for c in cells if c.pretraining is not None), None)
    lines.append(f"- models: ID model {cfg.model.id_model} (D = {cfg.model.embed_dim}), PLM {cfg.model.plm} "
                 f"({'all layers' if cfg.model.plm_layers == 0 else f'first {cfg.model.plm_layers} layers'})")
    if pre is not None:
        p = pre.pretrain
        budget = f"{p.max_steps} steps" if p.max_steps else f"{p.epochs} epochs"
        seen = f" ({p.max_steps * p.batch_size / per_epoch:.2f} epochs)" if p.max_steps and per_epoch else ""
        lines.append(f"- pretraining ({spec.pretrain_runtime}"
                     + (f", {pre.dist.num_workers} workers" if spec.pretrain_runtime == "distributed" else "")
                     + f"): {budget} of global batch {p.batch_size}{seen}, objectives `{p.objectives}`, "
                       f"lr {p.lr:g} (tables {p.embed_lr:g}), r = {p.r_text:g}/{p.r_tab:g}, K = {p.num_noise}, "
                       f"tau = {p.tau:g}")
    for arm_name, arm in spec.arms.items():
        c = next((c.config for c in cells if c.arm == arm_name), None)
        if c is None:
            continue
        f = c.finetune
        budget = f"{f.max_steps} steps" if f.max_steps else f"{f.epochs} epoch(s)"
        seen = f" ({f.max_steps * f.batch_size / per_epoch:.2f} epochs)" if f.max_steps and per_epoch else ""
        lines.append(f"- {arm.name(c)}: finetune mode `{f.mode}`, "
                     f"{'from the pretraining' if arm.pretrained else 'from scratch'}, {budget} of batch "
                     f"{f.batch_size}{seen}, lr {f.lr:g} (tables {f.embed_lr:g}), {spec.finetune_runtime}")
    lines.append(f"- seeds: {list(spec.seeds)} (each seeds the pretraining and the finetuning; the split is fixed)")
    return lines


def _relative(path: Path, out: Path) -> str:
    try:
        return str(path.relative_to(out))
    except ValueError:
        return str(path)


def pretraining_curves(out: Path, records: dict[str, dict[str, Any]], cells: list[Cell]) -> dict[str, Path]:
    """The loss curves of every finished pretraining (pretrain/<key>/pretrain_curves.png)."""
    from flip_dist.eval.curves import plot_training_curves

    pictures = {}
    for key, rec in records.items():
        cfg = next(c.config for c in cells if c.pretraining == key)
        path = out / "pretrain" / key / "pretrain_curves.png"
        if not path.is_file():
            made = plot_training_curves(rec["history"], path, f"pretraining `{rec['objectives']}`, seed {rec['seed']}",
                                        global_batch=cfg.pretrain.batch_size, num_noise=cfg.pretrain.num_noise)
            if made is None:
                continue
        pictures[key] = path
    return pictures


def write_report(spec: ExperimentSpec, cells: list[Cell], results: dict[str, dict[str, Any]],
                 pre_records: dict[str, dict[str, Any]], out: Path, *, timings: dict[str, float],
                 failed: dict[str, str], analysis: dict[str, Any] | None = None) -> Path:
    """report.md (tables, pictures, sizes, what is missing) and report.json (the same numbers)."""
    from flip_dist.io_atomic import write_json_atomic, write_text_atomic

    preset = f", preset `{spec.preset}`" if spec.preset else ""
    md = [f"# Experiment `{spec.name}`", "", f"Spec: `{spec.source}`; base config `{spec.base_config_path()}`{preset}.",
          "", "## Sizes", "", *sizes_text(spec, cells), ""]
    data: dict[str, Any] = {"spec": spec.source, "studies": {}, "timings": timings, "failed": failed}
    for study in spec.studies:
        rows = study_rows(study, cells, results)
        data["studies"][study.name] = {"title": study.title, "vary": list(study.vary),
                                       "rows": [r.to_json() for r in rows]}
        md += [f"## {study.title or study.name}", "", markdown_table(study, rows), "", ranking(rows), ""]
        picture = plot_study(study, rows, out / f"{study.name}.png")
        if picture is not None:
            md += [f"![{study.name}]({_relative(picture, out)})", ""]
    md += ["p: two-sided paired t-test over seeds (scipy.stats.ttest_rel) against the row named in `vs`; "
           "'-' where there are fewer than two seeds. Rel.Impr: (AUC - AUC_vs) / AUC_vs, as the paper's Table II.", ""]
    curves = pretraining_curves(out, pre_records, cells)
    if curves:
        md += ["## Pretraining", ""]
        for key, path in curves.items():
            rec = pre_records[key]
            last = rec["history"][-1] if rec["history"] else {}
            losses = ", ".join(f"{k} {last[k]:.3f}" for k in ("mlm", "mtm", "icl") if k in last)
            md += [f"`{rec['objectives']}`, seed {rec['seed']}: {len(rec['history'])} logged steps in "
                   f"{rec['seconds']:.0f} s; last: {losses}", "", f"![pretraining {key}]({_relative(path, out)})", ""]
        data["pretrainings"] = {k: {kk: v for kk, v in r.items() if kk != "history"} for k, r in pre_records.items()}
    if analysis:
        md += ["## Analyses (RQ5, RQ6)", ""]
        for name, path in analysis.get("pictures", {}).items():
            md += [f"![{name}]({_relative(Path(path), out)})", ""]
        md += [line for line in analysis.get("summary", [])] + [""]
        data["analysis"] = analysis
    md += ["## Wall time", "", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) or "-", ""]
    if failed:
        md += ["## Failed", "", *[f"- `{k}`: {v}" for k, v in failed.items()], ""]
    write_json_atomic(out / "report.json", data)
    write_text_atomic(out / "report.md", "\n".join(md))
    return out / "report.md"
