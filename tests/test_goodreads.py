"""GoodReads reader and synthetic generator, on small files in the UCSD Book Graph's formats.

Expected rows are recomputed here from the raw files with plain json/datetime, independently of
the reader's Arrow code paths."""
from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers import get_reader
from flip_dist.data.readers.base import iter_lines, seeded_order
from flip_dist.data.readers.goodreads import DATE_FORMAT, FIELDS, GoodReadsReader, _line_chunks, epoch_seconds
from flip_dist.data.synthetic_goodreads import write_raw_goodreads
from flip_dist.errors import FlipDataError

PY_DATE = "%a %b %d %H:%M:%S %z %Y"


# ------------------------------------------------------------------ helpers

def _lines(path: Path) -> Iterator[bytes]:
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        yield from f


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in _lines(path) if x.strip()]


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    """Records (dicts, or raw str/bytes lines for malformed input), one a line."""
    with open(path, "wb") as f:
        for r in records:
            f.write(r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode())
            f.write(b"\n")
    return path


def _book(book_id: str, title: str, authors: list[tuple[str, str]], work_id: str, **over: Any) -> dict:
    """A books-file record with every key of the real dump (values as strings, like the dump)."""
    rec = {"isbn": "0000000000", "text_reviews_count": "4", "series": [], "country_code": "US",
           "language_code": "", "popular_shelves": [{"count": "2", "name": "to-read"}], "asin": "",
           "is_ebook": "false", "average_rating": "4.29", "kindle_asin": "", "similar_books": [],
           "description": "", "format": "Hardcover", "link": "", "publisher": "Adventurekeen",
           "authors": [{"author_id": a, "role": r} for a, r in authors], "num_pages": "36",
           "publication_day": "24", "isbn13": "", "publication_month": "2", "edition_information": "",
           "publication_year": "2016", "url": "", "image_url": "", "book_id": book_id,
           "ratings_count": "7", "work_id": work_id, "title": title, "title_without_series": title}
    rec.update(over)
    return rec


def _inter(user: str, book: str, rating: int, date: str = "Mon Aug 01 13:41:57 -0700 2016",
           **over: Any) -> dict:
    rec = {"user_id": user, "book_id": book, "review_id": "c6c803a462ea21452ffc35b46093ada8",
           "is_read": rating > 0, "rating": rating, "review_text_incomplete": "", "date_added": date,
           "date_updated": date, "read_at": "", "started_at": ""}
    rec.update(over)
    return rec


def _side_files(d: Path) -> None:
    """Books 1-4 with authors, genres and works; book 4 has an author and a work the side files lack."""
    _write_jsonl(d / "goodreads_books.json", [
        _book("1", "Jump, Little  Wood\nDucks ", [("13195", ""), ("30853", "Photographs")], "47077776"),
        _book("2", "The Wanting of Levine", [("30853", "")], "368291", publisher="", num_pages=""),
        _book("3", "Third", [], "368291", is_ebook="true", format="Kindle Edition"),
        _book("4", "Fourth", [("999", "")], "5"),
    ])
    _write_jsonl(d / "goodreads_book_authors.json", [
        {"average_rating": "3.51", "author_id": "13195", "text_reviews_count": "634",
         "name": "Kat  Menschik", "ratings_count": "4599"},
        {"average_rating": "4.0", "author_id": "30853", "text_reviews_count": "1",
         "name": "Bill Photo", "ratings_count": "2"}])
    _write_jsonl(d / "goodreads_book_genres_initial.json", [
        {"book_id": "1", "genres": {"fiction": 3, "poetry": 9, "children": 3, "romance": 1}},
        {"book_id": "2", "genres": {}},
        {"book_id": "4", "genres": {"history, historical fiction, biography": 2}}])
    _write_jsonl(d / "goodreads_book_works.json", [
        {"books_count": "2", "work_id": "47077776", "media_type": "book", "original_title": "x"},
        {"books_count": "2", "work_id": "368291", "media_type": "", "original_title": "y"}])


def _read(raw: Path, target_bytes: int = 1 << 30, chunk_bytes: int | None = None, seed: int = 0
          ) -> tuple[pa.Table, BadRows, dict[str, int], int]:
    reader = GoodReadsReader()
    if chunk_bytes:
        reader.chunk_bytes = chunk_bytes
    ctx = reader.context(raw)
    parts = reader.parts(raw, target_bytes)
    tables, bad, stats = [], BadRows(keep=1000), {}
    for p in parts:
        res = reader.read_part(p, ctx, seed)
        assert res.table.schema == reader.staging_schema()
        tables.append(res.table)
        bad.merge(res.bad)
        for k, v in res.stats.items():
            stats[k] = stats.get(k, 0) + v
    return pa.concat_tables(tables), bad, stats, len(parts)


def _rows(t: pa.Table, drop: tuple[str, ...] = ("row_id",)) -> list[dict[str, Any]]:
    t = t.take(pc.sort_indices(t, [("row_id", "ascending")]))
    return [{k: v for k, v in r.items() if k not in drop} for r in t.to_pylist()]


def _find(d: Path, stem: str) -> Path | None:
    for p in (d / stem, d / f"{stem}.gz"):
        if p.exists():
            return p
    return None


def _expected(d: Path, interactions: list[dict] | None = None) -> tuple[list[dict], int]:
    """The staging rows the raw files call for, in file order, and the number of rating-0 rows."""
    def text(v):
        return " ".join((v or "").split()) or "unknown"
    books = {b["book_id"]: b for b in _jsonl(_find(d, "goodreads_books.json"))}
    side = {name: _jsonl(p) if (p := _find(d, f"goodreads_book_{name}.json")) else []
            for name in ("authors", "genres_initial", "works")}
    names = {a["author_id"]: a["name"] for a in side["authors"]}
    media = {w["work_id"]: w["media_type"] for w in side["works"]}
    genres = {g["book_id"]: g["genres"] for g in side["genres_initial"]}
    if interactions is None:
        interactions = _jsonl(_find(d, "goodreads_interactions_dedup.json"))
    out, zeros = [], 0
    for r in interactions:
        if r["rating"] == 0:
            zeros += 1
            continue
        b = books.get(r["book_id"])
        if b is None:
            continue
        first = b["authors"][0]["author_id"] if b["authors"] else ""
        top = sorted(((-c, n) for n, c in genres.get(r["book_id"], {}).items() if c > 0))[:3]
        out.append({
            "label": int(r["rating"] > 3),
            "order": int(datetime.strptime(r["date_added"], PY_DATE).timestamp()),
            "user_id": r["user_id"], "book_id": r["book_id"], "title": text(b["title"]),
            "genres": text(", ".join(n for _, n in top)), "average_rating": text(b["average_rating"]),
            "num_reviews": text(b["text_reviews_count"]), "author_id": text(first),
            "author_name": text(names.get(first)), "num_pages": text(b["num_pages"]),
            "is_ebook": text(b["is_ebook"]), "format": text(b["format"]), "publisher": text(b["publisher"]),
            "publication_year": text(b["publication_year"]), "work_id": text(b["work_id"]),
            "media_type": text(media.get(b["work_id"]))})
    return out, zeros


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gr_plain")
    write_raw_goodreads(d, rows=3000, features=1500, seed=3, progress=False)
    return d


# ------------------------------------------------------------------ spec and registry

def test_spec_fields_and_registry() -> None:
    reader = get_reader("goodreads")
    assert isinstance(reader, GoodReadsReader)
    assert reader.spec.fields == FIELDS and len(FIELDS) == 15
    assert reader.spec.field_texts[:4] == ("user id", "book id", "title", "genres")
    assert reader.spec.field_texts[-1] == "media type" and len(reader.spec.field_texts) == 15
    assert reader.spec.has_time
    assert "date_added" in reader.spec.split_rule and "seeded" in reader.spec.split_rule


# ------------------------------------------------------------------ labels, dates, join

def test_generated_files_read_as_the_raw_files_say(generated: Path) -> None:
    table, bad, stats, _ = _read(generated)
    want, zeros = _expected(generated)
    assert bad.total == 0
    assert stats == {"dropped_rating_0": zeros, "dropped_unknown_book": 0}
    assert zeros > 0 and len(want) > 1000
    assert _rows(table) == want
    labels = table.column("label").to_numpy()
    assert 0 < labels.mean() < 1


def test_hand_written_join_labels_and_drops(tmp_path: Path) -> None:
    _side_files(tmp_path)
    _write_jsonl(tmp_path / "goodreads_interactions_dedup.json", [
        _inter("u1", "1", 5, "Mon Aug 01 13:41:57 -0700 2016"),
        _inter("u1", "2", 3, "Tue Aug 02 00:00:00 +0000 2016"),
        _inter("u2", "3", 0),                                    # shelved only
        _inter("u2", "77", 4),                                   # not in the books file
        _inter("u3", "4", 4, "Sun Jan 01 00:00:00 -0800 2012"),
        _inter("u3", "3", 1, "Sat Dec 31 23:59:59 +0100 2011"),
    ])
    table, bad, stats, _ = _read(tmp_path)
    assert bad.total == 0
    assert stats == {"dropped_rating_0": 1, "dropped_unknown_book": 1}
    rows = _rows(table)
    assert [(r["user_id"], r["book_id"], r["label"]) for r in rows] == \
        [("u1", "1", 1), ("u1", "2", 0), ("u3", "4", 1), ("u3", "3", 0)]
    assert [r["order"] for r in rows] == [1470084117, 1470096000, 1325404800, 1325372399]
    one, two, four, three = rows
    assert one["title"] == "Jump, Little Wood Ducks"              # whitespace collapsed
    assert one["author_id"] == "13195" and one["author_name"] == "Kat Menschik"   # first author
    assert one["genres"] == "poetry, children, fiction"           # top 3 by count, ties by name
    assert one["media_type"] == "book" and one["work_id"] == "47077776"
    assert two["author_name"] == "Bill Photo" and two["genres"] == "unknown"
    assert two["publisher"] == "unknown" and two["num_pages"] == "unknown"
    assert two["media_type"] == "unknown"                          # empty media_type
    assert three["author_id"] == "unknown" and three["author_name"] == "unknown"   # no authors
    assert three["is_ebook"] == "true" and three["format"] == "Kindle Edition"
    assert three["genres"] == "unknown"                            # not in the genres file
    assert four["author_name"] == "unknown" and four["media_type"] == "unknown"
    assert four["genres"] == "history, historical fiction, biography"
    assert four["num_reviews"] == "4" and four["average_rating"] == "4.29"
    assert rows == _expected(tmp_path)[0]


def test_side_files_are_optional(tmp_path: Path) -> None:
    _side_files(tmp_path)
    for name in ("authors", "genres_initial", "works"):
        (tmp_path / f"goodreads_book_{name}.json").unlink()
    _write_jsonl(tmp_path / "goodreads_interactions_dedup.json", [_inter("u", "1", 4), _inter("u", "2", 5)])
    rows = _rows(_read(tmp_path)[0])
    assert {r["author_name"] for r in rows} == {r["genres"] for r in rows} == \
        {r["media_type"] for r in rows} == {"unknown"}
    assert [r["title"] for r in rows] == ["Jump, Little Wood Ducks", "The Wanting of Levine"]
    assert rows[0]["author_id"] == "13195"


def test_epoch_seconds_matches_strptime_and_python() -> None:
    from flip_dist.data.synthetic_goodreads import _dates
    rng = np.random.default_rng(0)
    ts = rng.integers(-2_000_000_000, 4_000_000_000, 50_000)
    odd = ["Tue Aug 01 13:41:57 -0700 2016", "Xyz Aug 01 13:41:57 -0700 2016",
           "Mon Feb 30 13:41:57 -0700 2016", "Mon Aug 1 13:41:57 -0700 2016",
           "Mon Aug 01 24:41:57 -0700 2016", "Mon Aug 01 13:41:60 -0700 2016",
           "Mon aug 01 13:41:57 -0700 2016", "Mon Aug 01 13:41:57 -0799 2016", "",
           " Mon Aug 01 13:41:57 -0700 2016", "Mon Aug 32 13:41:57 -0700 2016",
           "Mon Aug 01 13:41:57 -0700 20x6", "Fri Dec 31 23:59:59 +0000 9999", "2016-08-01"]
    dates = pa.concat_arrays([_dates(ts), pa.array(odd, pa.string())])
    got, ok = epoch_seconds(dates)
    ref = pc.strptime(dates, format=DATE_FORMAT, unit="s", error_is_null=True)
    ref_ok = ~pc.is_null(ref).to_numpy(zero_copy_only=False)
    assert (ok == ref_ok).all()
    assert (got[ok] == ref.filter(pa.array(ref_ok)).cast(pa.int64()).to_numpy()).all()
    assert (got[:len(ts)] == ts).all() and ok[:len(ts)].all()
    py = [int(datetime.strptime(s, PY_DATE).timestamp()) for s in dates.to_pylist()[:200]]
    assert got[:200].tolist() == py
    assert not ok[-len(odd):][[1, 4, 7, 8, 9, 11, 13]].any()


# ------------------------------------------------------------------ byte-range parts

def test_line_chunks_cover_every_line_once(generated: Path) -> None:
    path = generated / "goodreads_interactions_dedup.json"
    data = path.read_bytes()
    starts = {0} | {i + 1 for i in range(len(data)) if data[i:i + 1] == b"\n"}
    reader = GoodReadsReader()
    on_line_start = 0
    for target in (97, 1000, 4099, 65_536, 333_333, 10**9):
        parts = reader.parts(generated, target)
        assert [p.index for p in parts] == list(range(len(parts)))
        assert parts[0].start == 0 and parts[-1].end == len(data)
        on_line_start += sum(p.start in starts for p in parts[1:])
        pieces = []
        for p in parts:
            got = b"".join(c for _, c in _line_chunks(path, p.start, p.end, 777))
            ref = [line for _, line in iter_lines(path, p.start, p.end)]
            assert got.split(b"\n")[:-1] == ref                     # the same lines as base.iter_lines
            pieces.append(got)
        assert b"".join(pieces) == data                             # each line once, in order
    assert on_line_start > 0                                         # both boundary cases were hit


def test_parts_read_the_same_rows_as_one_part(generated: Path) -> None:
    whole, _, whole_stats, n_parts = _read(generated)
    assert n_parts == 1
    for target, chunk in ((5_000, 1_000), (40_000, 3_000), (250_000, 1 << 20)):
        split, bad, stats, n = _read(generated, target, chunk)
        assert n > 1 and bad.total == 0 and stats == whole_stats
        assert _rows(split, ("row_id",)) == _rows(whole, ("row_id",))
        ids = split.column("row_id").to_numpy()
        assert len(np.unique(ids)) == len(ids)


def test_gz_input_reads_like_plain(tmp_path: Path, generated: Path) -> None:
    write_raw_goodreads(tmp_path, rows=3000, features=1500, seed=3, gzip=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name + ".gz" for p in generated.iterdir())
    for p in generated.iterdir():
        assert gzip.decompress((tmp_path / (p.name + ".gz")).read_bytes()) == p.read_bytes()
    gz, bad, _, n_parts = _read(tmp_path, target_bytes=1000, chunk_bytes=5000)
    assert n_parts == 1 and bad.total == 0
    assert _rows(gz) == _rows(_read(generated)[0])


def test_genre_subset_file_names(tmp_path: Path) -> None:
    _side_files(tmp_path)
    books = tmp_path / "goodreads_books.json"
    with gzip.open(tmp_path / "goodreads_books_poetry.json.gz", "wb") as f:
        f.write(books.read_bytes())
    books.unlink()
    recs = [_inter("u", "1", 5), _inter("v", "2", 1)]
    with gzip.open(tmp_path / "goodreads_interactions_poetry.json.gz", "wb") as f:
        f.write(b"".join(json.dumps(r).encode() + b"\n" for r in recs))
    table, bad, _, n = _read(tmp_path)
    assert n == 1 and bad.total == 0
    assert [(r["user_id"], r["label"], r["title"]) for r in _rows(table)] == \
        [("u", 1, "Jump, Little Wood Ducks"), ("v", 0, "The Wanting of Levine")]


# ------------------------------------------------------------------ the CSV form

def _to_csv_form(src: Path, dst: Path, extra_unmapped_book: bool = True) -> list[dict]:
    """The CSV release of `src`'s JSON interactions: integer ids, id maps, no dates."""
    for p in src.iterdir():
        if not p.name.startswith("goodreads_interactions"):
            shutil.copy(p, dst / p.name)
    inter = _jsonl(src / "goodreads_interactions_dedup.json")
    users = list(dict.fromkeys(r["user_id"] for r in inter))[::-1]
    books = [b["book_id"] for b in _jsonl(src / "goodreads_books.json")][::-1]
    uid = {u: i for i, u in enumerate(users)}
    bid = {b: i + 5 for i, b in enumerate(books)}
    with open(dst / "user_id_map.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id_csv", "user_id"])
        w.writerows([i, u] for u, i in uid.items())
    with open(dst / "book_id_map.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["book_id_csv", "book_id"])
        w.writerows([i, b] for b, i in bid.items())
    with open(dst / "goodreads_interactions.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", "book_id", "is_read", "rating", "is_reviewed"])
        for r in inter:
            w.writerow([uid[r["user_id"]], bid[r["book_id"]], int(r["is_read"]), r["rating"], 0])
        if extra_unmapped_book:
            w.writerow([0, 1, 1, 5, 0])                               # book_id_csv 1 is not mapped
    return inter


def test_csv_form_with_id_maps(tmp_path: Path, generated: Path) -> None:
    inter = _to_csv_form(generated, tmp_path)
    table, bad, stats, _ = _read(tmp_path, seed=7)
    want, zeros = _expected(generated, inter)
    assert bad.total == 0
    assert stats == {"dropped_rating_0": zeros, "dropped_unknown_book": 1}
    got = _rows(table, ("row_id", "order"))
    assert got == [{k: v for k, v in r.items() if k != "order"} for r in want]
    ids = table.column("row_id").to_numpy()
    assert (table.column("order").to_numpy() == seeded_order(ids, 7)).all()
    assert not (_read(tmp_path, seed=8)[0].column("order").to_numpy() == seeded_order(ids, 7)).all()
    split, bad, stats2, n = _read(tmp_path, target_bytes=3000, chunk_bytes=500, seed=7)
    assert n > 3 and bad.total == 0 and stats2 == stats
    assert _rows(split, ("row_id", "order")) == got


def test_csv_bad_rows_and_header(tmp_path: Path) -> None:
    _side_files(tmp_path)
    (tmp_path / "user_id_map.csv").write_text("user_id_csv,user_id\n0,aaaa\n1,bbbb\n")
    (tmp_path / "book_id_map.csv").write_text("book_id_csv,book_id\n0,1\n1,2\n")
    (tmp_path / "goodreads_interactions.csv").write_text(
        "user_id,book_id,is_read,rating,is_reviewed\n0,0,1,5,0\n0,1,1,x,0\n1,1,1,2,0\n"
        "9,0,1,4,0\n1,0,1\n1,0,1,8,0\n")
    table, bad, _, _ = _read(tmp_path)
    assert [(r["user_id"], r["book_id"], r["label"]) for r in _rows(table)] == \
        [("aaaa", "1", 1), ("bbbb", "2", 0)]
    assert sorted((s["line"], s["reason"]) for s in bad.samples) == [
        (3, "user_id, book_id or rating is not an integer"), (5, "user_id not in user_id_map.csv"),
        (6, "expected 5 columns"), (7, "rating outside 0..5")]
    (tmp_path / "goodreads_interactions.csv").write_text("user,book_id,rating\n0,0,5\n")
    with pytest.raises(FlipDataError, match="user_id") as e:
        _read(tmp_path)
    assert e.value.key == "user_id"


# ------------------------------------------------------------------ bad input

def test_bad_lines_are_counted_with_their_line(tmp_path: Path) -> None:
    _side_files(tmp_path)
    good = [_inter("u1", "1", 5), _inter("u2", "2", 4), _inter("u3", "3", 2)]
    bad_lines = {
        2: ('{"user_id": "x", "book_id": "1", "rating": 4', "malformed JSON"),
        4: (json.dumps({k: v for k, v in _inter("x", "1", 4).items() if k != "rating"}), "missing key 'rating'"),
        5: (json.dumps(dict(_inter("x", "1", 4), rating="4")), "rating is not an integer"),
        6: (json.dumps(_inter("x", "1", 7)), "rating outside 0..5"),
        7: (json.dumps(_inter("x", "abc", 4)), "book_id is not an integer"),
        8: (json.dumps(_inter("x", "1", 4, "yesterday")), "unparseable date_added"),
        9: (json.dumps(_inter("x", "1", 4)).replace('"x"', '"\xff"').encode("latin-1"),
            "undecodable bytes in user_id"),
        10: ("[1, 2]", "not a JSON object"),
        12: (json.dumps(_inter("", "1", 4)), "empty user_id"),
    }
    lines: list[Any] = []
    for n in range(1, 15):
        if n in bad_lines:
            lines.append(bad_lines[n][0])
        elif n == 11:
            lines.append("")                                       # blank lines are not rows
        else:
            lines.append(good[n % 3])
    path = _write_jsonl(tmp_path / "goodreads_interactions_dedup.json", lines)
    for chunk in (None, 300):
        table, bad, stats, _ = _read(tmp_path, chunk_bytes=chunk)
        assert bad.total == len(bad_lines)
        assert sorted((s["line"], s["reason"]) for s in bad.samples) == \
            sorted((n, r) for n, (_, r) in bad_lines.items())
        assert all(s["file"] == str(path) for s in bad.samples)
        kept = [good[n % 3] for n in range(1, 15) if n not in bad_lines and n != 11]
        assert _rows(table) == _expected(tmp_path, kept)[0]
        assert stats["dropped_rating_0"] == 0
    # A part that starts mid-file reports byte offsets of the bad lines instead.
    data = path.read_bytes()
    offsets = [0] + [i + 1 for i, c in enumerate(data) if c == 10]
    reader = GoodReadsReader()
    ctx = reader.context(tmp_path)
    part = reader.parts(tmp_path, len(data) // 2 + 1)[1]
    res = reader.read_part(part, ctx, 0)
    want = {offsets[n - 1] for n in bad_lines if offsets[n - 1] >= part.start}
    assert want and {s["line"] for s in res.bad.samples} == want


def test_missing_books_file_is_named(tmp_path: Path) -> None:
    _side_files(tmp_path)
    (tmp_path / "goodreads_books.json").unlink()
    _write_jsonl(tmp_path / "goodreads_interactions_dedup.json", [_inter("u", "1", 4)])
    reader = GoodReadsReader()
    with pytest.raises(FlipDataError, match="goodreads_books.json"):
        reader.parts(tmp_path, 1 << 20)
    with pytest.raises(FlipDataError, match="goodreads_books.json"):
        reader.context(tmp_path)


def test_missing_interactions_and_maps_are_named(tmp_path: Path) -> None:
    _side_files(tmp_path)
    with pytest.raises(FlipDataError, match="goodreads_interactions_dedup.json"):
        GoodReadsReader().parts(tmp_path, 1 << 20)
    (tmp_path / "goodreads_interactions.csv").write_text("user_id,book_id,is_read,rating,is_reviewed\n0,0,1,4,0\n")
    (tmp_path / "user_id_map.csv").write_text("user_id_csv,user_id\n0,a\n")
    with pytest.raises(FlipDataError, match="book_id_map.csv"):
        GoodReadsReader().parts(tmp_path, 1 << 20)


@pytest.mark.parametrize("key", ["book_id", "title", "authors", "work_id", "text_reviews_count"])
def test_missing_key_in_books_names_key_file_and_line(tmp_path: Path, key: str) -> None:
    _side_files(tmp_path)
    recs = _jsonl(tmp_path / "goodreads_books.json")
    del recs[2][key]
    path = _write_jsonl(tmp_path / "goodreads_books.json", recs)
    with pytest.raises(FlipDataError) as e:
        GoodReadsReader().context(tmp_path)
    assert e.value.key == key and e.value.path == str(path) and e.value.row == 3
    assert key in str(e.value) and "goodreads_books.json" in str(e.value)


def test_bad_books_lines_are_errors(tmp_path: Path) -> None:
    _side_files(tmp_path)
    recs: list[Any] = _jsonl(tmp_path / "goodreads_books.json")
    recs[1]["book_id"] = "B00X"
    _write_jsonl(tmp_path / "goodreads_books.json", recs)
    with pytest.raises(FlipDataError, match="not an integer") as e:
        GoodReadsReader().context(tmp_path)
    assert e.value.row == 2 and e.value.key == "book_id"
    recs[1]["book_id"] = "2"
    recs.insert(1, '{"book_id": "9", "title": ')                   # a truncated download
    _write_jsonl(tmp_path / "goodreads_books.json", recs)
    with pytest.raises(FlipDataError, match="malformed JSON") as e:
        GoodReadsReader().context(tmp_path)
    assert e.value.row == 2


def test_missing_key_in_side_file_is_named(tmp_path: Path) -> None:
    _side_files(tmp_path)
    _write_jsonl(tmp_path / "goodreads_book_works.json", [{"work_id": "5"}])
    with pytest.raises(FlipDataError) as e:
        GoodReadsReader().context(tmp_path)
    assert e.value.key == "media_type" and "goodreads_book_works.json" in str(e.value)


def test_empty_files_are_errors(tmp_path: Path) -> None:
    _side_files(tmp_path)
    (tmp_path / "goodreads_interactions_dedup.json").write_bytes(b"")
    with pytest.raises(FlipDataError, match="empty"):
        GoodReadsReader().parts(tmp_path, 1 << 20)
    (tmp_path / "goodreads_interactions_dedup.json").unlink()
    with gzip.open(tmp_path / "goodreads_interactions_dedup.json.gz", "wb"):
        pass
    reader = GoodReadsReader()
    ctx = reader.context(tmp_path)
    with pytest.raises(FlipDataError, match="empty"):
        reader.read_part(reader.parts(tmp_path, 1 << 20)[0], ctx, 0)
    (tmp_path / "goodreads_books.json").write_bytes(b"")
    with pytest.raises(FlipDataError, match="empty"):
        reader.context(tmp_path)


# ------------------------------------------------------------------ generator

def test_generator_counts_and_vocabulary(tmp_path: Path) -> None:
    counts = write_raw_goodreads(tmp_path, rows=20_000, features=8_000, seed=1, progress=False)
    inter = _jsonl(tmp_path / "goodreads_interactions_dedup.json")
    books = _jsonl(tmp_path / "goodreads_books.json")
    assert counts["interactions"] == len(inter) == 20_000
    assert counts["books"] == len(books) == len({b["book_id"] for b in books})
    assert counts["rating_0"] == sum(r["rating"] == 0 for r in inter)
    assert {r["rating"] for r in inter} == set(range(6))
    assert len({r["user_id"] for r in inter}) == counts["users"]   # every user appears
    assert {r["book_id"] for r in inter} == {b["book_id"] for b in books}
    years = {datetime.strptime(r["date_added"], PY_DATE).year for r in inter}
    assert len(years) >= 8
    user_freq = np.bincount(np.unique([r["user_id"] for r in inter], return_inverse=True)[1])
    assert user_freq.max() > 20 * np.median(user_freq)              # Zipf-like, not uniform
    table = _read(tmp_path)[0]
    vocab = sum(len(set(table.column(f).to_pylist())) for f in FIELDS)
    assert 0.6 * 8_000 < vocab < 1.3 * 8_000


def test_generator_is_seeded(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_raw_goodreads(a, rows=500, features=400, seed=5, progress=False)
    write_raw_goodreads(b, rows=500, features=400, seed=5, progress=False)
    write_raw_goodreads(c, rows=500, features=400, seed=6, progress=False)
    name = "goodreads_interactions_dedup.json"
    assert (a / name).read_bytes() == (b / name).read_bytes() != (c / name).read_bytes()
    assert not any(p.name.endswith(".tmp") for p in a.iterdir())


def test_iter_part_streams_a_gz_part_in_bounded_tables(tmp_path: Path, generated: Path) -> None:
    write_raw_goodreads(tmp_path, rows=3000, features=1500, seed=3, gzip=True, progress=False)
    reader = GoodReadsReader()
    reader.chunk_bytes = 20_000
    ctx = reader.context(tmp_path)
    (part,) = reader.parts(tmp_path, 1 << 30)
    pieces = list(reader.iter_part(part, ctx, 0, max_rows=500))
    assert len(pieces) > 3
    assert all(p.table.num_rows < 500 + 200 for p in pieces)   # max_rows plus at most one chunk
    whole = pa.concat_tables([p.table for p in pieces])
    ids = whole["row_id"].to_pylist()
    assert len(set(ids)) == len(ids)
    assert whole.equals(reader.read_part(part, ctx, 0).table)
    assert (sum(p.stats.get("dropped_rating_0", 0) for p in pieces)
            == reader.read_part(part, ctx, 0).stats["dropped_rating_0"])

