"""BookCrossing (`BX-Book-Ratings.csv`, `BX-Books.csv`, `BX-Users.csv`: ';', latin-1, '\\"' escapes).

Label = rating > 5, implicit 0s are negatives (paper IV-A). Ratings of books missing from
BX-Books.csv are dropped (no text to render), counted in the manifest. No timestamps: the split
is a seeded random 90/10."""
from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Any, Iterator


from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers.base import (DatasetSpec, PartResult, RawPart, RawReader,
                                         require_file, row_ids, seeded_order, staging_table)
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


def _rows(path: Path, ncols: int, bad: BadRows) -> Iterator[tuple[int, list[str]]]:
    """csv rows after the header, checked against the header's names and `ncols`."""
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.reader(f, delimiter=";", quotechar='"', escapechar="\\", doublequote=False)
        try:
            header = next(reader)
        except StopIteration:
            raise FlipDataError("file is empty", path=str(path)) from None
        for key in HEADERS[path.name]:
            if key not in header:
                raise FlipDataError(f"missing column (header has {header})", path=str(path), key=key)
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                bad.add(str(path), reader.line_num, f"csv error: {e}", "")
                continue
            if len(rec) != ncols:
                bad.add(str(path), reader.line_num, f"expected {ncols} columns, found {len(rec)}", ";".join(rec))
                continue
            yield reader.line_num, rec


def _text(v: str) -> str:
    return " ".join(html.unescape(v).split())


class BookCrossingReader(RawReader):
    spec = SPEC

    def parts(self, raw_dir: Path, target_bytes: int) -> list[RawPart]:
        require_file(raw_dir, BOOKS)
        require_file(raw_dir, USERS)
        return [RawPart(0, str(require_file(raw_dir, RATINGS)))]

    def context(self, raw_dir: Path) -> Any:
        bad = BadRows()
        books = {}
        for _, (isbn, title, author, year, publisher, *_urls) in _rows(require_file(raw_dir, BOOKS), 8, bad):
            books[isbn.strip()] = (_text(title), _text(author), year.strip(), _text(publisher))
        users = {}
        for _, (uid, location, age) in _rows(require_file(raw_dir, USERS), 3, bad):
            users[uid.strip()] = (_text(location), age if age not in ("NULL", "") else "unknown")
        return users, books, bad

    def read_part(self, part: RawPart, context: Any, seed: int) -> PartResult:
        users, books, side_bad = context
        bad = BadRows()
        bad.merge(side_bad)
        stats = {"dropped_unknown_isbn": 0, "dropped_unknown_user": 0}
        labels, cols = [], {f: [] for f in self.spec.fields}
        path = Path(part.path)
        for lineno, (uid, isbn, rating) in _rows(path, 3, bad):
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
