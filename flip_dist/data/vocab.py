"""The global feature id space and train-split feature frequencies (for the NCE sampler).

Layout: 0 = padding, 1 = the shared tabular <MASK> (paper IV-C1), 2..F+1 = one OOV id per field,
then each field's values in a contiguous block, most frequent first. Values seen fewer than
`min_count` times in train, and test values unseen in train, map to their field's OOV id.
Lookup hashes values (64-bit, pandas' SipHash) and binary-searches a sorted array: no per-value
Python dicts, so millions of values cost tens of MB per worker, not GB.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flip_dist.errors import FlipDataError

PAD_ID = 0
MASK_ID = 1
NUM_RESERVED = 2  # before the per-field OOV ids


def oov_id(field_index: int) -> int:
    return NUM_RESERVED + field_index


def hash_values(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Stable 64-bit hashes of string values (same in every process and run)."""
    arr = values.to_numpy(zero_copy_only=False) if not isinstance(values, np.ndarray) else values
    return pd.util.hash_array(arr.astype(object), categorize=False).view(np.int64)


def value_counts(column: pa.Array | pa.ChunkedArray) -> pa.Table:
    """(value, count) rows: one per distinct value of the column."""
    vc = pc.value_counts(column)
    return pa.table({"value": vc.field("values"), "count": vc.field("counts").cast(pa.int64())})


def merge_counts(tables: Sequence[pa.Table]) -> pa.Table:
    """(value, count) tables in, one row per value out, counts summed."""
    return pa.concat_tables(tables).group_by("value").aggregate([("count", "sum")]) \
        .rename_columns(["value", "count"])


def _hash_index(field: str, values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted 64-bit hashes of a field's values, and each hash's position in `values`."""
    h = hash_values(values)
    order = np.argsort(h, kind="stable")
    h = h[order]
    if len(h) > 1 and np.any(h[1:] == h[:-1]):
        dup = int(np.flatnonzero(h[1:] == h[:-1])[0])
        raise FlipDataError("64-bit hash collision between two distinct values; rename one of them",
                            key=f"{field}={values[int(order[dup])].as_py()}")
    return h, order


@dataclass(frozen=True)
class FieldValues:
    """One field's kept train values, most frequent first, with their lookup index; built where the
    field was counted (a Ray task), so the driver only lays the fields' blocks end to end."""

    field: str
    values: pa.Array          # string, most frequent first (ties by value)
    counts: np.ndarray        # int64 train count of each kept value
    oov_count: int            # train occurrences of values under min_count
    sorted_hashes: np.ndarray
    positions: np.ndarray     # index into `values` of each sorted hash

    @classmethod
    def keep(cls, field: str, counts: pa.Table, min_count: int) -> FieldValues:
        """From merged (value, count) rows of the train split."""
        kept = counts.filter(pc.greater_equal(counts["count"], min_count))
        kept = kept.sort_by([("count", "descending"), ("value", "ascending")])
        total = int(pc.sum(counts["count"]).as_py() or 0)
        values = kept["value"].combine_chunks()
        n = kept["count"].to_numpy().astype(np.int64)
        return cls(field, values, n, total - int(n.sum()), *_hash_index(field, values))


@dataclass
class Vocabulary:
    """Feature ids per field, with the lookup tables the encoders need."""

    fields: tuple[str, ...]
    table: pa.Table          # feature_id, field, value, count (train) for every id, specials included
    offsets: np.ndarray      # first id of each field's value block; offsets[F] = num_features
    sorted_hashes: list[np.ndarray]
    hash_to_id: list[np.ndarray]

    @property
    def num_features(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def build(cls, train: pa.Table, fields: Sequence[str], min_count: int) -> Vocabulary:
        """From train rows held in memory (tests, small data); `preprocess` counts field by field."""
        return cls.from_fields([FieldValues.keep(f, value_counts(train[f]), min_count) for f in fields])

    @classmethod
    def from_fields(cls, fields: Sequence[FieldValues]) -> Vocabulary:
        """Lay the fields' blocks out after the reserved ids, in field order."""
        F = len(fields)
        offsets = np.cumsum([NUM_RESERVED + F] + [len(f.values) for f in fields]).astype(np.int64)
        specials = pa.table({
            "feature_id": pa.array([PAD_ID, MASK_ID] + [oov_id(i) for i in range(F)], pa.int64()),
            "field": pa.array(["", ""] + [f.field for f in fields], pa.string()),
            "value": pa.array(["<PAD>", "<MASK>"] + ["<OOV>"] * F, pa.string()),
            "count": pa.array([0, 0] + [f.oov_count for f in fields], pa.int64())})
        blocks = [pa.table({"feature_id": pa.array(np.arange(offsets[i], offsets[i + 1], dtype=np.int64)),
                            "field": pa.array([f.field] * len(f.values), pa.string()),
                            "value": f.values.cast(pa.string()), "count": pa.array(f.counts, pa.int64())})
                  for i, f in enumerate(fields)]
        return cls(tuple(f.field for f in fields), pa.concat_tables([specials] + blocks), offsets,
                   [f.sorted_hashes for f in fields],
                   [offsets[i] + f.positions for i, f in enumerate(fields)])

    @classmethod
    def from_table(cls, table: pa.Table, fields: Sequence[str], offsets: np.ndarray) -> Vocabulary:
        sorted_hashes, hash_to_id = [], []
        for i, f in enumerate(fields):
            block = table.slice(offsets[i], offsets[i + 1] - offsets[i])
            h, order = _hash_index(f, block["value"])
            sorted_hashes.append(h)
            hash_to_id.append(block["feature_id"].to_numpy()[order])
        return cls(tuple(fields), table, offsets, sorted_hashes, hash_to_id)

    def encode(self, table: pa.Table) -> np.ndarray:
        """(rows, F) int64 global feature ids of a staging table; unseen values -> field OOV."""
        out = np.empty((table.num_rows, len(self.fields)), dtype=np.int64)
        for i, f in enumerate(self.fields):
            h = hash_values(table[f])
            sh = self.sorted_hashes[i]
            pos = np.searchsorted(sh, h)
            pos_c = np.minimum(pos, max(len(sh) - 1, 0))
            hit = (pos < len(sh)) & (sh[pos_c] == h) if len(sh) else np.zeros(len(h), bool)
            out[:, i] = np.where(hit, self.hash_to_id[i][pos_c] if len(sh) else 0, oov_id(i))
        return out

    def counts(self) -> np.ndarray:
        """Train-split frequency of every feature id (index = id), the NCE noise distribution."""
        return self.table.sort_by("feature_id")["count"].to_numpy()

    def save(self, folder: Path) -> None:
        pq.write_table(self.table, Path(folder) / "vocab.parquet")
        np.save(Path(folder) / "feature_counts.npy", self.counts())

    @classmethod
    def load(cls, folder: Path, fields: Sequence[str], offsets: Sequence[int]) -> Vocabulary:
        """From a processed dataset folder; `offsets` is the manifest's `field_offsets`."""
        table = pq.read_table(Path(folder) / "vocab.parquet").sort_by("feature_id")
        return cls.from_table(table, fields, np.asarray(offsets, dtype=np.int64))
