"""Parsing a chunk of JSON-lines interactions (goodreads_interactions*.json) into rows: Arrow's
reader for the chunk, a per-line parse that locates each bad line when that fails."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers.goodreads.dates import epoch_seconds
from flip_dist.data.readers.goodreads.rows import Rows, add_bad, apply_checks

INTERACTION_SCHEMA = pa.schema([("user_id", pa.string()), ("book_id", pa.string()),
                                ("rating", pa.int64()), ("date_added", pa.string())])


def json_fast(data: bytes) -> pa.Table | None:
    """The chunk through Arrow's reader; None when it fails or leaves a key missing."""
    try:
        t = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(use_threads=False),
                             parse_options=pajson.ParseOptions(explicit_schema=INTERACTION_SCHEMA,
                                                               unexpected_field_behavior="ignore"))
        t.validate(full=True)
    except (pa.ArrowException, ValueError):
        return None
    if any(c.null_count for c in t.columns):
        return None
    return t.combine_chunks()


def json_slow(lines: list[bytes], locs: np.ndarray, path: Path, bad: BadRows
              ) -> tuple[pa.Table, np.ndarray, list[bytes]]:
    """Per-line parse: each bad line is counted with its location; only the keys used are checked
    (as Arrow's reader does), so bytes that are not UTF-8 elsewhere in a line do not matter."""
    cols: dict[str, list[Any]] = {n: [] for n in INTERACTION_SCHEMA.names}
    keep: list[int] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8", "surrogateescape"))
        except ValueError:
            add_bad(bad, path, locs[i], "malformed JSON", raw)
            continue
        reason = _check_record(rec)
        if reason:
            add_bad(bad, path, locs[i], reason, raw)
            continue
        for n in INTERACTION_SCHEMA.names:
            cols[n].append(str(rec[n]) if n == "book_id" else rec[n])
        keep.append(i)
    t = pa.table({n: pa.array(cols[n], type=INTERACTION_SCHEMA.field(n).type) for n in cols})
    return t, locs[keep], [lines[i] for i in keep]


def _check_record(rec: Any) -> str | None:
    """Why a parsed line cannot become a row (None: it can)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    for key in INTERACTION_SCHEMA.names:
        if key not in rec or rec[key] is None:
            return f"missing key {key!r}"
    for key in ("user_id", "date_added"):
        if not isinstance(rec[key], str):
            return f"{key} is not a string"
    if isinstance(rec["book_id"], bool) or not isinstance(rec["book_id"], (str, int)):
        return "book_id is not a string"
    if isinstance(rec["rating"], bool) or not isinstance(rec["rating"], int):
        return "rating is not an integer"
    if not 0 <= rec["rating"] <= 5:
        return "rating outside 0..5"
    for key in ("user_id", "book_id", "date_added"):
        try:
            str(rec[key]).encode("utf-8")
        except UnicodeEncodeError:
            return f"undecodable bytes in {key}"
    return None


def json_rows(t: pa.Table, locs: np.ndarray | None, lines: list[bytes] | None,
              path: Path, bad: BadRows) -> Rows | None:
    """Vectorised checks; None when a row is bad but the chunk came from the fast path (no locations)."""
    user, book, date = (t.column(n).combine_chunks() for n in ("user_id", "book_id", "date_added"))
    rating = t.column("rating").to_numpy()
    book = pc.utf8_trim_whitespace(book)
    ts, ts_ok = epoch_seconds(date)
    checks = [("empty user_id", pc.binary_length(user).to_numpy(zero_copy_only=False) == 0),
              ("book_id is not an integer",
               ~pc.match_substring_regex(book, r"^[0-9]{1,18}$").to_numpy(zero_copy_only=False)),
              ("rating outside 0..5", (rating < 0) | (rating > 5)),
              ("unparseable date_added", ~ts_ok)]
    ok = apply_checks(checks, len(rating), locs, lines, path, bad)
    if ok is None:
        return None
    if not ok.all():
        mask = pa.array(ok)
        user, book, ts, rating = user.filter(mask), book.filter(mask), ts[ok], rating[ok]
    return Rows(user, pc.cast(book, pa.int64()).to_numpy(), rating, ts)
