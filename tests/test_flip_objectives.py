"""FLIP's pretraining objectives and finetuning heads on a real ML-100K batch: losses finite,
gradients reach exactly the parameters the paper's equations connect, Table VII switches,
two encoder passes a step, and overfitting one batch drives every loss down."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flip_dist.data.batches import ShardReader
from flip_dist.data.vocab import MASK_ID
from flip_dist.models.flip import FlipFinetuneDense, FlipPretrainDense, FlipSparse
from flip_dist.models.id_models import build_id_model
from flip_dist.models.masking import IGNORE, mask_tab_fields, mask_text_fields, mask_text_tokens
from flip_dist.models.objectives import ABLATIONS, objectives
from flip_dist.models.plm import load_plm
from flip_dist.models.sampling import AliasSampler
from flip_dist.train.steps import TextIds, finetune_inputs, pretrain_inputs, special_positions


@pytest.fixture(scope="module")
def data(ml100k_processed):
    reader = ShardReader(ml100k_processed, "train")
    batch = next(reader.batches(16, shuffle=True, seed=0))
    counts = np.load(ml100k_processed / "feature_counts.npy")
    return reader.manifest, batch, counts


def build(manifest, counts, name="full", seed=0, mlm_tied=True, icl_norm="layernorm", plm_layers=1):
    torch.manual_seed(seed)
    obj = objectives(name)
    plm, info = load_plm("minilm", num_layers=plm_layers)
    plm.eval()  # no dropout: gradient checks and overfitting are deterministic
    id_model = build_id_model("dcnv2", manifest.num_fields, 32)
    sparse = FlipSparse(manifest.num_features, manifest.fields, 32, 32 if obj.mtm else None)
    if sparse.nce is not None:
        sparse.nce.init_bias(counts)
    dense = FlipPretrainDense(plm, id_model, info.hidden_size, info.vocab_size, manifest.num_fields, obj,
                              icl_norm=icl_norm, mlm_tied=mlm_tied)
    dense.eval()
    sampler = AliasSampler(counts) if obj.mtm else None
    return obj, sparse, dense, sampler, TextIds(manifest.text_mask_id, info.vocab_size)


def losses_of(parts, batch, seed=0):
    obj, sparse, dense, sampler, text = parts
    gen = torch.Generator().manual_seed(seed)
    return dense(**pretrain_inputs(batch, sparse, sampler, obj, 0.15, 0.15, 25, text, gen))


def reaches(loss, params) -> bool:
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_gradients_reach_the_right_parameters(data):
    manifest, batch, counts = data
    parts = build(manifest, counts)
    _, sparse, dense, _, _ = parts
    out = losses_of(parts, batch)
    assert set(out) == {"mlm", "mtm", "icl", "total"}
    assert all(torch.isfinite(v) for v in out.values())
    assert reaches(out["mtm"], dense.plm.parameters()), "MTM reaches the PLM through cross-attention"
    assert reaches(out["mtm"], dense.id_model.parameters()), "MTM reaches the ID model through v^"
    assert reaches(out["mtm"], sparse.nce.parameters()), "MTM reaches the NCE output table"
    assert reaches(out["mlm"], dense.id_model.parameters()), "MLM reaches the ID model through [w^ (+) v]"
    assert reaches(out["mlm"], dense.plm.parameters())
    assert reaches(out["mlm"], sparse.embedding.parameters())
    assert not reaches(out["mlm"], dense.mtm.parameters())
    # The MLM decoder is tied to the PLM's word embeddings (as in BERT); its own layers are MLM's alone.
    assert dense.mlm.decoder.weight is dense.plm.get_input_embeddings().weight
    assert not reaches(out["mtm"], dense.mlm.transform.parameters())
    assert reaches(out["icl"], dense.plm.parameters()) and reaches(out["icl"], dense.id_model.parameters())


def test_the_mlm_decoder_can_have_an_output_layer_of_its_own(data):
    """model.mlm_tied=false: the paper's g_PLM read literally, a decoder the word embeddings do not share."""
    manifest, batch, counts = data
    parts = build(manifest, counts, mlm_tied=False)
    dense = parts[2]
    words = dense.plm.get_input_embeddings().weight
    assert dense.mlm.decoder.weight is not words and dense.mlm.decoder.weight.shape == words.shape
    out = losses_of(parts, batch)
    assert reaches(out["mlm"], [dense.mlm.decoder.weight])
    assert torch.isfinite(out["total"])


def test_without_joint_reconstruction_each_modality_is_alone(data):
    manifest, batch, counts = data
    parts = build(manifest, counts, "no_joint")
    _, sparse, dense, _, _ = parts
    out = losses_of(parts, batch)
    assert not reaches(out["mlm"], dense.id_model.parameters()), "MLM no longer sees v"
    assert not reaches(out["mtm"], dense.plm.parameters()), "MTM no longer attends over w"
    assert reaches(out["mlm"], dense.plm.parameters()) and reaches(out["mtm"], dense.id_model.parameters())


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_table_vii_variant_is_a_switch(data, name):
    manifest, batch, counts = data
    parts = build(manifest, counts, name)
    out = losses_of(parts, batch)
    obj = ABLATIONS[name]
    want = {k for k, on in (("mlm", obj.mlm), ("mtm", obj.mtm), ("icl", obj.icl)) if on} | {"total"}
    assert set(out) == want
    assert torch.isfinite(out["total"])
    parts_sum = sum(v for k, v in out.items() if k != "total")
    assert torch.allclose(out["total"], torch.as_tensor(parts_sum, dtype=out["total"].dtype))   # Eq. 14


def test_each_encoder_runs_on_masked_and_unmasked_rows_once(data):
    manifest, batch, counts = data
    parts = build(manifest, counts)
    _, _, dense, _, _ = parts
    calls = {"plm": [], "id": []}
    h1 = dense.plm.register_forward_hook(lambda m, a, k, o: calls["plm"].append(k["input_ids"].shape[0]),
                                         with_kwargs=True)
    h2 = dense.id_model.register_forward_hook(lambda m, a, o: calls["id"].append(a[0].shape[0]))
    losses_of(parts, batch)
    h1.remove(), h2.remove()
    assert calls == {"plm": [2 * len(batch)], "id": [2 * len(batch)]}


# l2 (cosine) is not the default: -m slow, to keep the default suite under 20 minutes.
@pytest.mark.parametrize("icl_norm", ["layernorm", pytest.param("l2", marks=pytest.mark.slow)])
def test_overfitting_one_real_batch_drives_every_loss_down(data, icl_norm):
    manifest, batch, counts = data
    # The whole MiniLM: cut to its first layers it gives every prompt the same [CLS] (test_icl_signal.py).
    parts = build(manifest, counts, icl_norm=icl_norm, plm_layers=0)
    _, sparse, dense, _, _ = parts
    params = list(dense.parameters()) + list(sparse.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    first = last = None
    for step in range(40):
        out = losses_of(parts, batch, seed=step % 2)   # two fixed maskings, alternating
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        row = {k: float(v.detach()) for k, v in out.items()}
        first = first or row
        last = row
    # InfoNCE on cosines at tau has a floor above 0: positives at +1, negatives at -1/(B-1). Dot
    # products of LayerNorm'd vectors are unbounded (|z|^2 = d): their floor is 0.
    B, tau = len(batch), 0.7
    icl_floor = float(np.log1p((B - 1) * np.exp(-(1 + 1 / (B - 1)) / tau))) if icl_norm == "l2" else 0.0
    floor = {"icl": icl_floor, "mlm": 0.0, "mtm": 0.0}
    for k in ("mlm", "mtm", "icl"):
        assert last[k] - floor[k] < 0.6 * (first[k] - floor[k]), (k, first[k], last[k], floor[k])


def test_field_masking_masks_whole_values(data):
    _, batch, _ = data
    gen = torch.Generator().manual_seed(1)
    tm = mask_text_fields(batch.input_ids, batch.field_spans, 0.3, 103, gen)
    masked = tm.labels != IGNORE
    F = batch.field_spans.shape[1]
    for i in range(len(batch)):
        whole = 0
        for f in range(F):
            s, e = batch.field_spans[i, f].tolist()
            m = masked[i, s:e]
            assert bool(m.all()) or not bool(m.any()), "a value is masked whole or not at all"
            whole += int(m.all())
        assert whole == max(1, round(0.3 * F))
        assert int(masked[i].sum()) == int((tm.input_ids[i] == 103).sum())
        assert torch.equal(tm.labels[i][masked[i]], batch.input_ids[i][masked[i]])


def test_token_and_tabular_masking(data):
    _, batch, _ = data
    gen = torch.Generator().manual_seed(2)
    special = special_positions(batch.attention_mask)
    tm = mask_text_tokens(batch.input_ids, batch.attention_mask, special, 0.15, 103, 30522, gen)
    chosen = tm.labels != IGNORE
    assert not (chosen & special).any() and not (chosen & (batch.attention_mask == 0)).any()
    assert (chosen.sum(1) >= 1).all()
    ids, masked = mask_tab_fields(batch.feature_ids, 0.15, MASK_ID, gen)
    assert (masked.sum(1) == 1).all()                      # max(1, round(0.15 * 8)) = 1
    assert (ids[masked] == MASK_ID).all() and torch.equal(ids[~masked], batch.feature_ids[~masked])


def test_finetune_heads_alpha_and_losses(data):
    manifest, batch, _ = data
    plm, info = load_plm("minilm", num_layers=1)
    id_model = build_id_model("dcnv2", manifest.num_fields, 32)
    sparse = FlipSparse(manifest.num_features, manifest.fields, 32, None)
    flip = FlipFinetuneDense("flip", id_model, plm, info.hidden_size)
    out = flip(**finetune_inputs(batch, sparse))
    a = float(flip.alpha)
    assert 0.0 <= a <= 1.0 and a == pytest.approx(0.5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert torch.allclose(out["logit"], a * out["logit_id"] + (1 - a) * out["logit_plm"])     # Eq. 16
    assert torch.allclose(out["loss"], bce(out["logit"], batch.labels) + out["loss_id"] + out["loss_plm"])  # Eq. 17
    only_id = FlipFinetuneDense("flip_id", id_model, plm, info.hidden_size)
    assert only_id.plm is None and "logit_plm" not in only_id(**finetune_inputs(batch, sparse))
    only_plm = FlipFinetuneDense("flip_plm", id_model, plm, info.hidden_size)
    assert only_plm.id_model is None and "logit_id" not in only_plm(**finetune_inputs(batch, None))


def test_metrics_match_sklearn():
    from sklearn.metrics import log_loss, roc_auc_score

    from flip_dist.eval.metrics import CTRMetrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    logits = rng.normal(size=5000) + labels
    m = CTRMetrics()
    for i in range(0, 5000, 700):
        m.update(torch.tensor(logits[i:i + 700]), torch.tensor(labels[i:i + 700]))
    got = m.compute()
    p = 1 / (1 + np.exp(-logits))
    assert got["auc"] == pytest.approx(roc_auc_score(labels, p), abs=1e-6)
    assert got["logloss"] == pytest.approx(log_loss(labels, p), abs=1e-6)
