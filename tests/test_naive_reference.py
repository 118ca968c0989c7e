"""The naive reference step (flip_dist/profiling/naive.py) computes the runtime's objectives: on real
ML-100K, given the same weights, batch and masks, its MLM / MTM / ICL losses at step 0 equal those
of the single-process FlipPretrainDense, and a few naive steps train (finite, total decreasing)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

CONFIG = Path(__file__).resolve().parents[1] / "ray_jobs" / "configs" / "ml100k.yaml"


def test_naive_losses_match_runtime_and_train(ml100k_processed) -> None:
    from flip_dist.config import load_config
    from flip_dist.data.batches import ShardReader
    from flip_dist.profiling.naive import build_naive, copy_weights
    from flip_dist.train.local import build_local

    # 2 of MiniLM's 6 layers: quicker, and the comparison does not depend on depth
    data = ml100k_processed
    cfg = load_config(CONFIG, ["pretrain.batch_size=8", "model.plm_dropout=0", "model.plm_layers=2",
                               "pretrain.lr=1e-3"])
    stage, ours = build_local(cfg, "pretrain", data)
    naive = build_naive(cfg, data)
    copy_weights(naive.model, ours.dense, ours.sparse)
    batches = list(ShardReader(data, "train").batches(8, shuffle=True, seed=0, drop_last=True, max_rows=8 * 2))

    gen = torch.Generator().manual_seed(cfg.pretrain.seed)
    with torch.no_grad():
        want = ours.dense(**stage.inputs(ours, ours.sparse, batches[0], gen))
        got = naive.forward(batches[0])           # naive.gen starts from the same seed
    for key in ("mlm", "mtm", "icl", "total"):
        assert math.isfinite(float(got[key])), key
        assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-4, abs=1e-4), key

    naive.gen.manual_seed(0)
    totals = []
    for _ in range(3):                            # the same batch thrice: the loss must fall
        losses = naive.step(batches[1])
        assert all(math.isfinite(v) for v in losses.values()), losses
        totals.append(losses["total"])
        naive.gen.manual_seed(0)                  # the same masks too
    assert totals[-1] < totals[0], totals
