"""The global feature id space on real ML-100K values."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from flip_dist.data.vocab import MASK_ID, NUM_RESERVED, PAD_ID, Vocabulary, oov_id


def test_layout_order_and_min_count(ml100k_staging, tmp_path):
    reader, res = ml100k_staging
    fields = reader.spec.fields
    v = Vocabulary.build(res.table, fields, min_count=5)
    t = v.table.sort_by("feature_id")
    assert t["feature_id"].to_pylist() == list(range(v.num_features))
    assert t["value"][PAD_ID].as_py() == "<PAD>" and t["value"][MASK_ID].as_py() == "<MASK>"
    assert v.offsets[0] == NUM_RESERVED + len(fields)
    raw_counts = {f: {} for f in fields}
    for f in fields:
        for val in res.table[f].to_pylist():
            raw_counts[f][val] = raw_counts[f].get(val, 0) + 1
    for i, f in enumerate(fields):
        block = t.slice(v.offsets[i], v.offsets[i + 1] - v.offsets[i])
        counts = block["count"].to_numpy()
        assert np.all(counts[:-1] >= counts[1:]), "most frequent first"
        assert counts.min(initial=5) >= 5
        kept = {k for k, c in raw_counts[f].items() if c >= 5}
        assert set(block["value"].to_pylist()) == kept
        assert t["count"][oov_id(i)].as_py() == sum(c for c in raw_counts[f].values() if c < 5)
    ids = v.encode(res.table)
    for i, f in enumerate(fields):
        rare = np.array([raw_counts[f][x] < 5 for x in res.table[f].to_pylist()])
        assert np.all(ids[rare, i] == oov_id(i)) and np.all(ids[~rare, i] != oov_id(i))
    assert v.counts().sum() == res.table.num_rows * len(fields)

    v.save(tmp_path)
    loaded = Vocabulary.load(tmp_path, fields, v.offsets.tolist())
    np.testing.assert_array_equal(loaded.encode(res.table), ids)
    np.testing.assert_array_equal(np.load(tmp_path / "feature_counts.npy"), v.counts())


def test_encode_matches_a_plain_dict_and_unseen_values_go_to_oov(ml100k_staging):
    reader, res = ml100k_staging
    fields = reader.spec.fields
    train, test = res.table.slice(0, 50_000), res.table.slice(50_000)
    v = Vocabulary.build(train, fields, min_count=1)
    lookup = {(r["field"], r["value"]): r["feature_id"] for r in v.table.to_pylist()}
    got = v.encode(test)
    for j, f in enumerate(fields):
        want = [lookup.get((f, x), oov_id(j)) for x in test[f].to_pylist()]
        assert got[:, j].tolist() == want
    assert (got[:, 0] == oov_id(0)).any()


def test_empty_field_vocabulary_maps_everything_to_oov():
    t = pa.table({"a": ["x", "y"]})
    v = Vocabulary.build(t, ["a"], min_count=3)
    assert v.num_features == NUM_RESERVED + 1
    assert v.encode(pa.table({"a": ["x", "z"]})).tolist() == [[oov_id(0)], [oov_id(0)]]
