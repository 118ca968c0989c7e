"""A processed dataset that disagrees with its manifest fails before training, naming the file or
key: row counts, feature ids beyond num_features, feature_counts.npy, a missing column, a shard that
cannot be read. A run never ends with exit 0 and no export."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from flip_dist.data.shards import validate_dataset
from flip_dist.errors import FlipDataError


@pytest.fixture()
def data(ml100k_processed, tmp_path):
    return shutil.copytree(ml100k_processed, tmp_path / "data")


def _edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _first_shard(folder):
    return sorted((folder / "train").glob("*.parquet"))[0]


def _damage_rows(folder):
    _edit_manifest(folder, num_train=json.loads((folder / "manifest.json").read_text())["num_train"] + 1000)


def _damage_ids(folder):
    """The manifest and frequencies of a 100-feature vocabulary beside shards of a bigger one."""
    _edit_manifest(folder, num_features=100)
    np.save(folder / "feature_counts.npy", np.load(folder / "feature_counts.npy")[:100])


def _damage_counts(folder):
    np.save(folder / "feature_counts.npy", np.ones(7, dtype=np.int64))


def _drop_counts(folder):
    (folder / "feature_counts.npy").unlink()


def _damage_column(folder):
    path = _first_shard(folder)
    pq.write_table(pq.read_table(path).drop_columns(["field_spans"]), path)


def _damage_shard(folder):
    path = _first_shard(folder)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_keys(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["text_mask_id"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


CASES = {
    "row count": (_damage_rows, r"key 'num_train': \d+ rows in train/ but manifest says"),
    "ids beyond num_features": (_damage_ids, r"shard-00000\.parquet: key 'num_features': feature ids reach"),
    "feature_counts shape": (_damage_counts, r"feature_counts\.npy: key 'num_features': has shape \(7,\)"),
    "feature_counts missing": (_drop_counts, r"feature_counts\.npy: missing"),
    "column missing": (_damage_column, r"shard-00000\.parquet: key 'field_spans': column must be"),
    "shard unreadable": (_damage_shard, r"shard-00000\.parquet: shard cannot be read"),
    "manifest key missing": (_damage_keys, r"manifest\.json: key 'text_mask_id': manifest lacks a key training needs"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_dataset_that_disagrees_with_its_manifest_is_named(data, kind, tally):
    damage, message = CASES[kind]
    damage(data)
    with pytest.raises(FlipDataError, match=message):
        validate_dataset(data, max_rows_per_shard=256, for_training=True)
    tally("bad_input")


def test_training_on_it_fails_before_any_worker_starts(data, tmp_path):
    from flip_dist.distributed.trainer import run_stage
    from reliability.helpers import small_dist_config

    _damage_shard(data)
    with pytest.raises(FlipDataError, match="shard cannot be read"):
        run_stage(small_dist_config(tmp_path), "pretrain", data)
    assert not (tmp_path / "pre").exists()


def test_a_shard_that_vanishes_during_a_run_is_named(data, ray_local, tally):
    """A shard deleted after the run planned its epochs (preflight passed): the rank's stream stops
    with an error naming the file, instead of training on fewer rows and exiting 0."""
    from flip_dist.data.stream import RankStream, list_shards

    stream = RankStream(list_shards(data, "train"), rank=0, world=1, batch_size=256, window_rows=0, seed=0,
                        pad_id=0)
    gone = _first_shard(data)
    gone.unlink()
    with pytest.raises(FlipDataError, match=f"{gone.name}: reading the train shards failed"):
        for _ in stream.batches(epoch=0):
            pass
    tally("bad_input")
