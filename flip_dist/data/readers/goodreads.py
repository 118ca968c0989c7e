"""GoodReads, the UCSD Book Graph (Wan & McAuley, RecSys'18) as distributed.

Interactions come in one of two forms (both are read):
- JSON lines, `goodreads_interactions_dedup.json[.gz]` (or another `goodreads_interactions*.json[.gz]`
  such as a genre subset): user_id (hex), book_id (digits), rating (int 0-5), date_added
  ("Mon Aug 01 13:41:57 -0700 2016"), ... The order key is date_added in epoch seconds.
- CSV, `goodreads_interactions.csv` (user_id,book_id,is_read,rating,is_reviewed: integer ids, mapped
  to the real ones by `user_id_map.csv` and `book_id_map.csv`). No time: the split is seeded random.
Book side: `goodreads_books.json[.gz]` is required, and every key read from it must be present
(a missing one is an error naming it). `goodreads_book_authors`, `goodreads_book_genres_initial` and
`goodreads_book_works` (.json[.gz]) are used when present; without them author_name, genres and
media_type are "unknown" for every book. Empty values become "unknown"; only the first author counts;
num_reviews is text_reviews_count (ratings_count counts ratings, not reviews).

Label = rating > 3. Rating 0 means shelved, not rated: dropped (`dropped_rating_0`). Interactions
whose book is not in the books file are dropped (`dropped_unknown_book`). Malformed lines are
skipped and counted with their line number (or byte offset, for parts that start mid-file); so
are lines over `max_line_bytes`, which are never read whole. A .gz is read through GzipGuard: a
file that inflates past `max_inflation` x its size, or a corrupt stream, is an error naming it.
CSV columns are found by header name, in any order; side files admit no bad line (an error names it).

Scale: 228M interactions and 2.3M books in the real data. Plain files split into line-aligned byte
ranges; a .gz file is one part (decompress it first to read it in parallel). Each part is parsed in
chunks with Arrow's JSON/CSV readers; a chunk that Arrow rejects, or that holds a bad row, is
re-parsed line by line so every bad row is found and located. The book side is kept columnar: a
sorted int64 array of book ids and an Arrow table of the 13 book-side fields, joined by searchsorted.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers.base import (DatasetSpec, PartResult, RawPart, RawReader, byte_ranges,
                                         require_file, row_ids, seeded_order)
from flip_dist.data.readers.guarded import (DEFAULT_LIMITS, LineCheck, LineTooLong, ReadLimits, column_index,
                                            header_line, long_lines, open_raw, read_line, skip_line)
from flip_dist.errors import FlipDataError

FIELDS = ("user_id", "book_id", "title", "genres", "average_rating", "num_reviews", "author_id",
          "author_name", "num_pages", "is_ebook", "format", "publisher", "publication_year",
          "work_id", "media_type")
FIELD_TEXTS = ("user id", "book id", "title", "genres", "average rating", "number of reviews",
               "author id", "author name", "number of pages", "ebook", "format", "publisher",
               "publication year", "work id", "media type")
BOOK_FIELDS = FIELDS[2:]
SPEC = DatasetSpec(
    name="goodreads", fields=FIELDS, field_texts=FIELD_TEXTS,
    label_rule="label = rating > 3; rating 0 (shelved, not rated) dropped; interactions of books "
               "missing from goodreads_books.json dropped",
    split_rule="JSON interactions: chronological, sorted by date_added (epoch seconds, ties by row "
               "id), first 90% train; CSV interactions (goodreads_interactions.csv, no timestamps): "
               "seeded random 90/10 (rows sorted by a splitmix64 key of row id and seed)",
    has_time=True,
)

INTERACTIONS_JSON = "goodreads_interactions_dedup.json"
INTERACTIONS_CSV = "goodreads_interactions.csv"
USER_MAP, BOOK_MAP = "user_id_map.csv", "book_id_map.csv"
BOOKS = "goodreads_books.json"
AUTHORS, GENRES, WORKS = ("goodreads_book_authors.json", "goodreads_book_genres_initial.json",
                          "goodreads_book_works.json")
CSV_COLUMNS = ("user_id", "book_id", "rating")          # of user_id,book_id,is_read,rating,is_reviewed
DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"
MAX_GENRES = 3
UNKNOWN = "unknown"
SIDE_BLOCK = 4 << 20                                     # books lines carry shelves and descriptions

# Books-file key for each book-side field that comes straight from it.
BOOK_KEYS = {"title": "title", "average_rating": "average_rating", "num_reviews": "text_reviews_count",
             "num_pages": "num_pages", "is_ebook": "is_ebook", "format": "format",
             "publisher": "publisher", "publication_year": "publication_year", "work_id": "work_id"}
AUTHORS_TYPE = pa.list_(pa.struct([("author_id", pa.string())]))
BOOK_SCHEMA = pa.schema([("book_id", pa.string()), ("authors", AUTHORS_TYPE)]
                        + [(k, pa.string()) for k in BOOK_KEYS.values()])
INTERACTION_SCHEMA = pa.schema([("user_id", pa.string()), ("book_id", pa.string()),
                                ("rating", pa.int64()), ("date_added", pa.string())])


@dataclass
class GoodReadsContext:
    """Book side (and, for the CSV form, the id maps) as flat arrays: small to ship, fast to join."""

    book_ids: np.ndarray                  # sorted unique int64
    books: pa.Table                       # BOOK_FIELDS, row i belongs to book_ids[i]
    user_csv_ids: np.ndarray | None = None   # sorted int64 user_id_csv
    user_names: pa.Array | None = None       # the real user_id for each of them
    book_csv_ids: np.ndarray | None = None   # sorted int64 book_id_csv
    book_csv_real: np.ndarray | None = None  # the real book_id for each of them


@dataclass
class _Rows:
    """Valid rows of one chunk, before labelling and the join."""

    user: pa.Array                        # string
    book: np.ndarray                      # int64 real book id
    rating: np.ndarray                    # int64 0..5
    ts: np.ndarray | None                 # int64 epoch seconds (JSON form)


# ---------------------------------------------------------------- files

def _find(raw_dir: Path, name: str) -> Path | None:
    """`name` or `name.gz`; the plain file first, since it can be split into byte ranges."""
    for p in (raw_dir / name, raw_dir / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def _glob_json(raw_dir: Path, prefix: str) -> list[Path]:
    """`prefix*.json[.gz]`, one file per stem (plain preferred), sorted."""
    by_stem: dict[str, Path] = {}
    for p in sorted(raw_dir.glob(f"{prefix}*.json.gz")) + sorted(raw_dir.glob(f"{prefix}*.json")):
        by_stem[p.name.removesuffix(".gz")] = p
    return [by_stem[k] for k in sorted(by_stem)]


def _interaction_files(raw_dir: Path) -> tuple[str, list[Path]]:
    """Which interactions form is present: the deduplicated JSON, other JSON (subsets), or the CSV."""
    dedup = _find(raw_dir, INTERACTIONS_JSON)
    if dedup is not None:
        files = [dedup]
    else:
        files = _glob_json(raw_dir, "goodreads_interactions")
    if files:
        for p in files:
            if p.stat().st_size == 0:
                raise FlipDataError("file is empty", path=str(p))
        return "json", files
    if (raw_dir / INTERACTIONS_CSV).is_file():
        return "csv", [require_file(raw_dir, INTERACTIONS_CSV)]
    raise FlipDataError(f"missing raw file: expected {INTERACTIONS_JSON}[.gz], "
                        f"goodreads_interactions_<name>.json[.gz] or {INTERACTIONS_CSV}", path=str(raw_dir))


def _books_files(raw_dir: Path) -> list[Path]:
    """goodreads_books.json[.gz], else the genre-subset books files goodreads_books_<genre>.json[.gz]."""
    main = _find(raw_dir, BOOKS)
    files = [main] if main is not None else _glob_json(raw_dir, "goodreads_books_")
    if not files:
        raise FlipDataError(f"missing raw file: expected {BOOKS}.gz or {BOOKS}", path=str(raw_dir / BOOKS))
    for p in files:
        if p.stat().st_size == 0:
            raise FlipDataError("file is empty", path=str(p))
    return files


def _line_chunks(path: Path, start: int, end: int, chunk_bytes: int, limits: ReadLimits = DEFAULT_LIMITS,
                 bad: BadRows | None = None) -> Iterator[tuple[int, bytes]]:
    """(locator of the first line, whole lines) for the lines that start in [start, end); the
    locator is the 1-based line number when start == 0, else the line's byte offset (as in
    base.iter_lines).

    Same rule as base.iter_lines: the line straddling `start` belongs to the previous range, the one
    straddling `end` to this one, so consecutive ranges cover every line exactly once. A line longer
    than `limits.max_line_bytes` is left out and counted in `bad` (without `bad`: a FlipDataError);
    no more than a chunk plus the limit is ever in memory. A .gz goes through GzipGuard."""
    limit, by_line = limits.max_line_bytes, start == 0
    with open_raw(path, limits) as f:
        pos, line = 0, 1
        if start > 0:
            f.seek(start - 1)
            pos = start
            if f.read(1) != b"\n":
                pos += skip_line(f)
        while end < 0 or pos < end:
            data = f.read(chunk_bytes if end < 0 else min(chunk_bytes, end - pos))
            if not data:
                return
            skipped = 0
            if not data.endswith(b"\n"):
                tail = f.readline(limit + 1)
                data += tail
                if len(tail) > limit and not tail.endswith(b"\n"):
                    skipped = skip_line(f)          # the last line runs on past the limit
            done = 0
            for a, b in long_lines(data, limit):
                if a > done:
                    yield _locate(data, done, by_line, line, pos), data[done:a]
                loc = _locate(data, a, by_line, line, pos)
                if bad is None:
                    raise FlipDataError(limits.long_line(), path=str(path), row=loc)
                bad.add(str(path), loc, limits.long_line(), _text(data[a:a + 200]))
                done = b + 1
            if done < len(data):
                yield _locate(data, done, by_line, line, pos), (data[done:] if done else data)
            pos += len(data) + skipped
            if by_line:
                line += data.count(b"\n") + (not data.endswith(b"\n"))


def _locate(data: bytes, i: int, by_line: bool, first_line: int, first_pos: int) -> int:
    """The locator of the line starting at data[i]: its line number, or its byte offset."""
    return first_line + data.count(b"\n", 0, i) if by_line else first_pos + i


def _locators(data: bytes, first: int, by_line: bool) -> tuple[list[bytes], np.ndarray]:
    """The chunk's lines and, for each, its 1-based line number or its byte offset."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if by_line:
        return lines, first + np.arange(len(lines), dtype=np.int64)
    lengths = np.fromiter((len(x) + 1 for x in lines), dtype=np.int64, count=len(lines))
    return lines, first + np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _add_bad(bad: BadRows, path: Path, loc: int, reason: str, raw: bytes) -> None:
    bad.add(str(path), int(loc), reason, _text(raw))


# ---------------------------------------------------------------- side files

def _to_str(v: Any) -> str | None:
    """A JSON value as the books file would spell it (they are strings there already)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _first_author(v: Any) -> list[dict[str, str | None]] | None:
    if not isinstance(v, list):
        return None
    return [{"author_id": _to_str(a.get("author_id"))} for a in v[:1] if isinstance(a, dict)]


def _json_records(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[tuple[int, dict[str, Any]]]:
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


def _read_side_slow(path: Path, schema: pa.Schema, limits: ReadLimits = DEFAULT_LIMITS
                    ) -> tuple[pa.Table, np.ndarray]:
    """Line-by-line read of `schema`'s keys, each required; returns the table and line numbers."""
    cols: dict[str, list[Any]] = {n: [] for n in schema.names}
    lines: list[int] = []
    for lineno, rec in _json_records(path, limits):
        for name in schema.names:
            if name not in rec:
                raise FlipDataError(f"missing key (the line has {sorted(rec)[:20]})",
                                    path=str(path), row=lineno, key=name)
            v = _first_author(rec[name]) if name == "authors" else _to_str(rec[name])
            if isinstance(v, str) and not _encodable(v):
                raise FlipDataError("value is not valid UTF-8 text", path=str(path), row=lineno, key=name)
            cols[name].append(v)
        lines.append(lineno)
    if not lines:
        raise FlipDataError("file is empty", path=str(path))
    return pa.table({n: pa.array(cols[n], type=schema.field(n).type) for n in schema.names}), \
        np.asarray(lines, dtype=np.int64)


def _encodable(v: str) -> bool:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:       # a lone surrogate from a "\ud800" escape
        return False
    return True


def _arrow_source(path: Path, limits: ReadLimits) -> LineCheck:
    """What Arrow's readers read a raw file from: the file through LineCheck (a line over the limit
    stops the fast path) and, for a .gz, GzipGuard (the inflation budget holds there too)."""
    return LineCheck(open_raw(path, limits), path, limits)


def _read_side(path: Path, schema: pa.Schema, limits: ReadLimits = DEFAULT_LIMITS
               ) -> tuple[pa.Table, np.ndarray | None]:
    """`schema`'s keys of a JSON-lines file with Arrow's reader (threads, no per-line Python);
    anything odd (parse error, a null, bad UTF-8, a line over the limit) goes to the slow path,
    which names the line. A gzip error is final."""
    try:
        with _arrow_source(path, limits) as src:
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
    return _read_side_slow(path, schema, limits)


def _clean(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Whitespace collapsed, empty or missing -> "unknown"."""
    arr = pc.fill_null(arr.cast(pa.string()), "")
    arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"\s+", " "))
    out = pc.if_else(pc.equal(arr, ""), UNKNOWN, arr)
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def _lookup(keys: pa.Array, table_keys: pa.Array, values: pa.Array) -> pa.Array:
    """values[first i with table_keys[i] == key] per key (hash lookup), "unknown" where absent."""
    keys = pc.utf8_trim_whitespace(keys)
    keys = pc.if_else(pc.equal(keys, ""), pa.scalar(None, pa.string()), keys)
    idx = pc.index_in(keys, value_set=pc.utf8_trim_whitespace(table_keys), skip_nulls=True)
    return _clean(values.take(idx))


def _ids(col: pa.Array, what: str, path: Path, lines: np.ndarray | None,
         reread: Callable[[], tuple[pa.Table, np.ndarray]]) -> np.ndarray:
    """Digit strings -> int64; a non-integer is an error naming its line."""
    col = pc.utf8_trim_whitespace(pc.fill_null(col, ""))
    ok = pc.match_substring_regex(col, r"^[0-9]{1,18}$")
    if not pc.all(ok).as_py():
        first = int(np.flatnonzero(~ok.to_numpy(zero_copy_only=False))[0])
        if lines is None:
            lines = reread()[1]
        raise FlipDataError(f"{what} is not an integer: {col[first].as_py()!r}", path=str(path),
                            row=int(lines[first]), key=what)
    return pc.cast(col, pa.int64()).to_numpy()


def _genre_strings(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[pa.Array, pa.Array]:
    """(book_id, genres text) from goodreads_book_genres_initial: the MAX_GENRES genres with the
    highest counts, ties by name, joined with ", "."""
    try:
        with _arrow_source(path, limits) as src:
            t = pajson.read_json(src, read_options=pajson.ReadOptions(block_size=SIDE_BLOCK))
        t.validate(full=True)
        names = t.schema.names
        if "book_id" in names and "genres" in names and pa.types.is_struct(t.schema.field("genres").type) \
                and t.num_rows and t.column("book_id").null_count == t.column("genres").null_count == 0 \
                and pa.types.is_string(t.schema.field("book_id").type):
            return _genre_strings_fast(t)
    except LineTooLong:
        pass
    except FlipDataError:
        raise
    except (pa.ArrowException, ValueError):
        pass
    ids, texts = [], []
    for lineno, rec in _json_records(path, limits):
        for key in ("book_id", "genres"):
            if key not in rec:
                raise FlipDataError("missing key", path=str(path), row=lineno, key=key)
        g = rec["genres"] if isinstance(rec["genres"], dict) else {}
        top = sorted((-c, n) for n, c in g.items() if isinstance(c, (int, float)) and c > 0)
        book, text = _to_str(rec["book_id"]), ", ".join(n for _, n in top[:MAX_GENRES])
        if not all(_encodable(v) for v in (book or "", text)):
            raise FlipDataError("value is not valid UTF-8 text", path=str(path), row=lineno)
        ids.append(book)
        texts.append(text)
    if not ids:
        raise FlipDataError("file is empty", path=str(path))
    return pa.array(ids, pa.string()), pa.array(texts, pa.string())


def _genre_strings_fast(t: pa.Table) -> tuple[pa.Array, pa.Array]:
    genres = t.column("genres").combine_chunks()
    names = sorted(genres.type.field(i).name for i in range(genres.type.num_fields))
    n = t.num_rows
    if not names:
        return t.column("book_id").combine_chunks(), pa.array([""] * n, pa.string())
    counts = np.zeros((n, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        col = pc.fill_null(pc.cast(pc.struct_field(genres, name), pa.float64()), 0.0)
        counts[:, j] = col.to_numpy(zero_copy_only=False)
    counts = np.where(np.isfinite(counts), counts, 0.0)
    k = min(MAX_GENRES, len(names))
    top = np.argsort(-counts, axis=1, kind="stable")[:, :k]   # names are sorted: ties go by name
    top = np.where(np.take_along_axis(counts, top, axis=1) > 0, top, len(names))
    combos, inverse = np.unique(top, axis=0, return_inverse=True)
    texts = pa.array([", ".join(names[i] for i in row if i < len(names)) for row in combos], pa.string())
    return t.column("book_id").combine_chunks(), texts.take(pa.array(inverse.reshape(-1)))


def _csv_names(path: Path, want: tuple[str, ...], limits: ReadLimits) -> list[str]:
    """The column names on line 1 of a CSV file (bounded, strict UTF-8: errors name line 1),
    checked to hold `want`."""
    header = header_line(path, "utf-8", limits)
    names = [c.strip() for c in header.split(",")]
    column_index(path, names, want, ",", header)
    return names


def _data_after_header(path: Path, limits: ReadLimits) -> bool:
    """Whether anything but white space follows line 1 (read in bounded pieces)."""
    with open_raw(path, limits) as f:
        read_line(f, limits.max_line_bytes)
        for piece in iter(lambda: f.read(1 << 16), b""):
            if not piece.isspace():
                return True
    return False


def _read_map(path: Path, key: str, value: str, value_type: pa.DataType,
              limits: ReadLimits = DEFAULT_LIMITS) -> tuple[np.ndarray, pa.Array]:
    """A two-column id map (user_id_map.csv, book_id_map.csv), sorted by its integer key; its
    columns are found by name. Arrow reads it in bounded blocks (a line over a block fails)."""
    _csv_names(path, (key, value), limits)
    if not _data_after_header(path, limits):
        raise FlipDataError("no data rows (only a header)", path=str(path))
    try:
        t = pacsv.read_csv(str(path), convert_options=pacsv.ConvertOptions(
            column_types={key: pa.int64(), value: value_type}, include_columns=[key, value]))
    except pa.ArrowException as e:
        raise FlipDataError(f"cannot parse ({' '.join(str(e).split())[:300]})", path=str(path)) from None
    if not t.num_rows:
        raise FlipDataError("no data rows (the map is empty)", path=str(path))
    if t.column(key).null_count or t.column(value).null_count:
        raise FlipDataError("empty id in the map", path=str(path))
    keys = t.column(key).to_numpy()
    uniq, first = np.unique(keys, return_index=True)
    return uniq, t.column(value).combine_chunks().take(pa.array(first))


def _search(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ids in sorted_ids and whether each was found."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids


# ---------------------------------------------------------------- interactions

def _json_fast(data: bytes) -> pa.Table | None:
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


def _json_slow(lines: list[bytes], locs: np.ndarray, path: Path, bad: BadRows
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
            _add_bad(bad, path, locs[i], "malformed JSON", raw)
            continue
        reason = _check_record(rec)
        if reason:
            _add_bad(bad, path, locs[i], reason, raw)
            continue
        for n in INTERACTION_SCHEMA.names:
            cols[n].append(str(rec[n]) if n == "book_id" else rec[n])
        keep.append(i)
    t = pa.table({n: pa.array(cols[n], type=INTERACTION_SCHEMA.field(n).type) for n in cols})
    return t, locs[keep], [lines[i] for i in keep]


def _check_record(rec: Any) -> str | None:
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


def _json_rows(t: pa.Table, locs: np.ndarray | None, lines: list[bytes] | None,
               path: Path, bad: BadRows) -> _Rows | None:
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
    ok = _apply_checks(checks, len(rating), locs, lines, path, bad)
    if ok is None:
        return None
    if not ok.all():
        mask = pa.array(ok)
        user, book, ts, rating = user.filter(mask), book.filter(mask), ts[ok], rating[ok]
    return _Rows(user, pc.cast(book, pa.int64()).to_numpy(), rating, ts)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _code3(names: tuple[str, ...]) -> np.ndarray:
    return np.array([(ord(a) << 16) | (ord(b) << 8) | ord(c) for a, b, c in names], dtype=np.int64)


_MONTH_CODES, _WEEKDAY_CODES = _code3(_MONTHS), _code3(_WEEKDAYS)


def epoch_seconds(dates: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """date_added ("Mon Aug 01 13:41:57 -0700 2016") -> (epoch seconds, parsed?).

    Arrow's strptime is the reference but costs ~0.7 s per million rows, as much as parsing the
    JSON; strings in exactly the dumps' fixed 30-character shape are decoded here with array
    arithmetic instead (same result, see the tests), anything else goes to strptime."""
    dates = pc.fill_null(dates, "")
    n = len(dates)
    secs, ok = np.zeros(n, np.int64), np.zeros(n, bool)
    shaped = pc.binary_length(dates).to_numpy(zero_copy_only=False) == 30
    sub = dates if shaped.all() else dates.filter(pa.array(shaped))
    if len(sub):
        offs = np.frombuffer(sub.buffers()[1], np.int32)[sub.offset:sub.offset + len(sub) + 1]
        c = np.frombuffer(sub.buffers()[2], np.uint8)[offs[0]:offs[-1]].reshape(-1, 30)
        s_secs, s_ok = _fixed_dates(c)
        where = np.flatnonzero(shaped)
        secs[where], ok[where] = s_secs, s_ok
    rest = np.flatnonzero(~ok)
    if len(rest):
        ref = pc.strptime(dates.take(pa.array(rest)), format=DATE_FORMAT, unit="s", error_is_null=True)
        valid = ~pc.is_null(ref).to_numpy(zero_copy_only=False)
        secs[rest[valid]] = ref.filter(pa.array(valid)).cast(pa.int64()).to_numpy()
        ok[rest[valid]] = True
    return secs, ok


def _fixed_dates(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 30 bytes "Www Mmm DD HH:MM:SS +hhmm YYYY" -> (epoch seconds, well formed?)."""
    t = np.ascontiguousarray(c.T)                   # one contiguous row per character position
    d = t.astype(np.int32) - 48
    digits = [8, 9, 11, 12, 14, 15, 17, 18, 21, 22, 23, 24, 26, 27, 28, 29]
    good = np.all(d[digits].view(np.uint32) <= 9, axis=0)       # negatives wrap to large values
    good &= np.all(t[[3, 7, 10, 19, 25]] == 32, axis=0) & (t[13] == 58) & (t[16] == 58)
    good &= (t[20] == 43) | (t[20] == 45)
    w = (d[0] << 16) | (d[1] << 8) | d[2]
    good &= np.isin(w, _WEEKDAY_CODES - (48 << 16 | 48 << 8 | 48))
    mcode = (t[4].astype(np.int64) << 16) | (t[5].astype(np.int64) << 8) | t[6]
    order = np.argsort(_MONTH_CODES)
    month = order[np.minimum(np.searchsorted(_MONTH_CODES[order], mcode), 11)]
    good &= _MONTH_CODES[month] == mcode
    num = (lambda i, n: sum(d[i + k].astype(np.int64) * 10 ** (n - 1 - k) for k in range(n)))
    day, hour, minute, sec = num(8, 2), num(11, 2), num(14, 2), num(17, 2)
    tzh, tzm, year = num(21, 2), num(23, 2), num(26, 4)
    good &= (day >= 1) & (day <= 31) & (hour <= 23) & (minute <= 59) & (sec <= 59) & (tzh <= 14) & (tzm <= 59)
    m = month + 1                                   # days from civil (H. Hinnant), proleptic Gregorian
    y = year - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    sign = np.where(t[20] == 45, -1, 1)
    secs = days * 86400 + hour * 3600 + minute * 60 + sec - sign * (tzh * 3600 + tzm * 60)
    return np.where(good, secs, 0), good


def _apply_checks(checks: list[tuple[str, np.ndarray]], n: int, locs: np.ndarray | None,
                  lines: list[bytes] | None, path: Path, bad: BadRows) -> np.ndarray | None:
    """Mask of rows that pass every check; each failing row is counted once, under its first reason."""
    ok = np.ones(n, dtype=bool)
    for reason, failed in checks:
        hit = np.flatnonzero(ok & failed)
        if len(hit):
            if locs is None or lines is None:
                return None
            for i in hit:
                _add_bad(bad, path, locs[i], reason, lines[i])
            ok[hit] = False
    return ok


def _csv_header(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> list[str]:
    """The interactions CSV's column names; CSV_COLUMNS are then read by name, in any order."""
    return _csv_names(path, CSV_COLUMNS, limits)


def _csv_fast(data: bytes, header: list[str]) -> pa.Table | None:
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


def _csv_slow(lines: list[bytes], locs: np.ndarray, header: list[str], path: Path, bad: BadRows
              ) -> tuple[pa.Table, np.ndarray, list[bytes]]:
    where = [header.index(k) for k in CSV_COLUMNS]
    cols: list[list[int]] = [[] for _ in CSV_COLUMNS]
    keep: list[int] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = raw.decode("utf-8").rstrip("\r").split(",")
        except UnicodeDecodeError:
            _add_bad(bad, path, locs[i], "undecodable bytes", raw)
            continue
        if len(rec) != len(header):
            _add_bad(bad, path, locs[i], f"expected {len(header)} columns", raw)
            continue
        try:
            values = [int(rec[j]) for j in where]
            if any(not -2**63 <= v < 2**63 for v in values):
                raise ValueError
        except ValueError:
            _add_bad(bad, path, locs[i], "user_id, book_id or rating is not an integer", raw)
            continue
        for col, v in zip(cols, values):
            col.append(v)
        keep.append(i)
    t = pa.table({k: pa.array(c, pa.int64()) for k, c in zip(CSV_COLUMNS, cols)})
    return t, locs[keep], [lines[i] for i in keep]


def _csv_rows(t: pa.Table, locs: np.ndarray | None, lines: list[bytes] | None, path: Path,
              bad: BadRows, ctx: GoodReadsContext) -> _Rows | None:
    """Maps the integer ids to the real ones; a user missing from user_id_map.csv is a bad row, a
    book missing from book_id_map.csv an unknown book (-1, dropped and counted later)."""
    assert ctx.user_csv_ids is not None and ctx.user_names is not None
    assert ctx.book_csv_ids is not None and ctx.book_csv_real is not None
    uid, bid, rating = (t.column(k).to_numpy() for k in CSV_COLUMNS)
    upos, ufound = _search(ctx.user_csv_ids, uid)
    checks = [("rating outside 0..5", (rating < 0) | (rating > 5)),
              ("user_id not in user_id_map.csv", ~ufound)]
    ok = _apply_checks(checks, len(rating), locs, lines, path, bad)
    if ok is None:
        return None
    bpos, bfound = _search(ctx.book_csv_ids, bid[ok])
    book = np.where(bfound, ctx.book_csv_real[bpos] if len(bpos) else bpos, -1)
    return _Rows(ctx.user_names.take(pa.array(upos[ok])), book.astype(np.int64), rating[ok], None)


# ---------------------------------------------------------------- the reader

class GoodReadsReader(RawReader):
    spec = SPEC
    chunk_bytes = 16 << 20          # parse unit inside a part: bounds memory, keeps fallbacks local

    def parts(self, raw_dir: Path, target_bytes: int) -> list[RawPart]:
        raw_dir = Path(raw_dir)
        form, files = _interaction_files(raw_dir)
        _books_files(raw_dir)
        if form == "csv":
            require_file(raw_dir, USER_MAP)
            require_file(raw_dir, BOOK_MAP)
        out: list[RawPart] = []
        for path in files:
            ranges = [(0, -1)] if path.suffix == ".gz" else byte_ranges(path, target_bytes)
            for start, end in ranges:
                out.append(RawPart(len(out), str(path), start, end, {"form": form}))
        return out

    def context(self, raw_dir: Path, limits: ReadLimits = DEFAULT_LIMITS) -> GoodReadsContext:
        raw_dir = Path(raw_dir)
        book_ids, books = self._books(raw_dir, limits)
        ctx = GoodReadsContext(book_ids, books)
        if _interaction_files(raw_dir)[0] == "csv":
            ctx.user_csv_ids, ctx.user_names = _read_map(require_file(raw_dir, USER_MAP),
                                                         "user_id_csv", "user_id", pa.string(), limits)
            ctx.book_csv_ids, real = _read_map(require_file(raw_dir, BOOK_MAP),
                                               "book_id_csv", "book_id", pa.int64(), limits)
            ctx.book_csv_real = real.to_numpy()
        return ctx

    def _books(self, raw_dir: Path, limits: ReadLimits) -> tuple[np.ndarray, pa.Table]:
        """Sorted unique book ids and their 13 book-side columns (first record of a repeated id wins)."""
        tables, ids = [], []
        for path in _books_files(raw_dir):
            t, lines = _read_side(path, BOOK_SCHEMA, limits)
            ids.append(_ids(t.column("book_id"), "book_id", path, lines,
                            lambda p=path: _read_side_slow(p, BOOK_SCHEMA, limits)))
            tables.append(t)
        t = pa.concat_tables(tables).combine_chunks()
        uniq, first = np.unique(np.concatenate(ids), return_index=True)
        t = t.take(pa.array(first))
        authors = t.column("authors").combine_chunks()
        has = pc.greater(pc.list_value_length(authors), 0)
        first_author = pc.struct_field(pc.list_element(
            pc.if_else(has, authors, pa.scalar(None, authors.type)), 0), "author_id")
        cols: dict[str, pa.Array] = {f: _clean(t.column(k)) for f, k in BOOK_KEYS.items()}
        cols["author_id"] = _clean(first_author)
        cols["author_name"] = self._side_lookup(raw_dir, AUTHORS, first_author, "author_id", "name", limits)
        cols["media_type"] = self._side_lookup(raw_dir, WORKS, t.column("work_id").combine_chunks(),
                                               "work_id", "media_type", limits)
        genres_path = _find(raw_dir, GENRES)
        if genres_path is not None and genres_path.stat().st_size:
            g_ids, g_texts = _genre_strings(genres_path, limits)
            cols["genres"] = _lookup(t.column("book_id").combine_chunks(), g_ids, g_texts)
        else:
            cols["genres"] = pa.array(np.full(t.num_rows, UNKNOWN, dtype=object), pa.string())
        return uniq, pa.table({f: cols[f] for f in BOOK_FIELDS})

    @staticmethod
    def _side_lookup(raw_dir: Path, name: str, keys: pa.Array, key: str, value: str,
                     limits: ReadLimits) -> pa.Array:
        path = _find(raw_dir, name)
        if path is None:
            return pa.array(np.full(len(keys), UNKNOWN, dtype=object), pa.string())
        if path.stat().st_size == 0:
            raise FlipDataError("file is empty", path=str(path))
        t, _ = _read_side(path, pa.schema([(key, pa.string()), (value, pa.string())]), limits)
        return _lookup(keys, t.column(key).combine_chunks(),
                       t.column(value).combine_chunks())

    def read_part(self, part: RawPart, context: Any, seed: int,
                  limits: ReadLimits = DEFAULT_LIMITS) -> PartResult:
        results = list(self.iter_part(part, context, seed, max_rows=1 << 62, limits=limits))
        bad, stats = results[0].bad, results[0].stats
        return PartResult(pa.concat_tables([r.table for r in results]), bad, stats)

    def iter_part(self, part: RawPart, context: Any, seed: int, max_rows: int,
                  limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[PartResult]:
        """Streams: a table is yielded whenever `max_rows` kept rows have gathered, so a whole
        .gz file (one part) never sits in memory at once. Bad rows and stats ride on the last."""
        ctx: GoodReadsContext = context
        path = Path(part.path)
        csv = part.extra.get("form") == "csv"
        header = _csv_header(path, limits) if csv else []
        bad = BadRows()
        stats = {"dropped_rating_0": 0, "dropped_unknown_book": 0}
        users: list[pa.Array] = []
        labels, order, where = [], [], []
        pending, emitted = 0, 0
        by_line, seen = part.start == 0, False
        for first, data in _line_chunks(path, part.start, part.end, self.chunk_bytes, limits, bad):
            if csv and by_line and first == 1:            # the header line
                cut = data.find(b"\n") + 1
                data, first = (data[cut:], 2) if cut else (b"", 2)
            seen = seen or (bool(data) and not data.isspace())
            rows = self._chunk(data, first, by_line, csv, header, path, bad, ctx)
            if rows is None or not len(rows.rating):
                continue
            rated = rows.rating != 0
            pos, found = _search(ctx.book_ids, rows.book)
            stats["dropped_rating_0"] += int((~rated).sum())
            stats["dropped_unknown_book"] += int((rated & ~found).sum())
            keep = rated & found
            users.append(rows.user.filter(pa.array(keep)))
            labels.append((rows.rating[keep] > 3).astype(np.int8))
            where.append(pos[keep])
            if rows.ts is not None:
                order.append(rows.ts[keep])
            pending += int(keep.sum())
            if pending >= max_rows:
                table = self._table(part.index, emitted, seed, ctx, users, labels, order, where, csv)
                emitted += table.num_rows
                users, labels, order, where, pending = [], [], [], [], 0
                yield PartResult(table, BadRows(), {})
        if not seen and not bad.total and part.start == 0 and (part.end < 0 or part.end >= path.stat().st_size):
            raise FlipDataError("no data rows (only a header)" if csv else "file is empty", path=str(path))
        table = self._table(part.index, emitted, seed, ctx, users, labels, order, where, csv)
        yield PartResult(table, bad, stats)

    def _chunk(self, data: bytes, first: int, by_line: bool, csv: bool, header: list[str],
               path: Path, bad: BadRows, ctx: GoodReadsContext) -> _Rows | None:
        """Arrow's reader first; the per-line path when it fails or the chunk holds a bad row."""
        if not data or data.isspace():
            return None
        fast = _csv_fast(data, header) if csv else _json_fast(data)
        if fast is not None:
            rows = _csv_rows(fast, None, None, path, bad, ctx) if csv else _json_rows(fast, None, None, path, bad)
            if rows is not None:
                return rows
        lines, locs = _locators(data, first, by_line)
        if csv:
            t, locs, lines = _csv_slow(lines, locs, header, path, bad)
            return _csv_rows(t, locs, lines, path, bad, ctx)
        t, locs, lines = _json_slow(lines, locs, path, bad)
        return _json_rows(t, locs, lines, path, bad)

    def _table(self, index: int, first_row: int, seed: int, ctx: GoodReadsContext, users: list[pa.Array],
               labels: list[np.ndarray], order: list[np.ndarray], where: list[np.ndarray],
               csv: bool) -> pa.Table:
        cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
        label, pos = cat(labels, np.int8), cat(where, np.int64)
        ids = row_ids(index, len(label)) + first_row
        keys = seeded_order(ids, seed) if csv else cat(order, np.int64)
        user = pa.concat_arrays(users) if users else pa.array([], pa.string())
        books = ctx.books.take(pa.array(pos, pa.int64()))
        book_id = pc.cast(pa.array(ctx.book_ids[pos], pa.int64()), pa.string())
        arrays = [pa.array(label, pa.int8()), pa.array(keys, pa.int64()), pa.array(ids, pa.int64()),
                  user, book_id] + [books.column(f) for f in BOOK_FIELDS]
        return pa.table(arrays, schema=self.staging_schema())
