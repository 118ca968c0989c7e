"""Bad raw input, kind by kind: each ends in a counted bad row (file and line in the quarantine) or
a FlipDataError naming the file and the line or key, never a stray exception, a hang, unbounded
memory or a partial output folder. On the real ML-100K (RecBole's files) where the format allows,
else on small files in the exact distributed formats of ML-1M, GroupLens ML-100K, BookCrossing and
GoodReads. Most checks call the readers directly (no Ray); a few run `preprocess()` end to end."""
from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from flip_dist.config import PreprocessConfig
from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers import DEFAULT_LIMITS, ReadLimits, get_reader
from flip_dist.data.readers.goodreads import _line_chunks
from flip_dist.errors import FlipDataError

MB = 1 << 20
ML100K_ROWS = 72_855            # real ML-100K staging rows (rating 3 dropped)
INTER, USER, ITEM = "ml-100k.inter", "ml-100k.user", "ml-100k.item"


# ------------------------------------------------------------------ raw folders

@pytest.fixture()
def ml100k(ml100k_raw: Path, tmp_path: Path) -> Path:
    """A private copy of the real ML-100K (RecBole's atomic files) to damage."""
    dst = tmp_path / "ml-100k"
    shutil.copytree(ml100k_raw, dst)
    return dst


def _garbage(n: int = 64 << 10, seed: int = 0) -> bytes:
    """Random bytes with runs of NULs: what a binary file (or a half-downloaded one) looks like."""
    data = bytearray(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    for at in range(1000, n, 9000):
        data[at:at + 300] = b"\0" * 300
    return bytes(data)


ML1M = {"users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
        "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Misérables, Les (1995)::Drama\n",
        "ratings.dat": "1::1::5::978300760\n1::2::3::978302109\n2::2::1::978301968\n2::1::4::978300275\n"}


def _ml1m(tmp_path: Path, **files: str | bytes) -> Path:
    raw = tmp_path / "ml-1m"
    raw.mkdir(parents=True)
    for name, text in {**ML1M, **{k.replace("_", "."): v for k, v in files.items()}}.items():
        (raw / name).write_bytes(text if isinstance(text, bytes) else text.encode("latin-1"))
    return raw


def _grouplens(tmp_path: Path, ratings: bytes) -> Path:
    """A GroupLens-layout ML-100K (u.data tab-separated, u.user/u.item '|'-separated)."""
    raw = tmp_path / "gl"
    raw.mkdir(parents=True)
    (raw / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = "|".join(["0"] * 18 + ["1"])
    (raw / "u.item").write_text(f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags}\n"
                                f"2|GoldenEye (1995)|01-Jan-1995||http://x|{flags}\n")
    (raw / "u.data").write_bytes(ratings)
    return raw


BX = {"BX-Book-Ratings.csv": '"User-ID";"ISBN";"Book-Rating"\n"2";"0195153448";"0"\n"8";"0002005018";"5"\n'
                             '"8";"0060973129";"9"\n"2";"0060973129";"7"\n',
      "BX-Books.csv": '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";'
                      '"Image-URL-M";"Image-URL-L"\n'
                      '"0195153448";"Classical Mythology";"Mark P. O. Morford";"2002";"Oxford University Press";'
                      '"s";"m";"l"\n'
                      '"0002005018";"The Word \\"Desire\\"";"Rikki Ducornet";"1997";"Henry Holt &amp; Company";'
                      '"s";"m";"l"\n'
                      '"0060973129";"Decision in Normandy";"Carlo D\'Este";"1991";"HarperPerennial";"s";"m";"l"\n',
      "BX-Users.csv": '"User-ID";"Location";"Age"\n"2";"stockton, california, usa";"18"\n'
                      '"8";"timmins, ontario, canada";NULL\n'}


def _bx(tmp_path: Path, **files: str | bytes) -> Path:
    raw = tmp_path / "bx"
    raw.mkdir(parents=True)
    for name, text in {**BX, **{k.replace("_", "-") + ".csv": v for k, v in files.items()}}.items():
        (raw / name).write_bytes(text if isinstance(text, bytes) else text.encode("latin-1"))
    return raw


def _gr_book(book_id: str) -> dict[str, Any]:
    return {"book_id": book_id, "title": f"Book {book_id}", "authors": [{"author_id": "7", "role": ""}],
            "average_rating": "4.1", "text_reviews_count": "3", "num_pages": "100", "is_ebook": "false",
            "format": "Paperback", "publisher": "P", "publication_year": "2001", "work_id": f"9{book_id}",
            "popular_shelves": [{"count": "2", "name": "to-read"}], "description": ""}


def _gr_inter(user: str, book: str, rating: int, day: int = 1) -> dict[str, Any]:
    date = f"Mon Aug {day:02d} 13:41:57 -0700 2016"
    return {"user_id": user, "book_id": book, "review_id": "r", "is_read": True, "rating": rating,
            "date_added": date, "date_updated": date, "read_at": "", "started_at": ""}


GR_INTERACTIONS = [_gr_inter(f"u{i % 7}", str(1 + i % 3), 1 + i % 5, 1 + i % 28) for i in range(60)]


def _jsonl(records: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _goodreads(tmp_path: Path, interactions: bytes | None = None, gz: bool = False) -> Path:
    """GoodReads in its JSON-lines form: books 1-3 and GR_INTERACTIONS (or `interactions`)."""
    raw = tmp_path / "gr"
    raw.mkdir(parents=True)
    (raw / "goodreads_books.json").write_bytes(_jsonl([_gr_book(str(i)) for i in (1, 2, 3)]))
    data = _jsonl(GR_INTERACTIONS) if interactions is None else interactions
    name = "goodreads_interactions_dedup.json"
    if gz:
        (raw / f"{name}.gz").write_bytes(gzip.compress(data))
    else:
        (raw / name).write_bytes(data)
    return raw


def _goodreads_csv(tmp_path: Path, interactions: str) -> Path:
    """GoodReads in its CSV form (integer ids mapped by user_id_map.csv / book_id_map.csv)."""
    raw = tmp_path / "grcsv"
    raw.mkdir(parents=True)
    (raw / "goodreads_books.json").write_bytes(_jsonl([_gr_book(str(i)) for i in (1, 2, 3)]))
    (raw / "user_id_map.csv").write_text("user_id_csv,user_id\n0,aaaa\n1,bbbb\n")
    (raw / "book_id_map.csv").write_text("book_id_csv,book_id\n0,1\n1,2\n2,3\n")
    (raw / "goodreads_interactions.csv").write_text(interactions)
    return raw


GR_CSV = ("user_id,book_id,is_read,rating,is_reviewed\n"
          + "".join(f"{i % 2},{i % 3},1,{1 + i % 5},0\n" for i in range(40)))


# ------------------------------------------------------------------ reading

def _read(dataset: str, raw: Path, limits: ReadLimits = DEFAULT_LIMITS, chunk_bytes: int | None = None,
          target_bytes: int = 1 << 30) -> tuple[pa.Table, BadRows]:
    """Every part of a raw folder through the reader, as preprocess's parse stage reads it."""
    reader = get_reader(dataset)
    if chunk_bytes:
        reader.chunk_bytes = chunk_bytes
    ctx = reader.context(raw, limits)
    tables, bad = [], BadRows(keep=1000)
    for part in reader.parts(raw, target_bytes):
        res = reader.read_part(part, ctx, 0, limits)
        tables.append(res.table)
        bad.merge(res.bad)
    return pa.concat_tables(tables), bad


def _read_checked(dataset: str, raw: Path, **kw: Any) -> tuple[pa.Table, BadRows]:
    """_read, then preprocess's verdict on the bad rows (max_bad_fraction = 0.01)."""
    table, bad = _read(dataset, raw, **kw)
    bad.check(table.num_rows, 0.01)
    return table, bad


def _error(dataset: str, raw: Path, **kw: Any) -> FlipDataError:
    with pytest.raises(FlipDataError) as e:
        _read_checked(dataset, raw, **kw)
    return e.value


def _names(e: FlipDataError, path: Path, line: int | None = None, key: str | None = None) -> None:
    """The error names the file (and the line or key), in its message and its fields."""
    msg = str(e)
    assert str(path) in msg and e.path == str(path), msg
    assert "\n" not in msg and len(msg) < 1000, msg          # one line for the CLI
    if line is not None:
        assert e.row == line and f"line {line}:" in msg, msg
    if key is not None:
        assert e.key == key and repr(key) in msg, msg


def _samples(bad: BadRows) -> list[tuple[str, int, str]]:
    return sorted((Path(s["file"]).name, s["line"], s["reason"]) for s in bad.samples)


def _cfg(dataset: str, raw: Path, out: Path, **kw: Any) -> PreprocessConfig:
    return PreprocessConfig(dataset=dataset, raw_dir=str(raw), out_dir=str(out), max_length=64,
                            num_workers=2, **kw)


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ------------------------------------------------------------------ 1. binary garbage

@pytest.mark.parametrize("case", ["ml-100k recbole", "ml-100k grouplens", "ml-1m", "goodreads json",
                                  "goodreads json.gz", "bookcrossing"])
def test_binary_garbage_as_the_ratings_file(case: str, ml100k: Path, tmp_path: Path, tally) -> None:
    junk = _garbage()
    if case == "ml-100k recbole":       # the header is junk: an error naming line 1
        (ml100k / INTER).write_bytes(junk)
        e, path, line = _error("ml-100k", ml100k), ml100k / INTER, 1
    elif case == "ml-100k grouplens":   # latin-1 decodes anything: every row is malformed
        raw = _grouplens(tmp_path, junk)
        e, path, line = _error("ml-100k", raw), raw / "u.data", 1
        assert "rows are malformed" in str(e)
    elif case == "ml-1m":
        raw = _ml1m(tmp_path, ratings_dat=junk)
        e, path, line = _error("ml-1m", raw), raw / "ratings.dat", 1
        assert "rows are malformed" in str(e)
    elif case.startswith("goodreads"):
        gz = case.endswith(".gz")
        raw = _goodreads(tmp_path, junk, gz=gz)
        path = raw / ("goodreads_interactions_dedup.json" + (".gz" if gz else ""))
        e, line = _error("goodreads", raw, chunk_bytes=4096), 1
        assert "rows are malformed" in str(e)
    else:                               # BookCrossing's header: junk, or without the columns
        raw = _bx(tmp_path, BX_Book_Ratings=junk)
        e, path = _error("bookcrossing", raw), raw / "BX-Book-Ratings.csv"
        line = e.row
        assert e.row == 1 or e.key == "User-ID", str(e)
    _names(e, path, line)
    tally("bad_input")


@pytest.mark.parametrize("case", ["ml-100k.user", "ml-100k.item", "u.item", "users.dat", "movies.dat",
                                  "goodreads_books.json", "goodreads_books.json.gz", "BX-Users.csv"])
def test_binary_garbage_as_a_side_file(case: str, ml100k: Path, tmp_path: Path, tally) -> None:
    junk = _garbage(seed=1)
    if case.startswith("ml-100k"):
        raw, dataset = ml100k, "ml-100k"
    elif case == "u.item":
        raw, dataset = _grouplens(tmp_path, b"1\t1\t5\t881250949\n"), "ml-100k"
    elif case.endswith(".dat"):
        raw, dataset = _ml1m(tmp_path), "ml-1m"
    elif case.startswith("goodreads"):
        raw, dataset = _goodreads(tmp_path), "goodreads"
        (raw / "goodreads_books.json").unlink()
    else:
        raw, dataset = _bx(tmp_path), "bookcrossing"
    (raw / case).write_bytes(junk)
    with pytest.raises(FlipDataError) as e:
        get_reader(dataset).context(raw)
    if case.endswith(".gz"):
        assert "corrupt gzip" in str(e.value)
        _names(e.value, raw / case)
    elif case == "BX-Users.csv":
        assert e.value.row == 1 or e.value.key == "User-ID", str(e.value)
        _names(e.value, raw / case)
    else:
        assert e.value.row is not None and e.value.row >= 1
        _names(e.value, raw / case, e.value.row)
    tally("bad_input")


def test_binary_ratings_file_end_to_end_leaves_no_output(ml100k: Path, tmp_path: Path, ray_local, tally) -> None:
    """The error is raised inside a Ray parse task: the caller of preprocess() gets the
    FlipDataError itself (type, message, path and line), not a Ray wrapper, and no output."""
    from flip_dist.data.preprocess import preprocess

    (ml100k / INTER).write_bytes(_garbage())
    out = tmp_path / "out"
    with pytest.raises(FlipDataError) as e:
        preprocess(_cfg("ml-100k", ml100k, out))
    assert type(e.value) is FlipDataError
    assert "header is not utf-8 text" in str(e.value)
    _names(e.value, ml100k / INTER, 1)
    _nothing_left(out)
    tally("bad_input")


# ------------------------------------------------------------------ 2. undecodable bytes

def test_undecodable_data_lines_are_counted_bad_rows(ml100k: Path, tally) -> None:
    with open(ml100k / INTER, "ab") as f:
        f.write(b"196\t242\t3\t881250949\n\xff\xfe\t242\t4\t881250949\n1\t1\t5\t8\xe97\n")
    table, bad = _read_checked("ml-100k", ml100k)
    assert table.num_rows == ML100K_ROWS
    assert _samples(bad) == [(INTER, 100_003, "undecodable bytes (invalid start byte)"),
                             (INTER, 100_004, "undecodable bytes (invalid continuation byte)")]
    tally("bad_input")


@pytest.mark.parametrize("name", [INTER, USER, ITEM, "goodreads_interactions.csv", "user_id_map.csv"])
def test_undecodable_header_is_an_error_naming_line_1(name: str, ml100k: Path, tmp_path: Path, tally) -> None:
    raw, dataset = ((ml100k, "ml-100k") if name.startswith("ml-100k")
                    else (_goodreads_csv(tmp_path, GR_CSV), "goodreads"))
    path = raw / name
    data = path.read_bytes()
    path.write_bytes(data[:3] + b"\xff" + data[3:])       # "use\xffr_id..."
    e = _error(dataset, raw)
    assert "header is not utf-8 text (invalid start byte at byte 3)" in str(e)
    _names(e, path, 1)
    tally("bad_input")


# ------------------------------------------------------------------ 3. wrong delimiter

@pytest.mark.parametrize("case", ["u.data", "ratings.dat", INTER, USER, "BX-Book-Ratings.csv",
                                  "goodreads_interactions.csv"])
def test_wrong_delimiter_names_the_file(case: str, ml100k: Path, tmp_path: Path, tally) -> None:
    if case == "u.data":
        raw, dataset = _grouplens(tmp_path, b"1,1,5,881250949\n2,2,4,881250950\n1,2,1,881250951\n"), "ml-100k"
    elif case == "ratings.dat":
        raw = _ml1m(tmp_path, ratings_dat=ML1M["ratings.dat"].replace("::", "\t"))
        dataset = "ml-1m"
    elif case.startswith("ml-100k"):
        raw, dataset = ml100k, "ml-100k"
        (raw / case).write_text((raw / case).read_text().replace("\t", ","))
    elif case.startswith("BX"):
        raw, dataset = _bx(tmp_path, BX_Book_Ratings=BX["BX-Book-Ratings.csv"].replace(";", ",")), "bookcrossing"
    else:
        raw, dataset = _goodreads_csv(tmp_path, GR_CSV.replace(",", ";")), "goodreads"
    path = raw / case
    e = _error(dataset, raw)
    if case in ("u.data", "ratings.dat"):      # no header: every row has the wrong column count
        assert re.search(r"\d+ of \d+ rows are malformed .*expected 4 columns, found (1|2)", str(e))
        _names(e, path, 1)
    else:                                    # a header: one column, named after all of them
        assert "missing column" in str(e) and "is the delimiter" in str(e)
        _names(e, path, key=e.key)
    tally("bad_input")


# ------------------------------------------------------------------ 4. columns by header name

BX_DIALECT = dict(delimiter=";", quotechar='"', escapechar="\\", doublequote=False)


def _reorder(path: Path, order: list[int], sep: str = "\t") -> None:
    """Rewrite a delimited file (header included) with its columns in `order`; BookCrossing's
    ';' files through the csv module, with their quoting and escapes."""
    if sep == ";":
        with open(path, encoding="latin-1", newline="") as f:
            rows = list(csv.reader(f, **BX_DIALECT))
        with open(path, "w", encoding="latin-1", newline="") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n", **BX_DIALECT).writerows(
                [r[i] for i in order] for r in rows)
        return
    rows = [line.split(sep) for line in path.read_text().splitlines()]
    path.write_text("".join(sep.join(r[i] for i in order) + "\n" for r in rows))


def test_reordered_columns_read_the_same_rows(ml100k: Path, ml100k_staging, tmp_path: Path, tally) -> None:
    _reorder(ml100k / INTER, [3, 2, 0, 1])
    _reorder(ml100k / USER, [4, 1, 3, 0, 2])
    _reorder(ml100k / ITEM, [3, 0, 2, 1])
    assert (ml100k / INTER).read_text().startswith("timestamp:float\trating:float\tuser_id:token")
    table, bad = _read("ml-100k", ml100k)
    assert bad.total == 0 and table.equals(ml100k_staging[1].table)

    bx = _bx(tmp_path)
    want = _read("bookcrossing", bx)[0]
    for name, n in (("BX-Book-Ratings.csv", 3), ("BX-Books.csv", 8), ("BX-Users.csv", 3)):
        _reorder(bx / name, list(range(n))[::-1], ";")
    got, bad = _read("bookcrossing", bx)
    assert bad.total == 0 and got.equals(want) and want.num_rows == 4

    gr = _goodreads_csv(tmp_path, GR_CSV)
    want = _read("goodreads", gr)[0]
    for name, n in (("goodreads_interactions.csv", 5), ("user_id_map.csv", 2), ("book_id_map.csv", 2)):
        _reorder(gr / name, list(range(n))[::-1], ",")
    got, bad = _read("goodreads", gr)
    assert bad.total == 0 and got.equals(want) and want.num_rows > 20
    tally("bad_input")


@pytest.mark.parametrize("name,key", [(INTER, "timestamp"), (USER, "gender"), (ITEM, "class"),
                                      ("BX-Books.csv", "Book-Author"), ("BX-Book-Ratings.csv", "ISBN"),
                                      ("goodreads_interactions.csv", "rating"), ("book_id_map.csv", "book_id")])
def test_missing_column_names_file_and_key(name: str, key: str, ml100k: Path, tmp_path: Path, tally) -> None:
    if name.startswith("ml-100k"):
        raw, dataset, sep = ml100k, "ml-100k", "\t"
    elif name.startswith("BX"):
        raw, dataset, sep = _bx(tmp_path), "bookcrossing", ";"
    else:
        raw, dataset, sep = _goodreads_csv(tmp_path, GR_CSV), "goodreads", ","
    path = raw / name
    header = path.read_bytes().decode("latin-1").split("\n", 1)[0].split(sep)
    drop = next(i for i, c in enumerate(header) if c.strip('"').split(":")[0] == key)
    _reorder(path, [i for i in range(len(header)) if i != drop], sep)
    e = _error(dataset, raw)
    assert "missing column" in str(e)
    _names(e, path, key=key)
    tally("bad_input")


# ------------------------------------------------------------------ 5. out-of-range numbers

def test_out_of_range_numbers_are_counted_with_a_reason(ml100k: Path, tmp_path: Path, tally) -> None:
    with open(ml100k / INTER, "a") as f:
        f.write("1\t1\t9\t881250949\n1\t1\t-1\t881250949\n1\t1\t4\t-5\n1\t1\t4\t1e12\n1\t1\t4.5\t881250949\n"
                "1\t1\t4\tnan\n")
    table, bad = _read_checked("ml-100k", ml100k)
    assert table.num_rows == ML100K_ROWS
    assert _samples(bad) == [
        (INTER, 100_002, "rating 9 outside 1..5"), (INTER, 100_003, "rating -1 outside 1..5"),
        (INTER, 100_004, "timestamp -5 outside 0..4102444800"),
        (INTER, 100_005, "timestamp 1000000000000 outside 0..4102444800"),
        (INTER, 100_006, "rating is not an integer: '4.5'"), (INTER, 100_007, "timestamp is not an integer: 'nan'")]

    bx = _bx(tmp_path, BX_Book_Ratings=BX["BX-Book-Ratings.csv"] + '"2";"0002005018";"11"\n"2";"0002005018";"-1"\n',
             BX_Users=BX["BX-Users.csv"] + '"9";"x, y, z";"ten"\n')
    table, bad = _read("bookcrossing", bx)
    assert table.num_rows == 4
    assert _samples(bad) == [("BX-Book-Ratings.csv", 6, "rating 11 outside 0..10"),
                             ("BX-Book-Ratings.csv", 7, "rating -1 outside 0..10"),
                             ("BX-Users.csv", 4, "age is not a number: 'ten'")]

    gr = _goodreads(tmp_path, _jsonl(GR_INTERACTIONS + [_gr_inter("x", "1", 7), _gr_inter("x", "1", -2)]))
    table, bad = _read("goodreads", gr)
    assert _samples(bad) == [("goodreads_interactions_dedup.json", 61, "rating outside 0..5"),
                             ("goodreads_interactions_dedup.json", 62, "rating outside 0..5")]
    tally("bad_input")


def test_non_numeric_age_in_a_movielens_users_file_is_an_error(ml100k: Path, tally) -> None:
    lines = [line.split("\t") for line in (ml100k / USER).read_text().splitlines()]
    assert lines[0][1] == "age:token"
    lines[5][1] = "forty"
    (ml100k / USER).write_text("".join("\t".join(r) + "\n" for r in lines))
    with pytest.raises(FlipDataError) as e:
        get_reader("ml-100k").context(ml100k)
    assert "age is not a number: 'forty'" in str(e.value)
    _names(e.value, ml100k / USER, 6)
    tally("bad_input")


# ------------------------------------------------------------------ 6. empty files, only a header

@pytest.mark.parametrize("case", [f"{INTER} empty", f"{INTER} header", f"{USER} header", f"{ITEM} header",
                                  "ratings.dat blank", "BX-Book-Ratings.csv header", "BX-Users.csv header",
                                  "goodreads_interactions.csv header", "user_id_map.csv header",
                                  "goodreads_interactions_dedup.json.gz empty"])
def test_empty_or_header_only_file(case: str, ml100k: Path, tmp_path: Path, tally) -> None:
    name, what = case.split()
    if name.startswith("ml-100k"):
        raw, dataset = ml100k, "ml-100k"
    elif name.endswith(".dat"):
        raw, dataset = _ml1m(tmp_path), "ml-1m"
    elif name.startswith("BX"):
        raw, dataset = _bx(tmp_path), "bookcrossing"
    elif name.endswith(".gz"):
        raw, dataset = _goodreads(tmp_path, b"", gz=True), "goodreads"
    else:
        raw, dataset = _goodreads_csv(tmp_path, GR_CSV), "goodreads"
    path = raw / name
    if what == "header":
        path.write_bytes(path.read_bytes().split(b"\n", 1)[0])          # not even a line break
    elif what == "blank":
        path.write_text("\n  \n\n")
    elif not name.endswith(".gz"):
        path.write_bytes(b"")
    e = _error(dataset, raw)
    assert re.search(r"file is empty|no data rows", str(e)), str(e)
    _names(e, path)
    tally("bad_input")


# ------------------------------------------------------------------ 7. overlong lines

def test_overlong_line_is_a_bad_row_and_never_held_whole(tmp_path: Path, tally) -> None:
    huge = b"1::1::5::" + b"9" * (24 * MB) + b"\n"                   # 24 MiB, one line
    raw = _ml1m(tmp_path, ratings_dat=ML1M["ratings.dat"].encode() + huge + b"2::1::5::978300275\n")
    tracemalloc.start()
    try:
        table, bad = _read("ml-1m", raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MB, peak                                       # the 1 MiB bound, not 24 MiB
    assert table.num_rows == 4
    assert _samples(bad) == [("ratings.dat", 5, "line longer than 1048576 bytes")]
    tally("bad_input")


LONG = b"x" * 10_000
SMALL_LINES = ReadLimits(max_line_bytes=4096)


def test_overlong_line_in_real_recbole_ratings(ml100k: Path, ml100k_staging, tally) -> None:
    lines = (ml100k / INTER).read_bytes().split(b"\n")
    (ml100k / INTER).write_bytes(b"\n".join(lines[:500] + [LONG] + lines[500:]))
    table, bad = _read("ml-100k", ml100k, SMALL_LINES)
    assert table.equals(ml100k_staging[1].table)
    assert _samples(bad) == [(INTER, 501, "line longer than 4096 bytes")]
    tally("bad_input")


def test_overlong_line_in_bookcrossing_csv(tmp_path: Path, tally) -> None:
    ratings = BX["BX-Book-Ratings.csv"].replace('"8";"0002005018"', LONG.decode() + '\n"8";"0002005018"')
    raw = _bx(tmp_path, BX_Book_Ratings=ratings)
    table, bad = _read("bookcrossing", raw, SMALL_LINES)
    assert table.num_rows == 4
    assert _samples(bad) == [("BX-Book-Ratings.csv", 3, "line longer than 4096 bytes")]
    tally("bad_input")


@pytest.mark.parametrize("gz", [False, True], ids=["json", "json.gz"])
def test_overlong_lines_in_goodreads_json_lines(gz: bool, tmp_path: Path, tally) -> None:
    """Lines over the limit mid-chunk, across chunk ends and at the end of the file (no line
    break), whatever the chunk size; parts that start mid-file locate them by byte offset."""
    good = [json.dumps(r).encode() for r in GR_INTERACTIONS]
    lines = good[:10] + [LONG] + good[10:30] + [LONG * 3] + good[30:] + [LONG]
    want = _read("goodreads", _goodreads(tmp_path / "ok", _jsonl(GR_INTERACTIONS)))[0].drop(["row_id"])
    raw = _goodreads(tmp_path / "long", b"\n".join(lines), gz=gz)
    name = "goodreads_interactions_dedup.json" + (".gz" if gz else "")
    for chunk in (None, 2048, 50_000):
        table, bad = _read("goodreads", raw, SMALL_LINES, chunk_bytes=chunk)
        assert _samples(bad) == [(name, n, "line longer than 4096 bytes") for n in (11, 32, 63)], chunk
        assert table.drop(["row_id"]).equals(want)
    if gz:
        tally("bad_input")
        return
    reader = get_reader("goodreads")
    parts = reader.parts(raw, 9000)
    assert len(parts) > 3
    table, bad = _read("goodreads", raw, SMALL_LINES, chunk_bytes=1000, target_bytes=9000)
    assert table.num_rows == want.num_rows
    starts = np.cumsum([0] + [len(x) + 1 for x in lines])
    def part_of(off):
        return next(p for p in parts if p.start <= off < p.end)
    expect = sorted(n if part_of(starts[n - 1]).start == 0 else int(starts[n - 1]) for n in (11, 32, 63))
    assert sorted(s["line"] for s in bad.samples) == expect and expect[-1] > 63
    tally("bad_input")


def test_overlong_line_in_a_goodreads_side_file(tmp_path: Path, tally) -> None:
    """A side file admits no bad line: a valid record on a line over the limit is an error naming
    the line, on Arrow's fast path too (which would parse it)."""
    raw = _goodreads(tmp_path)
    books = raw / "goodreads_books.json"
    books.write_bytes(books.read_bytes() + _jsonl([dict(_gr_book("4"), description="d" * 10_000)]))
    assert len(get_reader("goodreads").context(raw).book_ids) == 4          # within the default limit
    with pytest.raises(FlipDataError) as e:
        get_reader("goodreads").context(raw, SMALL_LINES)
    _names(e.value, books, 4)
    assert "line longer than 4096 bytes" in str(e.value)
    tally("bad_input")


def test_file_without_line_breaks(tmp_path: Path, tally) -> None:
    raw = _goodreads(tmp_path, b"{" * (3 * MB))
    e = _error("goodreads", raw)
    assert "1 of 1 rows are malformed" in str(e) and "line longer than 1048576 bytes" in str(e)
    _names(e, raw / "goodreads_interactions_dedup.json", 1)
    with pytest.raises(FlipDataError, match="line longer than 64 bytes"):   # no `bad`: an error
        list(_line_chunks(raw / "goodreads_interactions_dedup.json", 0, -1, 1 << 20, ReadLimits(64)))
    tally("bad_input")


# ------------------------------------------------------------------ 8. gzip bombs, corrupt gzip

def _gzip_stream(line: bytes, total: int) -> bytes:
    """gzip of `line` repeated to `total` bytes, compressed piece by piece (never all in memory)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    piece = line * (MB // len(line))
    return b"".join([z.compress(piece) for _ in range(total // len(piece))] + [z.flush()])


def test_gzip_bomb_is_stopped_early(tmp_path: Path, tally) -> None:
    bomb = _gzip_stream(json.dumps(_gr_inter("u1", "1", 5)).encode() + b"\n", 256 * MB)
    assert 256 * MB / len(bomb) > 200                           # 256 MiB from a few hundred KiB
    raw = _goodreads(tmp_path)
    (raw / "goodreads_interactions_dedup.json").unlink()
    path = raw / "goodreads_interactions_dedup.json.gz"
    path.write_bytes(bomb)
    with pytest.raises(FlipDataError) as e:
        _read("goodreads", raw)
    assert "decompresses to more than 200x its size" in str(e.value) and "gzip bomb" in str(e.value)
    _names(e.value, path)
    stopped = int(re.search(r"stopped at (\d+) bytes", str(e.value)).group(1))
    assert stopped <= 200 * len(bomb) + MB + get_reader("goodreads").chunk_bytes
    # the books file goes through Arrow's fast path: the guard holds there too
    books = raw / "goodreads_books.json"
    (raw / "goodreads_books.json.gz").write_bytes(_gzip_stream(books.read_bytes(), 4 * MB))
    books.unlink()
    with pytest.raises(FlipDataError) as e:
        get_reader("goodreads").context(raw, ReadLimits(max_inflation=2.0, inflation_slack=0))
    _names(e.value, raw / "goodreads_books.json.gz")
    assert "gzip bomb" in str(e.value)
    tally("bad_input")


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "not gzip"])
def test_corrupt_gzip_names_the_file(damage: str, tmp_path: Path, tally) -> None:
    raw = _goodreads(tmp_path, _jsonl(GR_INTERACTIONS * 50), gz=True)
    path = raw / "goodreads_interactions_dedup.json.gz"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray(_garbage(4096))
    path.write_bytes(bytes(data))
    with pytest.raises(FlipDataError) as e:
        _read("goodreads", raw)
    assert "truncated or corrupt gzip stream" in str(e.value)
    _names(e.value, path)
    tally("bad_input")


# ------------------------------------------------------------------ end to end: counted rows, the CLI

def test_few_bad_rows_of_every_kind_are_counted_end_to_end(ml100k: Path, tmp_path: Path, ray_local, tally) -> None:
    with open(ml100k / INTER, "ab") as f:
        f.write(b"1\t1\t5\t8\xe97\n" + b"1,1,5,881250949\n" + b"1\t1\t9\t881250949\n"
                + b"7\t7\t" + b"4" * (2 * MB) + b"\n" + b"1\t1\t4\t-5\n")
    out = tmp_path / "out"
    from flip_dist.data.preprocess import preprocess

    m = preprocess(_cfg("ml-100k", ml100k, out))
    assert m["num_samples"] == ML100K_ROWS and m["bad_rows"]["total"] == 5
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [(Path(x["file"]).name, x["line"]) for x in q] == [(INTER, n) for n in range(100_002, 100_007)]
    assert [x["reason"] for x in q] == ["undecodable bytes (invalid continuation byte)", "expected 4 columns, found 1",
                                        "rating 9 outside 1..5", "line longer than 1048576 bytes",
                                        "timestamp -5 outside 0..4102444800"]
    assert sum(m["bad_rows"]["by_file"][str(ml100k / INTER)].values()) == 5
    tally("bad_input")


def test_cli_prints_one_line_naming_the_file(ml100k: Path, tmp_path: Path, ray_local, capsys, tally) -> None:
    from flip_dist.cli import main

    (ml100k / USER).write_bytes(b"\xff" + (ml100k / USER).read_bytes())
    out = tmp_path / "out"
    code = main(["preprocess", "--dataset", "ml-100k", "--raw", str(ml100k), "--out", str(out),
                 "--workers", "2", "--max-length", "64"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"flip-dist: error: {ml100k / USER}: line 1: header is not utf-8 text"), err
    _nothing_left(out)
    tally("bad_input")
