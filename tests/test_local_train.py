"""The single-process pretrain -> finetune path on real ML-100K shards, a few steps each: every
variant runs, checkpoints load safely, metrics are reported on the test split."""
from __future__ import annotations

import json

import pytest
import torch

from flip_dist.config import load_config
from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.train.experiment import format_table, run_local_comparison

TINY = ["model.plm_layers=1", "pretrain.batch_size=8", "pretrain.max_steps=3", "finetune.batch_size=8",
        "finetune.max_steps=3", "finetune.eval_rows=256", "finetune.eval_batch_size=128"]


def test_local_comparison_runs_every_variant(ml100k_processed, tmp_path):
    cfg = load_config(None, TINY)
    report = run_local_comparison(cfg, ml100k_processed, tmp_path)
    assert list(report["rows"]) == ["FLIP", "FLIP_ID", "FLIP_PLM", "DCNV2 (no pretraining)"]
    for name, row in report["rows"].items():
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 < row["logloss"] < 5.0 and row["count"] == 256, name
        assert row["steps"] == 3
    assert 0.0 < report["rows"]["FLIP"]["alpha"] < 1.0
    assert report["pretrain"]["steps"] == 3
    assert set(report["pretrain"]["last"]) >= {"mlm", "mtm", "icl", "total"}
    assert 0.0 <= report["pretrain"]["last"]["icl_acc"] <= 1.0      # logged next to the ICL loss
    assert json.loads((tmp_path / "comparison.json").read_text())["rows"].keys() == report["rows"].keys()
    assert (tmp_path / "comparison.png").stat().st_size > 1000
    assert (tmp_path / "pretrain_curves.png").stat().st_size > 1000
    assert "FLIP_PLM" in format_table(report)

    # The checkpoint holds trained weights, saved as plain tensors (weights_only loading).
    emb = torch.load(tmp_path / "pretrain" / "embedding.pt", weights_only=True)
    table = next(v for k, v in emb.items() if k.endswith("weight"))
    assert table.shape[0] == json.loads((ml100k_processed / "manifest.json").read_text())["num_features"]


def test_finetune_init_must_be_a_pretraining_checkpoint(ml100k_processed, tmp_path):
    from flip_dist.train.local import finetune_local

    cfg = load_config(None, TINY + [f"finetune.init={tmp_path}"])
    with pytest.raises(FlipDataError, match="no meta.json"):
        finetune_local(cfg, ml100k_processed)


def test_tokenizer_and_plm_must_match(ml100k_processed):
    from flip_dist.train.local import finetune_local

    # ML-100K was tokenized with MiniLM's WordPiece; RoBERTa reads byte-level BPE ids: the ids
    # would silently mean other tokens, so the run refuses to start.
    cfg = load_config(None, TINY + ["model.plm=roberta-base", "finetune.mode=flip_plm"])
    with pytest.raises(FlipConfigError, match="tokenized with minilm .* expects roberta-bpe"):
        finetune_local(cfg, ml100k_processed)


@pytest.mark.parametrize("batch, world, message", [(17, 2, "use 16 or 18"), (1, 64, "use at least 64")])
def test_the_global_batch_must_split_over_the_workers(batch, world, message):
    from flip_dist.train.stages import get_stage

    stage = get_stage("pretrain", load_config(None, [f"pretrain.batch_size={batch}"]))
    with pytest.raises(FlipConfigError, match=f"batch_size={batch} is the global batch .*{message}"):
        stage.worker_batch(world)
    assert get_stage("pretrain", load_config(None, ["pretrain.batch_size=64"])).worker_batch(2) == 32


def test_clipping_covers_the_dense_side_only(ml100k_processed, monkeypatch):
    """As in the distributed runtime, whose tables' optimizer is fused into backward: the tables'
    rows are never scaled by the PLM's gradient norm."""
    from flip_dist.train import local

    clipped = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, *a, **k: clipped.append(list(params)) or real(clipped[-1], *a, **k))
    cfg = load_config(None, TINY + ["pretrain.max_steps=1"])
    _, model, _ = local.train_local(cfg, "pretrain", ml100k_processed)
    table_ids = {id(p) for p in model.sparse.parameters()}
    assert len(clipped) == 1 and clipped[0]
    assert not table_ids & {id(p) for p in clipped[0]}
    assert {id(p) for p in clipped[0]} == {id(p) for p in model.dense.parameters()}
