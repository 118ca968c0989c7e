"""The ID side of FLIP: feature ids -> KJT -> TorchRec table -> E -> each of the nine ID models.

One parametrised family over all models (shapes, finite, gradients everywhere, overfits a real
MovieLens-100K batch), plus the embedding layer's contract that the distributed runtime relies on.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as nnf

from flip_dist.errors import FlipConfigError
from flip_dist.models.embedding import TABLE_NAME, FeatureEmbedding, feature_kjt
from flip_dist.models.id_models import ID_MODELS, IDModel, build_id_model

NINE = {"dcnv2", "deepfm", "autoint", "afm", "pnn", "widedeep", "dcn", "xdeepfm", "afn"}
FIELDS = ["user_id", "gender", "age", "occupation", "zipcode", "movie_id", "title", "genre"]
# Smaller settings only where the defaults cost seconds a step on 2 CPUs (same structure).
FAST = {"afn": {"log_neurons": 32}, "xdeepfm": {"cin_layers": (16, 16)}}


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared 2-CPU box: one intra-op thread is steady, two can stall ~10x
    when another process holds a core. Restored afterwards for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real_batch(ml100k_processed):
    """256 real training rows: (manifest, feature ids (256, F) int64, labels (256,) float)."""
    manifest = json.loads((ml100k_processed / "manifest.json").read_text())
    files = sorted((ml100k_processed / "train").glob("*.parquet"))
    table = pq.ParquetDataset(files).read(columns=["feature_ids", "label"]).slice(0, 256)
    ids = np.stack(table.column("feature_ids").to_numpy(zero_copy_only=False)).astype(np.int64)
    labels = table.column("label").to_numpy().astype(np.float32)
    assert ids.shape == (256, manifest["num_fields"]) and 0 < labels.mean() < 1
    assert ids.min() >= 0 and ids.max() < manifest["num_features"]
    return manifest, torch.from_numpy(ids), torch.from_numpy(labels)


def test_registry_is_the_nine_models_of_table_ii():
    assert set(ID_MODELS) == NINE


def test_unknown_model_or_hparam_is_a_config_error():
    with pytest.raises(FlipConfigError, match="'nope'.*dcnv2"):
        build_id_model("nope", 8, 32)
    with pytest.raises(FlipConfigError, match="cross_layerz"):
        build_id_model("dcnv2", 8, 32, cross_layerz=2)


@pytest.mark.parametrize("name", sorted(NINE))
def test_id_model(name, real_batch):
    """Default hparams: shapes, finite, logit = head(v), gradients reach every parameter and
    the embeddings; then (FAST settings) overfits 256 real rows with the embedding table."""
    torch.manual_seed(0)
    model = build_id_model(name, num_fields=8, embed_dim=32)
    assert isinstance(model, IDModel)
    emb = (0.1 * torch.randn(16, 8, 32)).requires_grad_()
    v, logit = model(emb)
    assert v.shape == (16, model.out_dim) and logit.shape == (16,)
    assert torch.isfinite(v).all() and torch.isfinite(logit).all()
    torch.testing.assert_close(logit, model.head(v).squeeze(-1))
    logit.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not silent, f"{name}: no gradient reaches {silent}"
    with pytest.raises(ValueError, match="expects embeddings"):
        model(torch.zeros(2, 7, 32))

    manifest, ids, labels = real_batch
    torch.manual_seed(0)
    table = FeatureEmbedding(manifest["num_features"], manifest["fields"])
    model = build_id_model(name, len(manifest["fields"]), 32, **FAST.get(name, {}))
    opt = torch.optim.Adam([*table.parameters(), *model.parameters()], lr=1e-3)
    kjt = feature_kjt(ids, manifest["fields"])
    losses = []
    for _ in range(100):
        _, logit = model(table(kjt))
        loss = nnf.binary_cross_entropy_with_logits(logit, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.5 * losses[0], \
        f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_feature_kjt_matches_ids():
    ids = torch.tensor([[3, 10, 11], [4, 10, 12]], dtype=torch.int32)
    kjt = feature_kjt(ids, ["a", "b", "c"])
    assert kjt.keys() == ["a", "b", "c"] and kjt.stride() == 2
    assert kjt.values().dtype == torch.int64
    assert kjt.values().tolist() == [3, 4, 10, 10, 11, 12]  # key-major
    assert kjt.lengths().tolist() == [1] * 6
    per_key = kjt.to_dict()
    for f, key in enumerate("abc"):
        assert per_key[key].values().tolist() == ids[:, f].tolist()
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        feature_kjt(ids, ["a", "b"])
    with pytest.raises(TypeError, match="integer"):
        feature_kjt(ids.float(), ["a", "b", "c"])


def test_feature_embedding_reads_one_shared_table():
    torch.manual_seed(0)
    layer = FeatureEmbedding(num_features=20_000, fields=FIELDS[:3])
    weight = layer.ebc.embedding_bags[TABLE_NAME].weight
    assert weight.shape == (20_000, 32) and len(layer.ebc.embedding_bags) == 1
    assert abs(weight.std().item() - 1e-4) < 3e-6 and abs(weight.mean().item()) < 3e-6
    ids = torch.tensor([[5, 19_999, 5], [0, 7, 123]])
    e = layer(feature_kjt(ids, FIELDS[:3]))
    assert e.shape == (2, 3, 32)
    torch.testing.assert_close(e, weight[ids], rtol=0, atol=0)  # each output is its id's row
    torch.testing.assert_close(e[0, 0], e[0, 2], rtol=0, atol=0)  # id 5 in two fields
    e.sum().backward()
    touched = weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert touched == [0, 5, 7, 123, 19_999]


def test_feature_embedding_on_meta_leaves_init_to_the_table_config():
    layer = FeatureEmbedding(num_features=1_000_000, fields=FIELDS, embedding_dim=16, device="meta")
    assert layer.ebc.embedding_bags[TABLE_NAME].weight.is_meta
    (config,) = layer.ebc.embedding_bag_configs()
    assert config.feature_names == FIELDS and config.init_fn is not None
    sample = torch.empty(4096, 16)
    config.init_fn(sample)  # what TorchRec calls on each shard once materialised
    assert abs(sample.std().item() - 1e-4) < 5e-6
