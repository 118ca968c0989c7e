"""The side tables every part joins to: the book side (books with their authors, works and genres)
and, for the CSV form, the id maps. Kept as flat sorted arrays and Arrow columns, so that the
context is small to ship through the object store and a join is a searchsorted."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from flip_dist.data.readers.base import require_file
from flip_dist.data.readers.goodreads.genres import genre_strings
from flip_dist.data.readers.goodreads.raw_files import (
    AUTHORS,
    BOOK_MAP,
    GENRES,
    USER_MAP,
    WORKS,
    books_files,
    csv_names,
    data_after_header,
    find,
    interaction_files,
)
from flip_dist.data.readers.goodreads.side_files import int_ids, read_side, read_side_slow
from flip_dist.data.readers.goodreads.spec import BOOK_FIELDS, UNKNOWN
from flip_dist.data.readers.guarded import DEFAULT_LIMITS, ReadLimits
from flip_dist.errors import FlipDataError

# Books-file key for each book-side field that comes straight from it.
BOOK_KEYS = {"title": "title", "average_rating": "average_rating", "num_reviews": "text_reviews_count",
             "num_pages": "num_pages", "is_ebook": "is_ebook", "format": "format",
             "publisher": "publisher", "publication_year": "publication_year", "work_id": "work_id"}
AUTHORS_TYPE = pa.list_(pa.struct([("author_id", pa.string())]))
BOOK_SCHEMA = pa.schema([("book_id", pa.string()), ("authors", AUTHORS_TYPE)]
                        + [(k, pa.string()) for k in BOOK_KEYS.values()])


@dataclass
class GoodReadsContext:
    """Book side (and, for the CSV form, the id maps) as flat arrays: small to ship, fast to join."""

    book_ids: np.ndarray                  # sorted unique int64
    books: pa.Table                       # BOOK_FIELDS, row i belongs to book_ids[i]
    user_csv_ids: np.ndarray | None = None   # sorted int64 user_id_csv
    user_names: pa.Array | None = None       # the real user_id for each of them
    book_csv_ids: np.ndarray | None = None   # sorted int64 book_id_csv
    book_csv_real: np.ndarray | None = None  # the real book_id for each of them


def build_context(raw_dir: Path, limits: ReadLimits = DEFAULT_LIMITS) -> GoodReadsContext:
    """The book side, plus the id maps when the interactions are in the CSV form."""
    book_ids, books = read_books(raw_dir, limits)
    ctx = GoodReadsContext(book_ids, books)
    if interaction_files(raw_dir)[0] == "csv":
        ctx.user_csv_ids, ctx.user_names = read_map(require_file(raw_dir, USER_MAP),
                                                    "user_id_csv", "user_id", pa.string(), limits)
        ctx.book_csv_ids, real = read_map(require_file(raw_dir, BOOK_MAP),
                                          "book_id_csv", "book_id", pa.int64(), limits)
        ctx.book_csv_real = real.to_numpy()
    return ctx


def read_books(raw_dir: Path, limits: ReadLimits) -> tuple[np.ndarray, pa.Table]:
    """Sorted unique book ids and their 13 book-side columns (first record of a repeated id wins)."""
    tables, ids = [], []
    for path in books_files(raw_dir):
        t, lines = read_side(path, BOOK_SCHEMA, limits)
        ids.append(int_ids(t.column("book_id"), "book_id", path, lines,
                           lambda p=path: read_side_slow(p, BOOK_SCHEMA, limits)))
        tables.append(t)
    t = pa.concat_tables(tables).combine_chunks()
    uniq, first = np.unique(np.concatenate(ids), return_index=True)
    t = t.take(pa.array(first))
    authors = t.column("authors").combine_chunks()
    has = pc.greater(pc.list_value_length(authors), 0)
    first_author = pc.struct_field(pc.list_element(
        pc.if_else(has, authors, pa.scalar(None, authors.type)), 0), "author_id")
    cols: dict[str, pa.Array] = {f: clean(t.column(k)) for f, k in BOOK_KEYS.items()}
    cols["author_id"] = clean(first_author)
    cols["author_name"] = _side_lookup(raw_dir, AUTHORS, first_author, "author_id", "name", limits)
    cols["media_type"] = _side_lookup(raw_dir, WORKS, t.column("work_id").combine_chunks(),
                                      "work_id", "media_type", limits)
    genres_path = find(raw_dir, GENRES)
    if genres_path is not None and genres_path.stat().st_size:
        g_ids, g_texts = genre_strings(genres_path, limits)
        cols["genres"] = lookup(t.column("book_id").combine_chunks(), g_ids, g_texts)
    else:
        cols["genres"] = pa.array(np.full(t.num_rows, UNKNOWN, dtype=object), pa.string())
    return uniq, pa.table({f: cols[f] for f in BOOK_FIELDS})


def _side_lookup(raw_dir: Path, name: str, keys: pa.Array, key: str, value: str,
                 limits: ReadLimits) -> pa.Array:
    """`value` of an optional side file per key: all "unknown" when the file is absent."""
    path = find(raw_dir, name)
    if path is None:
        return pa.array(np.full(len(keys), UNKNOWN, dtype=object), pa.string())
    if path.stat().st_size == 0:
        raise FlipDataError("file is empty", path=str(path))
    t, _ = read_side(path, pa.schema([(key, pa.string()), (value, pa.string())]), limits)
    return lookup(keys, t.column(key).combine_chunks(),
                  t.column(value).combine_chunks())


def clean(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Whitespace collapsed, empty or missing -> "unknown"."""
    arr = pc.fill_null(arr.cast(pa.string()), "")
    arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"\s+", " "))
    out = pc.if_else(pc.equal(arr, ""), UNKNOWN, arr)
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def lookup(keys: pa.Array, table_keys: pa.Array, values: pa.Array) -> pa.Array:
    """values[first i with table_keys[i] == key] per key (hash lookup), "unknown" where absent."""
    keys = pc.utf8_trim_whitespace(keys)
    keys = pc.if_else(pc.equal(keys, ""), pa.scalar(None, pa.string()), keys)
    idx = pc.index_in(keys, value_set=pc.utf8_trim_whitespace(table_keys), skip_nulls=True)
    return clean(values.take(idx))


def read_map(path: Path, key: str, value: str, value_type: pa.DataType,
             limits: ReadLimits = DEFAULT_LIMITS) -> tuple[np.ndarray, pa.Array]:
    """A two-column id map (user_id_map.csv, book_id_map.csv), sorted by its integer key; its
    columns are found by name. Arrow reads it in bounded blocks (a line over a block fails)."""
    csv_names(path, (key, value), limits)
    if not data_after_header(path, limits):
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


def search(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ids in sorted_ids and whether each was found."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids
