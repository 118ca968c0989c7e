"""Reading a processed dataset folder back: shard lists, split summaries, the contract check."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flip_dist.data.manifest import Manifest, read_manifest
from flip_dist.errors import FlipDataError


def shard_files(folder: str | Path, split: str) -> list[str]:
    return sorted(str(p) for p in (Path(folder) / split).glob("*.parquet"))


def split_summary(folder: str | Path) -> dict[str, dict[str, int]]:
    """Rows, positives and rows with truncated fields per split, read from the shards' small columns."""
    import numpy as np
    import pyarrow.parquet as pq

    out = {}
    for split in ("train", "test"):
        files = shard_files(folder, split)
        rows = positives = truncated = 0
        for f in files:
            t = pq.read_table(f, columns=["label", "num_truncated_fields"])
            rows += t.num_rows
            positives += int(np.sum(t["label"].to_numpy()))
            truncated += int(np.sum(t["num_truncated_fields"].to_numpy() > 0))
        out[split] = {"rows": rows, "positives": positives, "truncated": truncated}
    return out


def _open_shard(path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise FlipDataError(f"shard cannot be read ({type(e).__name__}: {str(e)[:200]})", path=path) from None


def _check_id_statistics(pf: Any, path: str, num_features: int) -> None:
    """The feature ids' min/max from the Parquet footer (no data read): ids beyond num_features mean
    the manifest and the shards disagree (e.g. shards of a bigger vocabulary)."""
    meta = pf.metadata
    columns = [j for j in range(meta.num_columns) if meta.schema.column(j).path.startswith("feature_ids.")]
    for g in range(meta.num_row_groups):
        for j in columns:
            stats = meta.row_group(g).column(j).statistics
            if stats is not None and stats.has_min_max and (stats.min < 0 or stats.max >= num_features):
                raise FlipDataError(f"feature ids reach {stats.max} in row group {g}, but the manifest's "
                                    f"num_features is {num_features}", path=path, key="num_features")


def _check_feature_counts(folder: Path, num_features: int) -> None:
    import numpy as np

    path = folder / "feature_counts.npy"
    if not path.is_file():
        raise FlipDataError("missing: the NCE sampler's train frequencies", path=str(path))
    try:
        counts = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise FlipDataError(f"cannot be read as a numpy array ({e})", path=str(path)) from None
    if counts.ndim != 1 or len(counts) != num_features:
        raise FlipDataError(f"has shape {counts.shape}, the manifest's num_features is {num_features}",
                            path=str(path), key="num_features")


def validate_dataset(folder: str | Path, max_rows_per_shard: int | None = None,
                     for_training: bool = False) -> Manifest:
    """Check a processed folder against the data contract (the manifest's keys, the shards'
    columns, ids inside their fields' blocks, spans inside the token sequence); raise
    FlipDataError naming the shard and row at fault. Returns the manifest. Row counts and id ranges
    come from every shard's footer; contents are read whole, or the first `max_rows_per_shard` rows
    of each. `for_training` also checks what training reads beside the shards (feature_counts.npy)."""
    import numpy as np
    import pyarrow as pa

    folder = Path(folder)
    manifest = read_manifest(folder)
    F, M = manifest.num_fields, manifest.num_features
    offsets = np.asarray(manifest.field_offsets, dtype=np.int64)
    if for_training:
        _check_feature_counts(folder, M)
    want = {"label": pa.int8(), "feature_ids": pa.list_(pa.int32(), F), "input_ids": pa.list_(pa.int32()),
            "field_spans": pa.list_(pa.int32(), 2 * F)}
    counts = {}
    for split in ("train", "test"):
        n = 0
        for path in shard_files(folder, split):
            pf = _open_shard(path)
            for key, tp in want.items():
                if key not in pf.schema_arrow.names or pf.schema_arrow.field(key).type != tp:
                    raise FlipDataError(f"column must be {tp}", path=path, key=key)
            n += pf.metadata.num_rows
            _check_id_statistics(pf, path, M)
            try:
                t = pf.read(columns=list(want)) if max_rows_per_shard is None else \
                    pa.Table.from_batches([next(pf.iter_batches(batch_size=max_rows_per_shard, columns=list(want)))])
            except StopIteration:
                continue
            except (OSError, pa.ArrowException) as e:
                raise FlipDataError(f"shard cannot be read ({type(e).__name__}: {str(e)[:200]})", path=path) from None
            fids = t["feature_ids"].combine_chunks().flatten().to_numpy().reshape(-1, F)
            spans = t["field_spans"].combine_chunks().flatten().to_numpy().reshape(-1, F, 2)
            lengths = t["input_ids"].combine_chunks().value_lengths().to_numpy()
            labels = t["label"].to_numpy()
            bad = np.flatnonzero((labels != 0) & (labels != 1))
            if len(bad):
                raise FlipDataError(f"label {labels[bad[0]]} is not 0/1", path=path, row=int(bad[0]))
            bad = np.flatnonzero((fids < 0).any(1) | (fids >= M).any(1))
            if len(bad):
                raise FlipDataError(f"feature id outside [0, {M})", path=path, row=int(bad[0]))
            if len(offsets) == F + 1:
                own = (fids >= offsets[:-1]) & (fids < offsets[1:])
                oov = fids == (2 + np.arange(F))
                bad = np.flatnonzero(~(own | oov).all(1))
                if len(bad):
                    raise FlipDataError("feature id outside its field's block", path=path, row=int(bad[0]))
            s, e = spans[..., 0], spans[..., 1]
            bad = np.flatnonzero(((s > e) | (s < 0) | (e > lengths[:, None])).any(1))
            if len(bad):
                raise FlipDataError("field span outside the token sequence", path=path, row=int(bad[0]))
        counts[split] = n
    for split in ("train", "test"):
        said = getattr(manifest, f"num_{split}")
        if counts[split] != said:
            raise FlipDataError(f"{counts[split]} rows in {split}/ but manifest says {said}",
                                path=str(folder), key=f"num_{split}")
    return manifest
