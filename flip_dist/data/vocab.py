"""The global feature id space and train-split feature frequencies (for the NCE sampler).

Layout: 0 = padding, 1 = the shared tabular <MASK> (paper IV-C1), 2..F+1 = one OOV id per field,
then each field's values in a contiguous block, most frequent first. Values seen fewer than
`min_count` times in train, and test values unseen in train, map to their field's OOV id.
Lookup hashes values (64-bit, pandas' SipHash) and binary-searches a sorted array: no per-value
Python dicts, so millions of values cost tens of MB per worker, not GB.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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


def count_values(table: pa.Table, fields: Sequence[str]) -> pa.Table:
    """Per-field value counts of one staging table, as (field, value, count) rows."""
    pieces = []
    for f in fields:
        vc = pc.value_counts(table[f])
        pieces.append(pa.table({"field": pa.array([f] * len(vc), pa.string()),
                                "value": vc.field("values"), "count": vc.field("counts")}))
    return pa.concat_tables(pieces) if pieces else pa.table({"field": [], "value": [], "count": []})


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
    def build(cls, counts: pa.Table, fields: Sequence[str], min_count: int) -> "Vocabulary":
        """From merged (field, value, count) rows of the train split."""
        fields = tuple(fields)
        counts = counts.group_by(["field", "value"]).aggregate([("count", "sum")]) \
            .rename_columns(["field", "value", "count"])
        rows = [pa.table({"feature_id": pa.array([PAD_ID, MASK_ID], pa.int64()),
                          "field": pa.array(["", ""], pa.string()),
                          "value": pa.array(["<PAD>", "<MASK>"], pa.string()),
                          "count": pa.array([0, 0], pa.int64())})]
        blocks, offsets = [], [NUM_RESERVED + len(fields)]
        oov_counts = []
        for f in fields:
            sub = counts.filter(pc.equal(counts["field"], f))
            keep = sub.filter(pc.greater_equal(sub["count"], min_count))
            oov_counts.append(int(pc.sum(sub["count"]).as_py() or 0) - int(pc.sum(keep["count"]).as_py() or 0))
            keep = keep.sort_by([("count", "descending"), ("value", "ascending")])
            ids = pa.array(np.arange(offsets[-1], offsets[-1] + len(keep), dtype=np.int64))
            blocks.append(pa.table({"feature_id": ids, "field": keep["field"], "value": keep["value"],
                                    "count": keep["count"].cast(pa.int64())}))
            offsets.append(offsets[-1] + len(keep))
        rows.append(pa.table({"feature_id": pa.array([oov_id(i) for i in range(len(fields))], pa.int64()),
                              "field": pa.array(list(fields), pa.string()),
                              "value": pa.array(["<OOV>"] * len(fields), pa.string()),
                              "count": pa.array(oov_counts, pa.int64())}))
        table = pa.concat_tables(rows + blocks)
        return cls.from_table(table, fields, np.asarray(offsets, dtype=np.int64))

    @classmethod
    def from_table(cls, table: pa.Table, fields: Sequence[str], offsets: np.ndarray) -> "Vocabulary":
        sorted_hashes, hash_to_id = [], []
        for i, f in enumerate(fields):
            block = table.slice(offsets[i], offsets[i + 1] - offsets[i])
            h = hash_values(block["value"])
            order = np.argsort(h, kind="stable")
            h = h[order]
            if len(h) > 1 and np.any(h[1:] == h[:-1]):
                dup = int(np.flatnonzero(h[1:] == h[:-1])[0])
                raise FlipDataError("64-bit hash collision between two distinct values; "
                                    "rename one of them", key=f"{f}={block['value'][order[dup]].as_py()}")
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
    def load(cls, folder: Path, fields: Sequence[str], offsets: Sequence[int]) -> "Vocabulary":
        """From a processed dataset folder; `offsets` is the manifest's `field_offsets`."""
        table = pq.read_table(Path(folder) / "vocab.parquet").sort_by("feature_id")
        return cls.from_table(table, fields, np.asarray(offsets, dtype=np.int64))
