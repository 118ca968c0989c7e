"""A book's genres text from goodreads_book_genres_initial: its top genres by shelf count, so
that a prompt names a few genres, not the long tail of shelves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from flip_dist.data.readers.goodreads.side_files import SIDE_BLOCK, arrow_source, encodable, json_records, to_str
from flip_dist.data.readers.guarded import DEFAULT_LIMITS, LineTooLong, ReadLimits
from flip_dist.errors import FlipDataError

MAX_GENRES = 3


def genre_strings(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[pa.Array, pa.Array]:
    """(book_id, genres text) from goodreads_book_genres_initial: the MAX_GENRES genres with the
    highest counts, ties by name, joined with ", "."""
    try:
        with arrow_source(path, limits) as src:
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
    for lineno, rec in json_records(path, limits):
        for key in ("book_id", "genres"):
            if key not in rec:
                raise FlipDataError("missing key", path=str(path), row=lineno, key=key)
        g = rec["genres"] if isinstance(rec["genres"], dict) else {}
        top = sorted((-c, n) for n, c in g.items() if isinstance(c, (int, float)) and c > 0)
        book, text = to_str(rec["book_id"]), ", ".join(n for _, n in top[:MAX_GENRES])
        if not all(encodable(v) for v in (book or "", text)):
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
