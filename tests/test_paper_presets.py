"""The paper's settings as a preset per dataset (Sec. V-A4), and finetuning's learning rate picked
from the paper's grid on a validation slice of the train split, never on test."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flip_dist.config import load_config
from flip_dist.errors import FlipConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "ray_jobs" / "configs").glob("*.yaml"))
PAPER_LRS = {1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3}
# The paper's finetuning batch: 256 for MovieLens-1M and BookCrossing (ML-100K: as ML-1M), 2048 for GoodReads.
FINETUNE_BATCH = {"ml-100k": 256, "ml-1m": 256, "bookcrossing": 256, "goodreads": 2048}


def test_every_dataset_has_a_config():
    assert {load_config(p).preprocess.dataset for p in CONFIGS} >= {"ml-100k", "bookcrossing", "goodreads"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_has_the_papers_settings_as_its_paper_preset(path):
    from flip_dist.models.plm import text_spec
    from flip_dist.train.lr_search import PAPER_LR_GRID

    base, paper = load_config(path), load_config(path, preset="paper")
    m, pt, ft = paper.model, paper.pretrain, paper.finetune
    assert (m.plm, m.plm_layers, m.id_model, m.embed_dim, m.icl_dim) == ("tinybert", 0, "dcnv2", 32, 128)
    assert (pt.objectives, pt.batch_size, pt.epochs, pt.max_steps) == ("full", 1024, 30, 0)
    assert (pt.lr, pt.warmup_ratio) == (5e-5, 0.0)                 # AdamW 5e-5, cosine decay from step 0
    assert (pt.r_text, pt.r_tab, pt.num_noise, pt.tau) == (0.15, 0.15, 25, 0.7)
    assert ft.batch_size == FINETUNE_BATCH[paper.preprocess.dataset]
    assert (ft.max_steps, ft.weight_decay, ft.warmup_ratio) == (0, 0.0, 0.0)   # Adam, whole epochs
    assert ft.lr_grid and set(ft.lr_grid) <= PAPER_LRS and set(PAPER_LR_GRID) == PAPER_LRS
    assert 0.0 < ft.val_fraction < 0.5 and ft.lr in PAPER_LRS
    # The deliberate differences stay the project's (the README names each switch).
    assert (m.mlm_tied, m.nce_bias_init, m.icl_norm) == (True, "log_q", "layernorm")
    # The preset's PLM reads the ids its data is tokenized with; both stages' global batches split
    # over the workers; its runs do not overwrite the base's.
    assert text_spec(m.plm, m.plm_path)[0] == paper.preprocess.tokenizer
    for cfg in (base, paper):
        assert cfg.pretrain.batch_size % cfg.dist.num_workers == 0
        assert cfg.finetune.batch_size % cfg.dist.num_workers == 0
    assert paper.pretrain.out_dir != base.pretrain.out_dir and paper.finetune.out_dir != base.finetune.out_dir
    assert paper.dist.storage_path != base.dist.storage_path
    assert base.finetune.lr_grid == ()                              # the base: finetune.lr as it is


@pytest.mark.parametrize("override, message", [
    ("finetune.lr_grid=[1e-4, 0]", "'finetune.lr_grid.1': must be learning rates, each in"),
    ("finetune.lr_grid=[20]", "'finetune.lr_grid.0': must be learning rates, each in"),
    ("finetune.lr_grid=[true]", "'finetune.lr_grid.0': expected a number"),
    ("finetune.val_fraction=1", "'finetune.val_fraction': must be in"),
])
def test_a_bad_lr_grid_is_refused_naming_the_key(override, message):
    with pytest.raises(FlipConfigError, match=message):
        load_config(None, [override])


# ----------------------------------------------------------------------------- lr search, real data
TINY = ["model.plm=minilm", "model.plm_layers=1", "finetune.batch_size=32", "finetune.max_steps=4",
        "finetune.eval_batch_size=256", "finetune.eval_rows=256", "finetune.val_fraction=0.02"]


def _row_ids(reader) -> set[int]:
    return set(reader.table["row_id"].to_numpy().tolist())


def test_the_validation_slice_is_a_seeded_part_of_train_disjoint_from_the_rest(ml100k_processed):
    from flip_dist.data.batches import ShardReader
    from flip_dist.train.lr_search import split_train

    train = ShardReader(ml100k_processed, "train")
    part, val = split_train(train, 0.1, seed=0)
    assert len(part) + len(val) == len(train) and len(val) == round(0.1 * len(train))
    assert _row_ids(part).isdisjoint(_row_ids(val))
    assert _row_ids(part) | _row_ids(val) == _row_ids(train)
    assert _row_ids(val).isdisjoint(_row_ids(ShardReader(ml100k_processed, "test")))
    again, val_again = split_train(train, 0.1, seed=0)
    assert _row_ids(val_again) == _row_ids(val)                     # deterministic
    assert _row_ids(split_train(train, 0.1, seed=1)[1]) != _row_ids(val)
    with pytest.raises(FlipConfigError, match="val_fraction"):
        split_train(train, 1e-9, seed=0)


def test_lr_search_picks_the_best_validation_auc_and_never_reads_test(ml100k_processed, tmp_path, monkeypatch):
    from flip_dist.train import lr_search

    cfg = load_config(REPO / "ray_jobs/configs/ml100k.yaml",
                      TINY + ["finetune.lr_grid=[1e-5, 5e-3]", f"finetune.out_dir={tmp_path}"], preset="paper")
    reads: list[str] = []
    read_table = pq.read_table

    def recording_read(source, *args, **kwargs):
        reads.append(str(source))
        return read_table(source, *args, **kwargs)

    finals: list[tuple[float, int]] = []
    finetune_local = lr_search.finetune_local

    def recording_final(final_cfg, data_dir):
        finals.append((final_cfg.finetune.lr, len(reads)))
        return finetune_local(final_cfg, data_dir)

    monkeypatch.setattr(pq, "read_table", recording_read)
    monkeypatch.setattr(lr_search, "finetune_local", recording_final)
    out = tmp_path / "lr_search"
    report = lr_search.finetune_with_lr_search(cfg, ml100k_processed, out)

    trials = report["trials"]
    assert [t["lr"] for t in trials] == [1e-5, 5e-3] and all(t["steps"] == 4 for t in trials)
    assert all(0.0 <= t["val_auc"] <= 1.0 for t in trials) and trials[0]["val_auc"] != trials[1]["val_auc"]
    assert report["best_lr"] == max(trials, key=lambda t: t["val_auc"])["lr"]
    manifest = json.loads((ml100k_processed / "manifest.json").read_text())
    assert report["train_rows"] + report["val_rows"] == manifest["num_train"]
    # While choosing, only train shards were read; the test split only by the final finetuning, at the choice.
    assert len(finals) == 1 and finals[0][0] == report["best_lr"]
    chosen_reads, final_reads = reads[:finals[0][1]], reads[finals[0][1]:]
    assert chosen_reads and all(Path(r).parent.name == "train" for r in chosen_reads)
    assert any(Path(r).parent.name == "test" for r in final_reads)
    assert report["final"]["lr"] == report["best_lr"] and report["final"]["count"] == 256

    saved = json.loads((out / "lr_search.json").read_text())
    assert saved["best_lr"] == report["best_lr"] and saved["final"] == report["final"]
    assert (out / "lr_search.png").stat().st_size > 1000
    assert "<- best" in lr_search.format_report(report)


def test_an_empty_grid_keeps_finetune_lr_without_training(tmp_path, capsys):
    from flip_dist.cli import main
    from flip_dist.train.lr_search import search_lr

    cfg = load_config(None, ["finetune.lr=3e-4"])
    report = search_lr(cfg, tmp_path / "no-data-read", tmp_path / "out")
    assert (report["best_lr"], report["searched"], report["trials"]) == (3e-4, False, [])
    assert main(["lr-search", "--config", str(REPO / "ray_jobs/configs/ml100k.yaml"), "--search-only",
                 "--data", str(tmp_path / "no-data-read"), "--out", str(tmp_path / "out")]) == 0
    assert "--set finetune.lr=0.0001" in capsys.readouterr().out
    assert not (tmp_path / "no-data-read").exists()


def test_the_split_keeps_the_train_order(ml100k_processed):
    from flip_dist.data.batches import ShardReader
    from flip_dist.train.lr_search import split_train

    train = ShardReader(ml100k_processed, "train")
    ids = train.table["row_id"].to_numpy()
    position = {int(r): i for i, r in enumerate(ids)}
    for part in split_train(train, 0.25, seed=3):
        assert np.all(np.diff([position[int(r)] for r in part.table["row_id"].to_numpy()]) > 0)
