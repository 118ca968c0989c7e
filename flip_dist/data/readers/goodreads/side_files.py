"""Reading the JSON-lines side files (books, authors, works, genres) whole and strictly: Arrow's
reader when the file is clean, a line-by-line path that names the first bad line otherwise. A side
file admits no bad line, since every interaction joined to it would inherit the damage."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from flip_dist.data.readers.guarded import DEFAULT_LIMITS, LineCheck, LineTooLong, ReadLimits, open_raw, read_line
from flip_dist.errors import FlipDataError

SIDE_BLOCK = 4 << 20                                     # books lines carry shelves and descriptions


def to_str(v: Any) -> str | None:
    """A JSON value as the books file would spell it (they are strings there already)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _first_author(v: Any) -> list[dict[str, str | None]] | None:
    if not isinstance(v, list):
        return None
    return [{"author_id": to_str(a.get("author_id"))} for a in v[:1] if isinstance(a, dict)]


def encodable(v: str) -> bool:
    """Whether Arrow can hold the string: json.loads lets a lone surrogate through."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:       # a lone surrogate from a "\ud800" escape
        return False
    return True


def json_records(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines file; anything else (a line over the limit included)
    is an error naming the line."""
    with open_raw(path, limits) as f:
        lineno = 0
        while True:
            raw, long = read_line(f, limits.max_line_bytes)
            if not raw:
                return
            lineno += 1
            if long:
                raise FlipDataError(limits.long_line(), path=str(path), row=lineno)
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError as e:
                raise FlipDataError(f"malformed JSON line ({e})", path=str(path), row=lineno) from None
            if not isinstance(rec, dict):
                raise FlipDataError("line is not a JSON object", path=str(path), row=lineno)
            yield lineno, rec


def read_side_slow(path: Path, schema: pa.Schema, limits: ReadLimits = DEFAULT_LIMITS
                   ) -> tuple[pa.Table, np.ndarray]:
    """Line-by-line read of `schema`'s keys, each required; returns the table and line numbers."""
    cols: dict[str, list[Any]] = {n: [] for n in schema.names}
    lines: list[int] = []
    for lineno, rec in json_records(path, limits):
        for name in schema.names:
            if name not in rec:
                raise FlipDataError(f"missing key (the line has {sorted(rec)[:20]})",
                                    path=str(path), row=lineno, key=name)
            v = _first_author(rec[name]) if name == "authors" else to_str(rec[name])
            if isinstance(v, str) and not encodable(v):
                raise FlipDataError("value is not valid UTF-8 text", path=str(path), row=lineno, key=name)
            cols[name].append(v)
        lines.append(lineno)
    if not lines:
        raise FlipDataError("file is empty", path=str(path))
    return pa.table({n: pa.array(cols[n], type=schema.field(n).type) for n in schema.names}), \
        np.asarray(lines, dtype=np.int64)


def arrow_source(path: Path, limits: ReadLimits) -> LineCheck:
    """What Arrow's readers read a raw file from: the file through LineCheck (a line over the limit
    stops the fast path) and, for a .gz, GzipGuard (the inflation budget holds there too)."""
    return LineCheck(open_raw(path, limits), path, limits)


def read_side(path: Path, schema: pa.Schema, limits: ReadLimits = DEFAULT_LIMITS
              ) -> tuple[pa.Table, np.ndarray | None]:
    """`schema`'s keys of a JSON-lines file with Arrow's reader (threads, no per-line Python);
    anything odd (parse error, a null, bad UTF-8, a line over the limit) goes to the slow path,
    which names the line. A gzip error is final."""
    try:
        with arrow_source(path, limits) as src:
            t = pajson.read_json(src, read_options=pajson.ReadOptions(block_size=SIDE_BLOCK),
                                 parse_options=pajson.ParseOptions(explicit_schema=schema,
                                                                   unexpected_field_behavior="ignore"))
        t.validate(full=True)
        if t.num_rows and all(t.column(n).null_count == 0 for n in schema.names):
            return t.combine_chunks(), None
    except LineTooLong:
        pass
    except FlipDataError:
        raise
    except (pa.ArrowException, ValueError):
        pass
    return read_side_slow(path, schema, limits)


def int_ids(col: pa.Array, what: str, path: Path, lines: np.ndarray | None,
            reread: Callable[[], tuple[pa.Table, np.ndarray]]) -> np.ndarray:
    """Digit strings -> int64; a non-integer is an error naming its line (found by `reread` when
    the fast path kept no line numbers)."""
    col = pc.utf8_trim_whitespace(pc.fill_null(col, ""))
    ok = pc.match_substring_regex(col, r"^[0-9]{1,18}$")
    if not pc.all(ok).as_py():
        first = int(np.flatnonzero(~ok.to_numpy(zero_copy_only=False))[0])
        if lines is None:
            lines = reread()[1]
        raise FlipDataError(f"{what} is not an integer: {col[first].as_py()!r}", path=str(path),
                            row=int(lines[first]), key=what)
    return pc.cast(col, pa.int64()).to_numpy()
