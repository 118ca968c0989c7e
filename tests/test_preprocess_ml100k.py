"""End to end on real MovieLens-100K: counts, split, vocabulary, and exact field spans."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flip_dist.data.manifest import read_manifest
from flip_dist.data.shards import shard_files
from flip_dist.data.vocab import MASK_ID, PAD_ID, oov_id


@pytest.fixture(scope="module")
def manifest(ml100k_processed):
    return read_manifest(ml100k_processed).to_json()


@pytest.fixture(scope="module")
def splits(ml100k_processed):
    return {s: pq.ParquetDataset(shard_files(ml100k_processed, s)).read() for s in ("train", "test")}


def test_counts_follow_the_paper_rules(manifest, ml100k_raw):
    # 100,000 ratings, of which rating == 3 are dropped (paper IV-A); the rest labelled > 3.
    ratings = np.loadtxt(ml100k_raw / "ml-100k.inter", skiprows=1, usecols=2)
    assert len(ratings) == 100_000
    kept = ratings[ratings != 3]
    assert manifest["dropped"]["dropped_rating_3"] == int(np.sum(ratings == 3))
    assert manifest["num_samples"] == len(kept) == 72_855
    assert manifest["num_train"] == int(len(kept) * 0.9)
    assert manifest["num_train"] + manifest["num_test"] == manifest["num_samples"]
    assert manifest["num_fields"] == 8
    assert manifest["fields"] == ["user_id", "gender", "age", "occupation", "zipcode", "movie_id", "title", "genre"]
    pos = np.mean(kept > 3)
    got = (manifest["positive_rate"]["train"] * manifest["num_train"]
           + manifest["positive_rate"]["test"] * manifest["num_test"]) / manifest["num_samples"]
    assert got == pytest.approx(pos, abs=1e-5)
    assert manifest["bad_rows"]["total"] == 0


def test_split_is_chronological(ml100k_staging, splits):
    _, res = ml100k_staging
    time_of = dict(zip(res.table["row_id"].to_pylist(), res.table["order"].to_pylist()))
    train_t = [time_of[r] for r in splits["train"]["row_id"].to_pylist()]
    test_t = [time_of[r] for r in splits["test"]["row_id"].to_pylist()]
    assert max(train_t) <= min(test_t)
    ids = splits["train"]["row_id"].to_pylist() + splits["test"]["row_id"].to_pylist()
    assert len(set(ids)) == len(ids) == len(time_of)


def test_train_rows_are_stored_in_a_random_order(ml100k_staging, ml100k_processed, splits):
    """Batches read in stored order are i.i.d. draws, as the paper's: a batch's rows come from
    the whole time range of the split, not from one stretch of it (the test split stays in order)."""
    from flip_dist.data.batches import ShardReader

    _, res = ml100k_staging
    time_of = dict(zip(res.table["row_id"].to_pylist(), res.table["order"].to_pylist()))
    reader = ShardReader(ml100k_processed, "train")
    train_t = np.array([time_of[r] for r in splits["train"]["row_id"].to_pylist()])
    rank = {t: i for i, t in enumerate(np.unique(train_t))}
    n = len(rank)
    for idx in list(reader.batch_indices(256))[:: 40]:          # batches in the order training reads them
        ranks = np.array([rank[time_of[r]] for r in reader.take(idx).row_ids.tolist()]) / n
        assert ranks.std() > 0.2, ranks.std()                     # uniform: 0.29; time order: ~0.001
        assert ranks.max() - ranks.min() > 0.8
    position = np.arange(len(train_t))
    assert abs(np.corrcoef(position, train_t)[0, 1]) < 0.03       # no drift in time along the file


def test_train_order_is_seeded_and_uniform(tmp_path):
    from flip_dist.data.preprocess import TrainOrder

    table = pa.table({"row_id": np.arange(10_000)})
    orders = []
    for run in range(2):
        pieces, out = tmp_path / f"pieces{run}", tmp_path / f"out{run}"
        pieces.mkdir(), out.mkdir()
        order = TrainOrder(seed=7, buckets=3)
        for unit in range(4):
            order.deal(table.slice(unit * 2500, 2500), unit, pieces)
        assert sum(order.write_bucket(str(pieces), b, str(out)) for b in range(3)) == 10_000
        orders.append(pq.ParquetDataset(sorted(str(p) for p in out.iterdir())).read()["row_id"].to_numpy())
    np.testing.assert_array_equal(orders[0], orders[1])            # the same order on a rerun
    assert sorted(orders[0]) == list(range(10_000))                 # every row once
    assert abs(np.corrcoef(np.arange(10_000), orders[0])[0, 1]) < 0.05


def test_columns_and_types(splits, manifest):
    t = splits["train"]
    assert t.schema.field("feature_ids").type == pa.list_(pa.int32(), manifest["num_fields"])
    assert t.schema.field("input_ids").type == pa.list_(pa.int32())
    assert t.schema.field("field_spans").type == pa.list_(pa.int32(), 2 * manifest["num_fields"])
    assert set(np.unique(t["label"].to_numpy())) == {0, 1}


def test_feature_ids_and_frequencies(ml100k_processed, manifest, splits):
    F, M = manifest["num_fields"], manifest["num_features"]
    offsets = manifest["field_offsets"]
    train = np.stack(splits["train"]["feature_ids"].to_numpy(zero_copy_only=False))
    test = np.stack(splits["test"]["feature_ids"].to_numpy(zero_copy_only=False))
    assert train.shape[1] == F and train.min() >= 0 and max(train.max(), test.max()) < M
    for f in range(F):
        lo, hi = offsets[f], offsets[f + 1]
        assert np.all((train[:, f] >= lo) & (train[:, f] < hi)), "train uses only its field's block"
        assert np.all(((test[:, f] >= lo) & (test[:, f] < hi)) | (test[:, f] == oov_id(f)))
    assert not np.isin([PAD_ID, MASK_ID], train).any()
    counts = np.load(ml100k_processed / "feature_counts.npy")
    assert counts.shape == (M,)
    np.testing.assert_array_equal(counts, np.bincount(train.reshape(-1), minlength=M))
    # Unseen users and movies exist in the chronological test split and map to OOV.
    assert np.sum(test[:, 0] == oov_id(0)) > 0


def test_vocab_values_match_raw_text(ml100k_processed, ml100k_staging, splits):
    reader, res = ml100k_staging
    vocab = pq.read_table(ml100k_processed / "vocab.parquet").sort_by("feature_id")
    values = vocab["value"].to_pylist()
    raw = {r["row_id"]: r for r in res.table.to_pylist()}
    rows = splits["train"].slice(0, 300).to_pylist()
    for row in rows:
        for f, fid in zip(reader.spec.fields, row["feature_ids"]):
            assert values[fid] == raw[row["row_id"]][f]


def test_every_span_decodes_to_its_value(ml100k_processed, ml100k_staging, splits, minilm):
    """For every field of sampled rows, the decoded token span equals the value's own tokens."""
    reader, res = ml100k_staging
    raw = {r["row_id"]: r for r in res.table.to_pylist()}
    rng = np.random.default_rng(0)
    checked = 0
    for _split, t in splits.items():
        for i in rng.choice(t.num_rows, size=250, replace=False):
            row = t.slice(int(i), 1).to_pylist()[0]
            ids, spans = row["input_ids"], row["field_spans"]
            assert ids[0] == minilm.cls_token_id and ids[-1] == minilm.sep_token_id
            for k, f in enumerate(reader.spec.fields):
                s, e = spans[2 * k], spans[2 * k + 1]
                assert 0 < s < e < len(ids), (f, s, e)
                value = raw[row["row_id"]][f]
                assert ids[s:e] == minilm(value, add_special_tokens=False)["input_ids"], (f, value)
                assert minilm.decode(ids[s:e]) == minilm.decode(minilm(value, add_special_tokens=False)["input_ids"])
                checked += 1
    assert checked == 500 * 8


def test_readable_by_datasets_and_tokenizer_offline(ml100k_processed, manifest):
    import datasets
    from transformers import AutoTokenizer

    ds = datasets.load_dataset("parquet", data_files={"test": shard_files(ml100k_processed, "test")})["test"]
    assert len(ds) == manifest["num_test"]
    tok = AutoTokenizer.from_pretrained(manifest["tokenizer"], local_files_only=True)
    assert "user id is" in tok.decode(ds[0]["input_ids"])


def test_output_is_complete_and_nothing_temporary_left(ml100k_processed, manifest):
    parent = ml100k_processed.parent
    assert [p.name for p in parent.iterdir()] == [ml100k_processed.name]
    names = {p.name for p in ml100k_processed.iterdir()}
    assert names == {"manifest.json", "vocab.parquet", "feature_counts.npy", "train", "test"}
    assert json.loads((ml100k_processed / "manifest.json").read_text())["num_samples"] == manifest["num_samples"]
