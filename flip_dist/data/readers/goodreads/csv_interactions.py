"""Parsing a chunk of the CSV interactions (goodreads_interactions.csv: integer ids, no time)
into rows, mapping its ids to the real ones through the context's id maps."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers.goodreads.context import GoodReadsContext, search
from flip_dist.data.readers.goodreads.raw_files import csv_names
from flip_dist.data.readers.goodreads.rows import Rows, add_bad, apply_checks
from flip_dist.data.readers.guarded import DEFAULT_LIMITS, ReadLimits

CSV_COLUMNS = ("user_id", "book_id", "rating")          # of user_id,book_id,is_read,rating,is_reviewed


def csv_header(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> list[str]:
    """The interactions CSV's column names; CSV_COLUMNS are then read by name, in any order."""
    return csv_names(path, CSV_COLUMNS, limits)


def csv_fast(data: bytes, header: list[str]) -> pa.Table | None:
    """The chunk through Arrow's reader; None when it fails or leaves a value missing."""
    try:
        t = pacsv.read_csv(io.BytesIO(data),
                           read_options=pacsv.ReadOptions(column_names=header, use_threads=False),
                           convert_options=pacsv.ConvertOptions(
                               column_types={k: pa.int64() for k in CSV_COLUMNS},
                               include_columns=list(CSV_COLUMNS)))
    except (pa.ArrowException, ValueError):
        return None
    if any(c.null_count for c in t.columns):
        return None
    return t.combine_chunks()


def csv_slow(lines: list[bytes], locs: np.ndarray, header: list[str], path: Path, bad: BadRows
             ) -> tuple[pa.Table, np.ndarray, list[bytes]]:
    """Per-line parse: each bad line is counted with its location."""
    where = [header.index(k) for k in CSV_COLUMNS]
    cols: list[list[int]] = [[] for _ in CSV_COLUMNS]
    keep: list[int] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = raw.decode("utf-8").rstrip("\r").split(",")
        except UnicodeDecodeError:
            add_bad(bad, path, locs[i], "undecodable bytes", raw)
            continue
        if len(rec) != len(header):
            add_bad(bad, path, locs[i], f"expected {len(header)} columns", raw)
            continue
        try:
            values = [int(rec[j]) for j in where]
            if any(not -2**63 <= v < 2**63 for v in values):
                raise ValueError
        except ValueError:
            add_bad(bad, path, locs[i], "user_id, book_id or rating is not an integer", raw)
            continue
        for col, v in zip(cols, values):
            col.append(v)
        keep.append(i)
    t = pa.table({k: pa.array(c, pa.int64()) for k, c in zip(CSV_COLUMNS, cols)})
    return t, locs[keep], [lines[i] for i in keep]


def csv_rows(t: pa.Table, locs: np.ndarray | None, lines: list[bytes] | None, path: Path,
             bad: BadRows, ctx: GoodReadsContext) -> Rows | None:
    """Maps the integer ids to the real ones; a user missing from user_id_map.csv is a bad row, a
    book missing from book_id_map.csv an unknown book (-1, dropped and counted later)."""
    assert ctx.user_csv_ids is not None and ctx.user_names is not None
    assert ctx.book_csv_ids is not None and ctx.book_csv_real is not None
    uid, bid, rating = (t.column(k).to_numpy() for k in CSV_COLUMNS)
    upos, ufound = search(ctx.user_csv_ids, uid)
    checks = [("rating outside 0..5", (rating < 0) | (rating > 5)),
              ("user_id not in user_id_map.csv", ~ufound)]
    ok = apply_checks(checks, len(rating), locs, lines, path, bad)
    if ok is None:
        return None
    bpos, bfound = search(ctx.book_csv_ids, bid[ok])
    book = np.where(bfound, ctx.book_csv_real[bpos] if len(bpos) else bpos, -1)
    return Rows(ctx.user_names.take(pa.array(upos[ok])), book.astype(np.int64), rating[ok], None)
