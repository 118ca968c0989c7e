"""Score Parquet rows with a serving artifact: torch.jit, pyarrow, numpy and sklearn only.

No flip_dist model code, TorchRec, transformers, DeepSpeed or Ray is imported (a test checks
sys.modules), so this runs where only the ID model is deployed. The metrics are the evaluation's
(flip_dist.eval.metrics: exact AUC on sigmoid scores, mean BCE on logits), computed with sklearn
and numpy because torchmetrics imports transformers."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from flip_dist.errors import FlipConfigError, FlipDataError
from flip_dist.io_atomic import atomic_file
from flip_dist.serving.artifact import load_artifact


def input_files(data: str | Path, split: str) -> list[Path]:
    """The shards to score: a processed dataset's `split`, a folder of shards, or one shard."""
    path = Path(data)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FlipDataError("no such file or folder", path=str(path))
    folder = path / split if (path / "manifest.json").is_file() else path
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FlipDataError(f"no *.parquet shards{f' in split {split!r}' if folder != path else ''}", path=str(folder))
    return files


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise FlipDataError(f"not a readable Parquet file ({type(e).__name__}: {str(e)[:200]})",
                            path=str(path)) from None


def _check_manifest(data: Path, spec: dict[str, Any]) -> None:
    """A processed dataset's fields and id space must be the model's (ids index its table)."""
    path = data / "manifest.json"
    if not path.is_file():
        return
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key in ("fields", "num_features"):
        if manifest.get(key) != spec[key]:
            raise FlipDataError(f"{manifest.get(key)!r} but the model was trained with {spec[key]!r}",
                                path=str(path), key=key)


def _feature_ids(col: pa.Array, path: Path, first: int, spec: dict[str, Any]) -> np.ndarray:
    """(n, F) int64 ids of one record batch; FlipDataError naming the file and row at fault.
    `first`: the batch's first row within the file (rows count from 0)."""
    F, M = spec["num_fields"], spec["num_features"]
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
            or not pa.types.is_integer(t.value_type):
        raise FlipDataError(f"column must be a list of integer feature ids, not {t}", path=str(path), key="feature_ids")
    if col.null_count:
        row = first + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise FlipDataError("feature_ids is null", path=str(path), row=row)
    lengths = np.full(len(col), t.list_size) if pa.types.is_fixed_size_list(t) else col.value_lengths().to_numpy()
    bad = np.flatnonzero(lengths != F)
    if len(bad):
        raise FlipDataError(f"has {lengths[bad[0]]} feature ids, the model takes {F} ({', '.join(spec['fields'])})",
                            path=str(path), row=first + int(bad[0]))
    values = col.flatten()
    if values.null_count:
        row = first + int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // F
        raise FlipDataError("a feature id is null", path=str(path), row=row)
    ids = values.to_numpy().astype(np.int64).reshape(-1, F)
    bad_row, bad_field = np.nonzero((ids < 0) | (ids >= M))
    if len(bad_row):
        r, f = int(bad_row[0]), int(bad_field[0])
        raise FlipDataError(f"feature id {ids[r, f]} (field {spec['fields'][f]}) is outside the model's "
                            f"[0, {M})", path=str(path), row=first + r)
    return ids


def _labels(col: pa.Array, path: Path, first: int) -> np.ndarray:
    if col.null_count:
        row = first + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise FlipDataError("label is null", path=str(path), row=row)
    y = col.to_numpy()
    bad = np.flatnonzero((y != 0) & (y != 1))
    if len(bad):
        raise FlipDataError(f"label {y[bad[0]]} is not 0/1", path=str(path), row=first + int(bad[0]))
    return y.astype(np.int8)


def _schema(has_label: bool) -> pa.Schema:
    cols = [("row_id", pa.int64()), ("prob", pa.float32())]
    return pa.schema(cols + [("label", pa.int8())] if has_label else cols)


def _metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """As flip_dist.eval.metrics.CTRMetrics: exact AUC of float32 sigmoid scores (None when one class
    only), mean BCE on the logits (log(1 + e^x) - y x, stable for any x)."""
    from sklearn.metrics import roc_auc_score

    probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
    x = logits.astype(np.float64)
    logloss = float(np.mean(np.logaddexp(0.0, x) - labels * x))
    auc = float(roc_auc_score(labels, probs)) if 0 < labels.sum() < len(labels) else None
    return {"auc": auc, "logloss": logloss, "positives": int(labels.sum())}


def score(model: str | Path, data: str | Path, out: str | Path | None = None, split: str = "test",
          batch_size: int = 4096) -> dict[str, Any]:
    """Score every row of `data` (a processed dataset's `split`, a folder of shards or one shard):
    `out` gets (row_id, prob[, label]) in input order, written atomically; row_id is the row's
    position in the input where the shards have none. Returns rows, AUC and logloss (with labels)."""
    if batch_size < 1:
        raise FlipConfigError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    module, spec = load_artifact(model)
    files = input_files(data, split)
    if Path(data).is_dir():
        _check_manifest(Path(data), spec)
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.resolve() in {f.resolve() for f in files}:
        raise FlipConfigError(f"--out {out_path} is one of the input shards")
    names = [_open(f).schema_arrow.names for f in files]
    for f, cols in zip(files, names):
        if "feature_ids" not in cols:
            raise FlipDataError("shard has no feature_ids column", path=str(f), key="feature_ids")
    has_label = {"label" in cols for cols in names}
    if len(has_label) > 1:
        raise FlipDataError("some shards have a label column and some do not", path=str(data), key="label")
    has_label, has_row_id = has_label.pop(), all("row_id" in cols for cols in names)
    logits, labels, rows = [], [], 0

    def batches() -> Iterator[pa.Table]:
        nonlocal rows
        for f in files:
            pf, first = _open(f), 0
            cols = ["feature_ids"] + ["label"] * has_label + ["row_id"] * has_row_id
            for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
                ids = _feature_ids(rb.column("feature_ids"), f, first, spec)
                with torch.inference_mode():
                    logit = module(torch.from_numpy(ids)).float().numpy()
                row_id = rb.column("row_id").to_numpy() if has_row_id else np.arange(rows, rows + len(ids))
                cols_out = {"row_id": pa.array(row_id, pa.int64()),
                            "prob": pa.array(torch.sigmoid(torch.from_numpy(logit)).numpy(), pa.float32())}
                if has_label:        # the metrics need every score: 5 bytes a row
                    labels.append(_labels(rb.column("label"), f, first))
                    cols_out["label"] = pa.array(labels[-1], pa.int8())
                    logits.append(logit)
                first, rows = first + len(ids), rows + len(ids)
                yield pa.table(cols_out, schema=_schema(has_label))

    if out_path is None:
        for _ in batches():
            pass
    else:
        with atomic_file(out_path) as tmp, pq.ParquetWriter(str(tmp), _schema(has_label)) as writer:
            for table in batches():
                writer.write_table(table)
    result: dict[str, Any] = {"rows": rows, "files": len(files), "model": str(model), "data": str(data),
                              "dataset": spec.get("dataset"), "out": str(out_path) if out_path else None}
    if has_label and rows:
        result |= _metrics(np.concatenate(logits), np.concatenate(labels))
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result
