"""The RQ5 / RQ6 analyses (flip_dist.analysis) on real ML-100K, after tiny single-process
pretrainings: the field-similarity matrix and its gap before and after pretraining, the spectrum
of the learned feature table, the PNGs, and the `analyze` command's parser.

Measured (the whole MiniLM, batch 16, 32 test rows; 64 at 100 steps). Before pretraining the ID
tables sit at std 1e-4, so v barely depends on which field is masked: |gap| < 1e-3 and the largest
|interaction| ~0.004 at every seed. A few steps create a text-tabular interaction (0.13-0.52 after
5-12 steps, >= 39x), but its diagonal sign depends on the seed until ~100 steps. Full objective,
pretraining seeds 0-4: after 10-12 steps +0.02..+0.08 for seeds 0-2, -0.035 (seed 3), ~0 (seed 4);
after 30 steps seed 3 +0.05, seed 4 -0.035; after 100 steps seed 3 +0.99, seed 4 +0.29. ICL alone:
-0.02..+0.01 after 10 steps, +0.007..+0.015 after 40, +0.19 after 100 (seed 4). So the fast tests
assert the interaction, and the slow one the sign after 100 steps."""
from __future__ import annotations

import argparse
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from flip_dist.analysis.commands import OUTPUTS, add_commands, parse_exports, run_analyses
from flip_dist.analysis.embedding_spectrum import centred_svd, embedding_spectrum, load_feature_table
from flip_dist.analysis.field_alignment import interaction, mask_tab_field, mask_text_field, sample_rows
from flip_dist.config import load_config
from flip_dist.data.manifest import read_manifest
from flip_dist.data.vocab import MASK_ID
from flip_dist.errors import FlipConfigError
from flip_dist.train.local import pretrain_local

REPO = Path(__file__).resolve().parent.parent
FULL_STEPS = 8         # enough for the text-tabular interaction to appear (not for the sign of the gap)
ROWS = 32
BASE = ["model.plm_layers=0",          # the whole MiniLM: cut to fewer layers its [CLS] ignores the prompt
        "pretrain.batch_size=16", "pretrain.seed=0"]


@pytest.fixture(scope="module")
def data_dir(request) -> Path:
    """The repo's processed ML-100K when present (no Ray needed), else the session's own."""
    local = REPO / "data" / "processed" / "ml-100k"
    if (local / "manifest.json").is_file():
        return local
    return request.getfixturevalue("ml100k_processed")


@pytest.fixture(scope="module")
def exports(data_dir, tmp_path_factory) -> dict[str, str]:
    """Two pretraining exports: `full` for RQ5, and a few steps of ICL alone as a second RQ6 variant."""
    root = tmp_path_factory.mktemp("pretrain")
    out = {}
    for name, steps in (("full", FULL_STEPS), ("no_mlm_mtm", 3)):
        cfg = load_config(None, BASE + [f"pretrain.objectives={name}", f"pretrain.max_steps={steps}",
                                        f"pretrain.out_dir={root / name}"])
        out[name] = pretrain_local(cfg, data_dir)["checkpoint"]
    return out


@pytest.fixture(scope="module")
def analysed(data_dir, exports, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("analysis")
    summary = run_analyses(load_config(None, BASE), data_dir, exports, out, rows=ROWS)
    return out, summary


def test_field_masking_touches_only_that_field(data_dir):
    batch = sample_rows(data_dir, 8, seed=3)
    mask_token = read_manifest(data_dir).text_mask_id
    for f in range(batch.feature_ids.shape[1]):
        text = mask_text_field(batch.input_ids, batch.field_spans, f, mask_token)
        changed = text != batch.input_ids
        for r in range(len(batch)):
            start, end = batch.field_spans[r, f].tolist()
            span = torch.zeros_like(changed[r])
            span[start:end] = True
            assert end > start and bool((text[r][span] == mask_token).all())
            assert not bool(changed[r][~span].any())
        tab = mask_tab_field(batch.feature_ids, f)
        assert bool((tab[:, f] == MASK_ID).all())
        others = [g for g in range(tab.shape[1]) if g != f]
        assert torch.equal(tab[:, others], batch.feature_ids[:, others])


def test_rows_are_a_seeded_sample_of_test(data_dir):
    a, b, c = sample_rows(data_dir, 16, 0), sample_rows(data_dir, 16, 0), sample_rows(data_dir, 16, 1)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.feature_ids, c.feature_ids)


def test_field_similarity_before_and_after_pretraining(analysed, data_dir):
    out, summary = analysed
    report = json.loads((out / "field_similarity.json").read_text())
    assert report["variant"] == "full"
    results = report["results"]
    before, after = results["before pretraining"], results["after pretraining (full)"]
    fields = list(read_manifest(data_dir).fields)
    for r in (before, after):
        m = np.asarray(r["matrix"])
        assert r["fields"] == fields and m.shape == (len(fields), len(fields)) and r["rows"] == ROWS
        assert np.isfinite(m).all() and math.isfinite(r["gap"])
        # masking a different text field gives a different [CLS] projection: every row of S differs
        row_means = m.mean(axis=1)
        assert min(abs(a - b) for i, a in enumerate(row_means) for b in row_means[i + 1:]) > 1e-4, m
        off = m[~np.eye(len(fields), dtype=bool)]
        assert r["gap"] == pytest.approx(np.diag(m).mean() - off.mean(), abs=1e-9)
    assert before["icl_head"] == "random init" and after["icl_head"] == "pretrained"
    # after pretraining the tabular side sees the masked field too: the columns differ
    cols = np.asarray(after["matrix"]).mean(axis=0)
    assert np.ptp(cols) > 1e-2
    # Tables at std 1e-4 make v nearly blind to the masked field before pretraining: no diagonal, and
    # no text-tabular interaction at all. A few steps of pretraining create one (the tabular side now
    # responds to which field is masked, in a way that depends on the text field masked) ...
    before_inter, after_inter = before["interaction_max_abs"], after["interaction_max_abs"]
    assert after_inter == pytest.approx(np.abs(interaction(np.asarray(after["matrix"]))).max())
    print(f"RQ5 gap before {before['gap']:+.4f}, after {FULL_STEPS} steps of full {after['gap']:+.4f}; "
          f"max |interaction| {before_inter:.4f} -> {after_inter:.4f}")
    assert abs(before["gap"]) < 5e-3
    assert after_inter > 10 * before_inter
    # ... but not yet the diagonal of Fig. 9: at this scale the sign of the gap depends on the seed
    # (module docstring), so it is reported, not asserted.
    assert summary["field_similarity"]["before pretraining"]["gap"] == before["gap"]


def test_embedding_spectrum_is_consistent(exports, data_dir):
    spectrum = embedding_spectrum(exports, top=5, data_dir=data_dir)
    manifest = read_manifest(data_dir)
    assert set(spectrum) == set(exports)
    for name, s in spectrum.items():
        sv, p = np.asarray(s["singular_values"]), np.asarray(s["normalized_singular_values"])
        assert s["rows"] == manifest.num_features - 2 - manifest.num_fields and len(sv) == s["dim"] == 32
        assert np.all(np.diff(sv) <= 1e-12) and sv[0] > 0
        assert p.sum() == pytest.approx(1.0) and np.allclose(p, sv / sv.sum())
        assert 0 < s["top1_share"] <= s["top_k_share"] <= 1
        assert s["top1_share"] == pytest.approx(p[0]) and s["top_k_share"] == pytest.approx(p[:5].sum())
        assert 1.0 <= s["effective_rank"] <= s["dim"]
        # the Gram-matrix route gives the singular values of a direct SVD of the centred table
        rows, ids = load_feature_table(exports[name], data_dir)
        assert ids[0] == manifest.num_fields + 2
        direct = np.linalg.svd(rows - rows.mean(0), compute_uv=False)
        assert np.allclose(sv, direct, rtol=1e-6, atol=1e-9 * direct[0]), name
    assert np.allclose(centred_svd(np.eye(3))[0], [1.0, 1.0, 0.0], atol=1e-9)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_outputs_written_and_non_trivial(analysed):
    out, summary = analysed
    assert summary["files"] == [str(out / f) for f in OUTPUTS]
    for name in OUTPUTS:
        path = out / name
        assert path.is_file() and path.stat().st_size > 2000, name
        if name.endswith(".png"):
            width, height = _png_size(path)
            assert width > 400 and height > 300, (name, width, height)
            assert path.stat().st_size > 20_000, name          # drawn, not a blank canvas
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no temporary files left
    spectrum = json.loads((out / "embedding_spectrum.json").read_text())
    assert set(spectrum["variants"]) == {"full", "no_mlm_mtm"} and spectrum["top"] == 10


def test_analyze_command(tmp_path, exports, data_dir, capsys):
    parser = argparse.ArgumentParser(prog="flip-dist")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", "--data", str(data_dir), "--pretrained", f"icl={exports['no_mlm_mtm']}",
                              "--pretrained", f"full={exports['full']}", "--out", str(tmp_path / "a"),
                              "--rows", "4", "--set", "model.plm_layers=0"])
    assert args.rows == 4 and args.set == ["model.plm_layers=0"]
    assert parse_exports(args.pretrained) == {"icl": exports["no_mlm_mtm"], "full": exports["full"]}
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["field_similarity"]["variant"] == "full"           # 'full' wins over the first given
    assert set(summary["embedding_spectrum"]) == {"icl", "full"}
    assert all(Path(f).is_file() for f in summary["files"])
    for bad in (["full"], [f"full={exports['full']}", f"full={exports['full']}"], [f"x={tmp_path / 'nope'}"], []):
        with pytest.raises(FlipConfigError):
            parse_exports(bad)


@pytest.mark.slow
def test_full_pretraining_builds_the_diagonal(data_dir, tmp_path):
    """Paper Fig. 9 at a small scale: after 100 steps of the full objective the pair that lost the
    same field is the more similar one on average (gap > 0). Seed 4 is the least favourable seen:
    its gap was -0.04 after 12 and after 30 steps, +0.29 after 100 (seed 3: -0.035 -> +0.99)."""
    from flip_dist.analysis.field_alignment import analysis_config, field_similarity

    cfg = load_config(None, BASE + ["pretrain.seed=4", "pretrain.objectives=full", "pretrain.max_steps=100",
                                    f"pretrain.out_dir={tmp_path / 'p'}"])
    export = pretrain_local(cfg, data_dir)["checkpoint"]
    start = analysis_config(cfg, export)
    start.pretrain.init = None
    before = field_similarity(start, data_dir, None, rows=64)
    after = field_similarity(cfg, data_dir, export, rows=64)
    print(f"RQ5 gap before {before['gap']:+.4f}, after 100 steps of full {after['gap']:+.4f}")
    assert abs(before["gap"]) < 5e-3
    assert after["gap"] > 0.1
