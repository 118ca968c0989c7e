"""BookCrossing (`BX-Book-Ratings.csv`, `BX-Books.csv`, `BX-Users.csv`: ';', latin-1, '\\"' escapes).

Label = rating > 5, implicit 0s are negatives (paper IV-A). Ratings of books missing from
BX-Books.csv are dropped (no text to render), counted in the manifest. No timestamps: the split
is a seeded random 90/10.

Columns are found by header name, in any order (a missing one is an error naming it). Malformed
records, in any of the three files, are bad rows: csv errors, a wrong column count, a rating that is
not an integer in 0..10, an age that is neither a number nor NULL, a line over max_line_bytes
(a bounded scan finds those first; csv then reads lines cut to that bound, so one huge line is
never held)."""
from __future__ import annotations

import csv
import html
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers.base import (
    DatasetSpec,
    PartResult,
    RawPart,
    RawReader,
    iter_lines,
    require_file,
    row_ids,
    seeded_order,
    staging_table,
)
from flip_dist.data.readers.guarded import DEFAULT_LIMITS, ReadLimits, column_index, has_long_line
from flip_dist.errors import FlipDataError

SPEC = DatasetSpec(
    name="bookcrossing",
    fields=("user_id", "location", "age", "isbn", "title", "author", "year", "publisher"),
    field_texts=("user id", "location", "age", "ISBN", "book title", "author", "publication year", "publisher"),
    label_rule="label = rating > 5 (implicit 0 ratings are negatives)",
    split_rule="no timestamps: seeded random 90/10 (rows sorted by a splitmix64 key of row id and seed)",
    has_time=False,
)
RATINGS, BOOKS, USERS = "BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv"
HEADERS = {RATINGS: ["User-ID", "ISBN", "Book-Rating"],
           BOOKS: ["ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher"],
           USERS: ["User-ID", "Location", "Age"]}


DIALECT = {"delimiter": ";", "quotechar": '"', "escapechar": "\\", "doublequote": False}


class _Lines:
    """A file's lines for the csv module, decoded, each within max_line_bytes (a longer one is
    skipped as a bad row by iter_lines); `lineno` is the number of the last line handed out, so
    after a record it is the record's (last) line, as csv's own line_num would be."""

    def __init__(self, path: Path, bad: BadRows, limits: ReadLimits) -> None:
        self.lineno = 0
        self._lines = iter_lines(path, limits=limits, bad=bad)

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        self.lineno, raw = next(self._lines)
        return raw.decode("latin-1") + "\n"


@contextmanager
def _csv_reader(path: Path, bad: BadRows, limits: ReadLimits) -> Iterator[tuple[Any, Callable[[], int]]]:
    """A csv reader over the file and a function giving the line of its last record. The file
    itself when no line is over the limit (a bounded scan checks first; csv then runs at C
    speed), else its lines through _Lines, which leaves the long ones out as bad rows."""
    if has_long_line(path, limits):
        lines = _Lines(path, bad, limits)
        yield csv.reader(lines, **DIALECT), lambda: lines.lineno
        return
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.reader(f, **DIALECT)
        yield reader, lambda: reader.line_num


def _header(reader: Any, line: Callable[[], int], path: Path, bad: BadRows, limits: ReadLimits) -> list[str]:
    """Line 1's column names; a header over the line limit, or one that runs on (an unclosed
    quote), is an error naming line 1."""
    before = bad.total
    try:
        header = next(reader)
    except StopIteration:
        raise FlipDataError("file is empty", path=str(path)) from None
    except csv.Error as e:
        raise FlipDataError(f"header is not ';'-separated csv ({e})", path=str(path), row=1) from None
    if bad.total > before:
        raise FlipDataError(f"header {limits.long_line()}", path=str(path), row=1)
    if line() != 1:
        raise FlipDataError(f"header runs on to line {line()} (an unclosed quote?)", path=str(path), row=1)
    return [c.strip() for c in header]


def _rows(path: Path, bad: BadRows, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[tuple[int, list[str]]]:
    """The file's HEADERS columns, in that order, of each csv record after the header; records
    with another column count than the header's go to `bad`. No record at all is an error."""
    with _csv_reader(path, bad, limits) as (reader, line):
        header = _header(reader, line, path, bad, limits)
        where = column_index(path, header, HEADERS[path.name], ";")
        ncols, seen, before = len(header), False, bad.total
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                bad.add(str(path), line(), f"csv error: {e}", "")
                continue
            seen = True
            if len(rec) != ncols:
                bad.add(str(path), line(), f"expected {ncols} columns, found {len(rec)}", ";".join(rec))
                continue
            yield line(), [rec[i] for i in where]
    if not seen and bad.total == before:
        raise FlipDataError("no data rows (only a header)", path=str(path))


def _age(age: str) -> str | None:
    """An age in years, "unknown" for NULL or empty, None (a bad record) for anything else."""
    age = age.strip()
    if age in ("NULL", ""):
        return "unknown"
    return age if age.isascii() and age.isdigit() else None


def _text(v: str) -> str:
    return " ".join(html.unescape(v).split())


class BookCrossingReader(RawReader):
    spec = SPEC

    def parts(self, raw_dir: Path, target_bytes: int) -> list[RawPart]:
        require_file(raw_dir, BOOKS)
        require_file(raw_dir, USERS)
        return [RawPart(0, str(require_file(raw_dir, RATINGS)))]

    def context(self, raw_dir: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
        bad = BadRows()
        books = {}
        for _, (isbn, title, author, year, publisher) in _rows(require_file(raw_dir, BOOKS), bad, limits):
            books[isbn.strip()] = (_text(title), _text(author), year.strip(), _text(publisher))
        users = {}
        path = require_file(raw_dir, USERS)
        for lineno, (uid, location, age) in _rows(path, bad, limits):
            years = _age(age)
            if years is None:
                bad.add(str(path), lineno, f"age is not a number: {age!r}", f"{uid};{location};{age}")
                continue
            users[uid.strip()] = (_text(location), years)
        return users, books, bad

    def read_part(self, part: RawPart, context: Any, seed: int,
                  limits: ReadLimits = DEFAULT_LIMITS) -> PartResult:
        users, books, side_bad = context
        bad = BadRows()
        bad.merge(side_bad)
        stats = {"dropped_unknown_isbn": 0, "dropped_unknown_user": 0}
        labels, cols = [], {f: [] for f in self.spec.fields}
        path = Path(part.path)
        for lineno, (uid, isbn, rating) in _rows(path, bad, limits):
            try:
                r = int(rating)
            except ValueError:
                bad.add(str(path), lineno, f"rating is not an integer: {rating!r}", f"{uid};{isbn};{rating}")
                continue
            if not 0 <= r <= 10:
                bad.add(str(path), lineno, f"rating {r} outside 0..10", f"{uid};{isbn};{rating}")
                continue
            uid, isbn = uid.strip(), isbn.strip()
            b, u = books.get(isbn), users.get(uid)
            if b is None:
                stats["dropped_unknown_isbn"] += 1
                continue
            if u is None:
                stats["dropped_unknown_user"] += 1
                continue
            labels.append(int(r > 5))
            for f, v in zip(self.spec.fields, (uid, *u, isbn, *b)):
                cols[f].append(v)
        ids = row_ids(part.index, len(labels))
        table = staging_table(self.spec, labels, seeded_order(ids, seed), ids, cols)
        return PartResult(table, bad, stats)
