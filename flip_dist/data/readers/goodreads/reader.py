"""GoodReadsReader: the RawReader that ties the package together. It cuts the interactions into
parts, builds the context once, and streams each part, chunk by chunk, into labelled staging rows
joined to the book side."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers.base import PartResult, RawPart, RawReader, require_file, row_ids, seeded_order
from flip_dist.data.readers.goodreads.byte_ranges import file_ranges, line_chunks, locators
from flip_dist.data.readers.goodreads.context import GoodReadsContext, build_context, search
from flip_dist.data.readers.goodreads.csv_interactions import csv_fast, csv_header, csv_rows, csv_slow
from flip_dist.data.readers.goodreads.json_interactions import json_fast, json_rows, json_slow
from flip_dist.data.readers.goodreads.raw_files import BOOK_MAP, USER_MAP, books_files, interaction_files
from flip_dist.data.readers.goodreads.rows import Rows
from flip_dist.data.readers.goodreads.spec import BOOK_FIELDS, SPEC
from flip_dist.data.readers.guarded import DEFAULT_LIMITS, ReadLimits
from flip_dist.errors import FlipDataError


class GoodReadsReader(RawReader):
    spec = SPEC
    chunk_bytes = 16 << 20          # parse unit inside a part: bounds memory, keeps fallbacks local

    def parts(self, raw_dir: Path, target_bytes: int) -> list[RawPart]:
        raw_dir = Path(raw_dir)
        form, files = interaction_files(raw_dir)
        books_files(raw_dir)
        if form == "csv":
            require_file(raw_dir, USER_MAP)
            require_file(raw_dir, BOOK_MAP)
        out: list[RawPart] = []
        for path in files:
            for start, end in file_ranges(path, target_bytes):
                out.append(RawPart(len(out), str(path), start, end, {"form": form}))
        return out

    def context(self, raw_dir: Path, limits: ReadLimits = DEFAULT_LIMITS) -> GoodReadsContext:
        return build_context(Path(raw_dir), limits)

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
        header = csv_header(path, limits) if csv else []
        bad = BadRows()
        stats = {"dropped_rating_0": 0, "dropped_unknown_book": 0}
        users: list[pa.Array] = []
        labels, order, where = [], [], []
        pending, emitted = 0, 0
        by_line, seen = part.start == 0, False
        for first, data in line_chunks(path, part.start, part.end, self.chunk_bytes, limits, bad):
            if csv and by_line and first == 1:            # the header line
                cut = data.find(b"\n") + 1
                data, first = (data[cut:], 2) if cut else (b"", 2)
            seen = seen or (bool(data) and not data.isspace())
            rows = self._chunk(data, first, by_line, csv, header, path, bad, ctx)
            if rows is None or not len(rows.rating):
                continue
            rated = rows.rating != 0
            pos, found = search(ctx.book_ids, rows.book)
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
               path: Path, bad: BadRows, ctx: GoodReadsContext) -> Rows | None:
        """Arrow's reader first; the per-line path when it fails or the chunk holds a bad row."""
        if not data or data.isspace():
            return None
        fast = csv_fast(data, header) if csv else json_fast(data)
        if fast is not None:
            rows = csv_rows(fast, None, None, path, bad, ctx) if csv else json_rows(fast, None, None, path, bad)
            if rows is not None:
                return rows
        lines, locs = locators(data, first, by_line)
        if csv:
            t, locs, lines = csv_slow(lines, locs, header, path, bad)
            return csv_rows(t, locs, lines, path, bad, ctx)
        t, locs, lines = json_slow(lines, locs, path, bad)
        return json_rows(t, locs, lines, path, bad)

    def _table(self, index: int, first_row: int, seed: int, ctx: GoodReadsContext, users: list[pa.Array],
               labels: list[np.ndarray], order: list[np.ndarray], where: list[np.ndarray],
               csv: bool) -> pa.Table:
        def cat(xs: list[np.ndarray], dt: type) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros(0, dt)

        label, pos = cat(labels, np.int8), cat(where, np.int64)
        ids = row_ids(index, len(label)) + first_row
        keys = seeded_order(ids, seed) if csv else cat(order, np.int64)
        user = pa.concat_arrays(users) if users else pa.array([], pa.string())
        books = ctx.books.take(pa.array(pos, pa.int64()))
        book_id = pc.cast(pa.array(ctx.book_ids[pos], pa.int64()), pa.string())
        arrays = [pa.array(label, pa.int8()), pa.array(keys, pa.int64()), pa.array(ids, pa.int64()),
                  user, book_id] + [books.column(f) for f in BOOK_FIELDS]
        return pa.table(arrays, schema=self.staging_schema())
