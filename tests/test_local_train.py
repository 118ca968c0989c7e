"""The single-process pretrain -> finetune path on real ML-100K shards, a few steps each: every
variant runs, checkpoints load safely, metrics are reported on the test split."""
from __future__ import annotations

import json

import pytest
import torch

from flip_dist.config import load_config
from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.train.local import finetune_local, pretrain_local

TINY = ["model.plm_layers=1", "pretrain.batch_size=8", "pretrain.max_steps=3", "finetune.batch_size=8",
        "finetune.max_steps=3", "finetune.eval_rows=256", "finetune.eval_batch_size=128"]


def test_local_pretraining_then_every_finetuning_mode(ml100k_processed, tmp_path):
    """The single-process runtime of the experiment runner's `local` cells: a pretraining export
    that every mode finetunes from, each evaluated on the test rows asked for."""
    cfg = load_config(None, TINY + [f"pretrain.out_dir={tmp_path / 'pretrain'}"])
    pre = pretrain_local(cfg, ml100k_processed)
    assert len(pre["history"]) == 3 and set(pre["history"][-1]) >= {"mlm", "mtm", "icl", "total"}
    assert 0.0 <= pre["history"][-1]["icl_acc"] <= 1.0      # logged next to the ICL loss
    for mode in ("flip", "flip_id", "flip_plm"):
        cfg.finetune.mode, cfg.finetune.init = mode, pre["checkpoint"]
        res = finetune_local(cfg, ml100k_processed)
        m = res["metrics"]
        assert 0.0 <= m["auc"] <= 1.0 and 0.0 < m["logloss"] < 5.0 and m["count"] == 256, mode
        assert len(res["history"]) == 3 and ("alpha" in m) == (mode == "flip")
        assert mode != "flip" or 0.0 < m["alpha"] < 1.0

    # The checkpoint holds trained weights, saved as plain tensors (weights_only loading).
    emb = torch.load(tmp_path / "pretrain" / "embedding.pt", weights_only=True)
    table = next(v for k, v in emb.items() if k.endswith("weight"))
    assert table.shape[0] == json.loads((ml100k_processed / "manifest.json").read_text())["num_features"]


def test_finetune_init_must_be_a_pretraining_checkpoint(ml100k_processed, tmp_path):
    cfg = load_config(None, TINY + [f"finetune.init={tmp_path}"])
    with pytest.raises(FlipDataError, match="no meta.json"):
        finetune_local(cfg, ml100k_processed)


def test_tokenizer_and_plm_must_match(ml100k_processed):
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
