"""The data contract: validate_dataset on real and synthetic outputs, and what it rejects."""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flip_dist.data.shards import shard_files, validate_dataset
from flip_dist.data.synthetic_shards import write_synthetic_shards
from flip_dist.errors import FlipDataError


def test_real_ml100k_output_passes(ml100k_processed):
    assert validate_dataset(ml100k_processed).num_samples == 72_855


def test_synthetic_shards_follow_the_contract(tmp_path, minilm):
    out = tmp_path / "synth"
    m = write_synthetic_shards(out, rows=30_000, features=50_000, rows_per_shard=7_000, progress=False,
                               max_length=64)
    assert validate_dataset(out).to_json() == m
    assert (m["num_train"], m["num_test"]) == (27_000, 3_000)
    assert m["num_features"] <= 50_000 and m["num_fields"] == 15
    counts = np.load(out / "feature_counts.npy")
    train = pq.ParquetDataset(shard_files(out, "train")).read()
    fids = np.stack(train["feature_ids"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(counts, np.bincount(fids.reshape(-1), minlength=m["num_features"]))
    # Zipf: the most frequent user is far above the median one.
    users = np.bincount(fids[:, 0])
    assert users.max() > 20 * max(np.median(users[users > 0]), 1)
    # The same feature always reads as the same tokens, and truncation at 64 empties some spans.
    row = train.slice(0, 200).to_pylist()
    seen = {}
    for r in row:
        for k in range(15):
            s, e = r["field_spans"][2 * k: 2 * k + 2]
            if s < e:
                toks = tuple(r["input_ids"][s:e])
                assert seen.setdefault(r["feature_ids"][k], toks) == toks
    assert m["rows_with_truncated_fields"]["train"] > 0
    assert minilm.decode(row[0]["input_ids"][:6]).startswith("[CLS] user id is")
    # Labels carry signal: positives are more frequent for the values with the most positives.
    assert 0.05 < m["positive_rate"]["train"] < 0.95


def test_corrupt_shards_are_named(ml100k_processed, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(ml100k_processed, out)
    path = shard_files(out, "test")[0]
    t = pq.read_table(path)
    fids = t["feature_ids"].combine_chunks().flatten().to_numpy().copy().reshape(-1, 8)
    fids[5, 2] = fids[5, 3]  # an occupation id in the age column
    t = t.set_column(1, "feature_ids", pa.FixedSizeListArray.from_arrays(pa.array(fids.reshape(-1)), 8))
    pq.write_table(t, path)
    with pytest.raises(FlipDataError, match=r"parquet: line 5: feature id outside its field's block"):
        validate_dataset(out)
    (out / "manifest.json").unlink()
    with pytest.raises(FlipDataError, match="no manifest.json"):
        validate_dataset(out)
