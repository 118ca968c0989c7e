"""The experiment runner: a spec's cells and what they share, the report's statistics, and the
smoke spec run for real on ML-100K (every table, the RQ5/RQ6 pictures), resumed after a kill."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flip_dist.errors import FlipConfigError
from flip_dist.experiments.grid import expand
from flip_dist.experiments.report import Row, paired_p, study_rows
from flip_dist.experiments.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "ray_jobs" / "experiments"
SMOKE = SPECS / "smoke.yaml"


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = f"config: {REPO / 'ray_jobs/configs/ml100k.yaml'}\narms:\n  flip: {{mode: flip}}\n"


@pytest.mark.parametrize("body, message", [
    ("studies:\n  - {name: a, arms: [nope]}\n", "arms ['nope'] not among the spec's arms ['flip']"),
    ("studies:\n  - {name: a, arms: [flip], vary: [pretrain.tau]}\n", "`vary` and `values` go together"),
    ("studies:\n  - {name: a, arms: [flip], plot: line}\n", "a line plot needs"),
    ("studies:\n  - {name: a, arms: [flip], baseline: id}\n", "baseline 'id' is not one of its arms"),
    ("seeds: [1, 1]\nstudies:\n  - {name: a, arms: [flip]}\n", "seeds must be distinct"),
    ("studies:\n  - {name: a, arms: [flip]}\n  - {name: a, arms: [flip]}\n", "study names must be distinct"),
    ("set: [pretrain.tau=-1]\nstudies:\n  - {name: a, arms: [flip]}\n", "'pretrain.tau'"),
])
def test_a_bad_spec_is_refused_naming_the_file_and_what_is_wrong(tmp_path, body, message):
    path = _write(tmp_path, "name: t\n" + BASE + body)
    with pytest.raises(FlipConfigError) as e:
        load_spec(path)
    assert message in str(e.value) and f"experiment spec {path}" in str(e.value)


def test_a_bad_arm_key_names_its_dotted_key(tmp_path):
    path = _write(tmp_path, "name: t\n" + BASE.replace("{mode: flip}", "{mode: flop}")
                  + "studies:\n  - {name: a, arms: [flip]}\n")
    with pytest.raises(FlipConfigError, match=r"experiment.arms.flip.mode"):
        load_spec(path)


def test_extends_layers_a_spec_over_its_parent_and_refuses_a_circle(tmp_path):
    spec = load_spec(SPECS / "paper_bookcrossing.yaml")
    assert spec.preset == "paper" and len(spec.seeds) == 5
    assert [s.name for s in spec.studies][:2] == ["overall", "id_models"]
    assert spec.base_config_path().resolve() == (REPO / "ray_jobs/configs/bookcrossing.yaml").resolve()
    _write(tmp_path, "extends: b.yaml\n", "a.yaml")
    _write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(FlipConfigError, match="goes round in a circle"):
        load_spec(tmp_path / "a.yaml")


def test_cells_are_named_by_what_they_compute_and_share_pretrainings(tmp_path):
    spec = load_spec(SMOKE)
    cells, pretrainings = expand(spec, tmp_path)
    by = {(c.study, str(c.value), c.arm, c.seed): c for c in cells}
    # The overall study's FLIP at seed 0 is the id_models study's FLIP at dcnv2, the ablations'
    # at `full`, the sweeps' at tau 0.7: one run, reported four times.
    same = [by[("overall", "None", "flip", 0)], by[("id_models", "dcnv2", "flip", 0)],
            by[("ablations", "full", "flip", 0)], by[("temperature", "0.7", "flip", 0)]]
    assert len({c.key for c in same}) == 1
    assert by[("overall", "None", "flip", 1)].key != same[0].key                 # another seed
    # Every arm of a seed that starts from the pretraining starts from the same one; from scratch: none.
    overall0 = [c for c in cells if c.study == "overall" and c.seed == 0]
    assert len({c.pretraining for c in overall0 if c.arm != "id_scratch"}) == 1
    scratch = by[("overall", "None", "id_scratch", 0)]
    assert scratch.pretraining is None and scratch.config.finetune.init is None
    flip = same[0]
    assert flip.config.finetune.init == str(pretrainings[flip.pretraining].export(tmp_path))
    assert flip.config.finetune.mode == "flip"
    assert by[("overall", "None", "flip_plm", 0)].config.finetune.mode == "flip_plm"
    # A varied key reaches the pretraining's config and only there where it matters.
    tau03 = by[("temperature", "0.3", "flip", 0)]
    assert pretrainings[tau03.pretraining].config.pretrain.tau == 0.3 and tau03.pretraining != flip.pretraining
    assert len({c.key for c in cells}) == 19 and len(pretrainings) == 11


def test_paired_test_and_relative_improvement_follow_their_definitions():
    from scipy.stats import ttest_rel

    a, b = Row(None, "flip", "FLIP"), Row(None, "id", "DCNv2")
    auc_a, auc_b = [0.80, 0.81, 0.79], [0.78, 0.785, 0.776]
    for s, (x, y) in enumerate(zip(auc_a, auc_b)):
        a.by_seed[s] = {"auc": x, "logloss": 1 - x}
        b.by_seed[s] = {"auc": y, "logloss": 1 - y}
    assert paired_p(a, b, "auc") == pytest.approx(ttest_rel(auc_a, auc_b).pvalue)
    a.by_seed.pop(2)                                   # pairs over the seeds both have
    assert paired_p(a, b, "auc") == pytest.approx(ttest_rel(auc_a[:2], auc_b[:2]).pvalue)
    a.by_seed.pop(1)
    assert paired_p(a, b, "auc") is None               # one pair: no test

    spec = load_spec(SMOKE)
    cells, _ = expand(spec, Path("/nonexistent"))
    results = {c.key: {"metrics": {"auc": 0.7 + 0.01 * i + 0.001 * c.seed, "logloss": 0.5}}
               for i, c in enumerate(cells)}
    rows = study_rows(spec.studies[0], cells, results)
    base, flip = rows[0], rows[-1]
    assert base.label == "DCNv2 (from scratch)" and base.vs is None and flip.vs == base.label
    assert flip.rel_impr == pytest.approx((flip.mean("auc") - base.mean("auc")) / base.mean("auc"))
    assert flip.std("auc") == pytest.approx(np.std(flip.values("auc"), ddof=1))


@pytest.fixture(scope="module")
def smoke_run(ml100k_processed, ray_local, tmp_path_factory):
    from flip_dist.experiments.runner import run_experiment

    out = tmp_path_factory.mktemp("smoke")
    spec = load_spec(SMOKE, [f"preprocess.out_dir={ml100k_processed}"])
    return spec, out, run_experiment(spec, out)


def test_the_smoke_spec_renders_every_table_and_picture(smoke_run):
    spec, out, summary = smoke_run
    assert summary["ran"] == {"pretrain": 11, "finetune": 19}
    report = (out / "report.md").read_text()
    data = json.loads((out / "report.json").read_text())
    overall = {r["label"]: r for r in data["studies"]["overall"]["rows"]}
    assert set(overall) == {"DCNv2 (from scratch)", "FLIP_ID", "FLIP_PLM", "FLIP"}
    for label, row in overall.items():
        assert row["seeds"] == [0, 1] and 0.3 < row["auc_mean"] < 1 and row["logloss_mean"] > 0
        assert f"| {label} | {row['auc_mean']:.4f} ± {row['auc_std']:.4f} |" in report
        if label != "DCNv2 (from scratch)":
            assert row["vs"] == "DCNv2 (from scratch)" and 0 <= row["p"]["auc"] <= 1
    for study in spec.studies:
        assert study.title in report and (out / f"{study.name}.png").stat().st_size > 10_000
        assert all(r["seeds"] for r in data["studies"][study.name]["rows"])
    for name in ("field_similarity.png", "embedding_scatter.png", "singular_values.png"):
        assert (out / "analysis" / name).stat().st_size > 10_000 and f"analysis/{name}" in report
    assert set(data["analysis"]["embedding_spectrum"]) == {"full", "no_mlm", "no_mtm", "no_mlm_mtm"}
    assert len(list(out.glob("pretrain/*/pretrain_curves.png"))) == 11


def test_a_rerun_runs_only_what_is_missing(smoke_run):
    from flip_dist.experiments.runner import run_experiment

    spec, out, _ = smoke_run
    kept = sorted(out.glob("cells/*/result.json"))
    lost = kept[3]
    before = {p: p.stat().st_mtime_ns for p in kept if p != lost}
    lost.unlink()                                       # a grid killed before this cell finished
    summary = run_experiment(spec, out)
    assert summary["ran"] == {"pretrain": 0, "finetune": 1}
    assert lost.is_file() and all(p.stat().st_mtime_ns == t for p, t in before.items())
