"""What ICL needs from the PLM: [CLS] states that differ between prompts. A PLM cut to its first
layers gives every real ML-100K prompt the same [CLS]; start-up says so. The in-batch top-1
accuracy that is logged next to the ICL loss is the match of each row with its own partner."""
from __future__ import annotations

import logging

import pytest
import torch

from flip_dist.config import load_config
from flip_dist.data.batches import first_rows
from flip_dist.data.manifest import read_manifest
from flip_dist.models.heads import ICLHead
from flip_dist.models.plm import MIN_CLS_SPREAD, cls_spread, load_plm


def _prompts(ml100k_processed):
    return first_rows(ml100k_processed, "train", 32, read_manifest(ml100k_processed).text_pad_id)


def test_a_plm_cut_to_two_layers_gives_every_prompt_the_same_cls(ml100k_processed):
    batch = _prompts(ml100k_processed)
    assert len(batch) == 32 and len({tuple(r.tolist()) for r in batch.input_ids}) > 16   # different prompts
    spread = {}
    for layers in (2, 0):
        plm, _ = load_plm("minilm", num_layers=layers)
        spread[layers] = cls_spread(plm, batch.input_ids, batch.attention_mask)
    print(f"[CLS] spread over 32 ML-100K prompts: 2 layers {spread[2]:.2e}, all 6 layers {spread[0]:.2e}")
    assert spread[2] < MIN_CLS_SPREAD < 10 * MIN_CLS_SPREAD < spread[0]


def test_start_up_warns_when_cls_cannot_tell_prompts_apart(ml100k_processed, caplog):
    from flip_dist.train.local import build_local

    for layers, warned in ((2, True), (0, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="flip_dist.train.stages"):
            build_local(load_config(None, [f"model.plm_layers={layers}"]), "pretrain", ml100k_processed)
        said = [r.getMessage() for r in caplog.records if "[CLS]" in r.getMessage()]
        assert bool(said) == warned, (layers, said)
        if warned:
            assert "model.plm_layers=0" in said[0]


def test_icl_accuracy_is_the_in_batch_top1_match():
    torch.manual_seed(0)
    head = ICLHead(24, 24, dim=16, norm="l2")
    w, v = torch.randn(10, 24), torch.randn(10, 24)
    head(w, v)
    z_text = torch.nn.functional.normalize(head.text_proj(w), dim=-1)
    z_tab = torch.nn.functional.normalize(head.tab_proj(v), dim=-1)
    sim = z_text @ z_tab.T
    rows = torch.arange(10)
    want = 0.5 * ((sim.argmax(1) == rows).float().mean() + (sim.T.argmax(1) == rows).float().mean())
    assert float(head.last_accuracy) == float(want)
    # Partners made identical (one projection, the same inputs): every row finds its own.
    head.tab_proj.load_state_dict(head.text_proj.state_dict())
    head(w, w)
    assert float(head.last_accuracy) == 1.0


@pytest.mark.slow
def test_every_objective_learns_in_the_full_pretraining(ml100k_processed):
    """The main job's pretraining (ray_jobs/configs/ml100k.yaml as it is: the whole MiniLM, global
    batch 64, 150 steps, the tables at embed_lr 1e-2) in one process on real ML-100K: MLM, MTM and
    ICL each fall from where they start, MTM below its noise prior (where it stays when the
    tables' rate is too low for the NCE rows to grow; it leaves it after ~60 steps, hence the
    length and the slow mark) and ICL well below ln B."""
    import math
    from pathlib import Path

    from flip_dist.models.heads import nce_prior_loss
    from flip_dist.train.local import train_local

    main_job = Path(__file__).resolve().parents[1] / "ray_jobs/configs/ml100k.yaml"
    cfg = load_config(main_job, [f"pretrain.out_dir={ml100k_processed.parent / 'learns'}"])
    _, _, history = train_local(cfg, "pretrain", ml100k_processed)
    first = {k: sum(h[k] for h in history[:5]) / 5 for k in ("mlm", "mtm", "icl")}
    last = {k: sum(h[k] for h in history[-10:]) / 10 for k in ("mlm", "mtm", "icl")}
    print("first 5 steps", first, "last 10 steps", last)
    prior = nce_prior_loss(cfg.pretrain.num_noise)          # 4.239 at K = 25
    assert first["mtm"] == pytest.approx(prior, abs=0.01)
    assert last["mtm"] < prior - 0.1
    assert last["mlm"] < 0.6 * first["mlm"]
    assert last["icl"] < 0.85 * math.log(cfg.pretrain.batch_size)
