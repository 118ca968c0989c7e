"""Contract rows -> padded torch tensors, without per-row Python loops (Arrow offsets + numpy)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from flip_dist.data.manifest import read_manifest
from flip_dist.data.shards import shard_files


@dataclass
class Batch:
    """One training batch. Token tensors are right-padded to the longest row of the batch."""

    labels: torch.Tensor          # (B,) float32 0/1
    feature_ids: torch.Tensor     # (B, F) int64 global feature ids
    input_ids: torch.Tensor       # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64 1 = real token
    field_spans: torch.Tensor     # (B, F, 2) int64 [start, end) of each value's tokens
    row_ids: torch.Tensor | None = None   # (B,) int64 the rows' `row_id`, where the shards have it (audits)

    def to(self, device: torch.device | str) -> Batch:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def __len__(self) -> int:
        return self.labels.shape[0]


def table_to_batch(table: pa.Table, pad_id: int) -> Batch:
    n = table.num_rows
    ids = table["input_ids"].combine_chunks()
    offsets = ids.offsets.to_numpy()
    flat = ids.values.to_numpy()
    lengths = np.diff(offsets)
    L = int(lengths.max()) if n else 0
    padded = np.full((n, L), pad_id, dtype=np.int64)
    row = np.repeat(np.arange(n), lengths)
    col = np.arange(len(flat)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    padded[row, col] = flat[offsets[0]:offsets[0] + len(flat)] if offsets[0] else flat
    mask = np.zeros((n, L), dtype=np.int64)
    mask[row, col] = 1
    fids = table["feature_ids"].combine_chunks()
    F = fids.type.list_size
    spans = table["field_spans"].combine_chunks()
    return Batch(
        labels=torch.from_numpy(table["label"].to_numpy().astype(np.float32)),
        feature_ids=torch.from_numpy(fids.flatten().to_numpy().astype(np.int64).reshape(n, F)),
        input_ids=torch.from_numpy(padded),
        attention_mask=torch.from_numpy(mask),
        field_spans=torch.from_numpy(spans.flatten().to_numpy().astype(np.int64).reshape(n, F, 2)),
        row_ids=torch.from_numpy(table["row_id"].to_numpy().astype(np.int64)) if "row_id" in table.column_names
        else None,
    )


class ShardReader:
    """A split of a processed dataset held as one Arrow table (the contract columns only), served
    as shuffled or ordered batches. Single-process; the distributed runtime streams with Ray Data."""

    COLUMNS = ["label", "feature_ids", "input_ids", "field_spans"]

    def __init__(self, folder: str | Path, split: str) -> None:
        self.manifest = read_manifest(folder)
        files = shard_files(folder, split)
        columns = self.COLUMNS + (["row_id"] if files and "row_id" in pq.ParquetFile(files[0]).schema_arrow.names
                                  else [])
        self.table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files]) \
            .combine_chunks() if files else None
        self.pad_id = self.manifest.text_pad_id

    def __len__(self) -> int:
        return 0 if self.table is None else self.table.num_rows

    def batch_indices(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                      drop_last: bool = False, max_rows: int = 0) -> Iterator[np.ndarray]:
        """Row indices of each batch: the one order a single process and N ranks (each taking a
        slice, flip_dist.distributed.worker) both follow."""
        n = min(len(self), max_rows) if max_rows else len(self)
        order = np.random.default_rng(seed).permutation(len(self))[:n] if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield order[start:start + batch_size]

    def take(self, idx: np.ndarray) -> Batch:
        return table_to_batch(self.table.take(pa.array(idx)), self.pad_id)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, max_rows: int = 0) -> Iterator[Batch]:
        for idx in self.batch_indices(batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, max_rows=max_rows):
            yield self.take(idx)


def first_rows(folder: str | Path, split: str, rows: int, pad_id: int) -> Batch | None:
    """The first `rows` rows of a split's first shard (start-up checks that need real prompts
    without reading the split)."""
    files = shard_files(folder, split)
    if not files:
        return None
    first = next(pq.ParquetFile(files[0]).iter_batches(batch_size=rows, columns=ShardReader.COLUMNS), None)
    return table_to_batch(pa.Table.from_batches([first]), pad_id) if first is not None else None
