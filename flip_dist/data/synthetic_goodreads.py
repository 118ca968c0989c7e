"""Synthetic GoodReads at benchmark scale, written in the UCSD Book Graph's own file formats.

The real data cannot be had here, yet the GoodReads path (reader, vocabulary of millions of
features, 20M samples) must be exercised at scale. This writes `goodreads_interactions_dedup.json`,
`goodreads_books.json`, `goodreads_book_authors.json`, `goodreads_book_genres_initial.json` and
`goodreads_book_works.json` (each `.gz` with gzip=True) with the real keys, value spellings and
key order, so `GoodReadsReader` reads them exactly like the downloads.

Users and books are drawn from bounded Zipf distributions (every user and book appears at least
once, in a rated row, when rows allow, so the vocabulary is close to `features`); ratings 0-5 with many 0s
(shelved, unrated); dates over 2007-2017 in Pacific time like the real dumps. Lines are built
column-wise with Arrow string kernels and written in chunks: bounded memory, no per-row Python.
"""
from __future__ import annotations

import gzip as gzip_mod
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flip_dist.errors import FlipConfigError

MAX_ROWS = 20_000_000
MAX_FEATURES = 4_600_000
PAPER_FEATURES_PER_ROW = 4_565_429 / 20_122_040       # the paper's Table I, GoodReads
DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"
# Shares of the feature target: users, books (book_id and title each), works, authors (id and
# name each), publishers; the small fields (ratings, pages, years, formats, genres) fill the rest.
SHARES = {"users": 0.23, "books": 0.20, "works": 0.15, "authors": 0.07, "publishers": 0.03}
RATING_P = np.array([0.30, 0.03, 0.07, 0.18, 0.22, 0.20])   # rating 0 = shelved, not rated
GENRES = ("children", "comics, graphic", "fantasy, paranormal", "fiction",
          "history, historical fiction, biography", "mystery, thriller, crime", "non-fiction",
          "poetry", "romance", "young-adult")
FORMATS = ("Paperback", "Hardcover", "Kindle Edition", "ebook", "Mass Market Paperback",
           "Audiobook", "")
FORMAT_P = np.array([0.42, 0.2, 0.12, 0.08, 0.06, 0.02, 0.1])
T0, T1 = 1167638400, 1509494400                          # 2007-01-01 .. 2017-11-01 UTC
NO_PHOTO = "https://s.gr-assets.com/assets/nophoto/book/111x148-bcc042a9c91a29c1d680899eff700a03.png"


def _words() -> list[str]:
    """A fixed pseudo-word list (letters only: nothing needs JSON escaping)."""
    syl = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return [a + b for a in syl for b in syl][::7]


WORDS = _words()


def _sizes(rows: int, features: int) -> dict[str, int]:
    n = {k: max(1, int(share * features)) for k, share in SHARES.items()}
    n["users"] = min(n["users"], rows)
    n["books"] = min(n["books"], rows)
    for k in ("works", "authors", "publishers"):
        n[k] = min(n[k], n["books"])
    return n


class _Zipf:
    """Bounded Zipf over n items with exponent s, ranks shuffled onto ids; inverse-CDF draws."""

    def __init__(self, n: int, s: float, rng: np.random.Generator) -> None:
        w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
        self.cdf = np.cumsum(w) / w.sum()
        self.ids = rng.permutation(n)

    def draw(self, rng: np.random.Generator, m: int) -> np.ndarray:
        r = np.minimum(np.searchsorted(self.cdf, rng.random(m)), len(self.ids) - 1)
        return self.ids[r]


def _covering(r: np.ndarray, cover: np.ndarray, zipf: _Zipf, rng: np.random.Generator) -> np.ndarray:
    """Row r < len(cover) takes cover[r] (so every id appears once), later rows a Zipf draw."""
    out = zipf.draw(rng, len(r))
    first = r < len(cover)
    out[first] = cover[r[first]]
    return out


def _s(x: np.ndarray | pa.Array) -> pa.Array:
    """Integers -> decimal strings."""
    return pc.cast(pa.array(x) if isinstance(x, np.ndarray) else x, pa.string())


def _join(*parts: Any) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _pick(values: tuple[str, ...] | list[str], idx: np.ndarray) -> pa.Array:
    return pa.array(list(values), pa.string()).take(pa.array(idx))


def _blank(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    """"" where mask: the real files spell missing values as empty strings."""
    return pc.if_else(pa.array(mask), "", arr)


def _hex(rng: np.random.Generator, n: int, nbytes: int = 16) -> pa.Array:
    """n random lowercase hex strings (user_id, review_id), built as one buffer."""
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    out = np.empty((n, 2 * nbytes), dtype=np.uint8)
    out[:, 0::2], out[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    offsets = np.arange(0, (n + 1) * 2 * nbytes, 2 * nbytes, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out.tobytes()))


def _dates(ts: np.ndarray) -> pa.Array:
    """Epoch seconds -> "Mon Aug 01 13:41:57 -0700 2016" in Pacific time, as in the dumps."""
    arr = pa.array(ts.astype(np.int64))
    try:
        return pc.strftime(arr.cast(pa.timestamp("s", tz="America/Los_Angeles")), format=DATE_FORMAT)
    except pa.ArrowException:                          # no time zone database: fixed offset
        return pc.strftime(arr.cast(pa.timestamp("s", tz="-07:00")), format=DATE_FORMAT)


def _distinct_codes(n: int, space: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct pseudo-random codes in [0, space): an affine bijection, no permutation of space."""
    a = int(rng.integers(1, space))
    while np.gcd(a, space) != 1:
        a += 1
    return (np.arange(n, dtype=np.int64) * a + int(rng.integers(0, space))) % space


def _coded(code: np.ndarray, n_words: int) -> list[np.ndarray]:
    """Base-n_words digits of code: distinct codes give distinct word tuples."""
    return [(code // n_words ** i) % n_words for i in range(3)]


def _lines_bytes(lines: pa.Array) -> memoryview:
    """The values buffer of a string array whose every element ends in a newline: the file bytes."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset:lines.offset + len(lines) + 1]
    return memoryview(lines.buffers()[2])[int(offsets[0]):int(offsets[-1])]


class _Out:
    """A file written under a temporary name and renamed into place when complete."""

    def __init__(self, out_dir: Path, name: str, gz: bool) -> None:
        self.final = out_dir / (name + (".gz" if gz else ""))
        self.tmp = out_dir / f".{self.final.name}.tmp"
        raw: BinaryIO = open(self.tmp, "wb")
        self.f: BinaryIO = gzip_mod.GzipFile(name, "wb", 1, raw) if gz else raw  # type: ignore[assignment]
        self.raw = raw

    def write(self, lines: pa.Array) -> None:
        self.f.write(_lines_bytes(lines))

    def close(self) -> Path:
        if self.f is not self.raw:
            self.f.close()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        self.raw.close()
        self.tmp.unlink(missing_ok=True)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(n, s + size)


def write_raw_goodreads(out_dir: str | os.PathLike, rows: int, features: int | None = None,
                        seed: int = 0, gzip: bool = False, *, chunk_rows: int = 200_000,
                        progress: bool = True) -> dict[str, int]:
    """Write the five raw files for `rows` interactions and about `features` distinct field values
    (default: the paper's features-per-sample ratio). Returns counts of what was written."""
    if not 1 <= rows <= MAX_ROWS:
        raise FlipConfigError(f"rows must be in 1..{MAX_ROWS:,}, got {rows}")
    if features is None:
        features = min(MAX_FEATURES, max(100, int(rows * PAPER_FEATURES_PER_ROW)))
    if not 100 <= features <= MAX_FEATURES:
        raise FlipConfigError(f"features must be in 100..{MAX_FEATURES:,}, got {features}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = _sizes(rows, features)
    book_ids = 1 + np.arange(n["books"], dtype=np.int64) * 13 + rng.integers(0, 13, n["books"])
    author_ids = 1 + np.arange(n["authors"], dtype=np.int64) * 7 + rng.integers(0, 7, n["authors"])
    work_ids = 1 + np.arange(n["works"], dtype=np.int64) * 11 + rng.integers(0, 11, n["works"])
    book_work = _covering(np.arange(n["books"]), rng.permutation(n["works"]), _Zipf(n["works"], 0.6, rng), rng)
    name_codes = _distinct_codes(n["authors"], NAMES if n["authors"] <= NAMES // 2 else NAMES * 27, rng)
    best = np.zeros(n["works"], dtype=np.int64)
    best[book_work[::-1]] = book_ids[::-1]                   # each work's first book
    from tqdm.auto import tqdm
    bar = tqdm(total=rows + n["books"] * 2 + n["authors"] + n["works"], unit="lines",
               desc="goodreads", disable=not progress)
    counts = {"interactions": rows, **n}
    files = []
    try:
        files.append(_write(out, "goodreads_book_works.json", gzip, n["works"], chunk_rows, bar,
                            lambda s, e: _works_lines(s, e, work_ids, best, rng)))
        files.append(_write(out, "goodreads_book_authors.json", gzip, n["authors"], chunk_rows, bar,
                            lambda s, e: _author_lines(s, e, author_ids, name_codes, rng)))
        books = _BookDraws(n, rng)
        files.append(_write(out, "goodreads_books.json", gzip, n["books"], chunk_rows, bar,
                            lambda s, e: _book_lines(s, e, book_ids, author_ids, work_ids, book_work, books, rng)))
        files.append(_write(out, "goodreads_book_genres_initial.json", gzip, n["books"], chunk_rows, bar,
                            lambda s, e: _genre_lines(s, e, book_ids, rng)))
        inter = _Interactions(n, book_ids, rng)
        files.append(_write(out, "goodreads_interactions_dedup.json", gzip, rows, chunk_rows, bar,
                            lambda s, e: inter.lines(s, e, rng)))
        counts.update(rating_0=inter.rating_0, rated=rows - inter.rating_0)
    finally:
        bar.close()
    counts["bytes"] = sum(p.stat().st_size for p in files)
    return counts


def _write(out: Path, name: str, gz: bool, n: int, chunk_rows: int, bar: Any, make: Any) -> Path:
    f = _Out(out, name, gz)
    try:
        for s, e in _chunks(n, chunk_rows):
            f.write(make(s, e))
            bar.update(e - s)
    except BaseException:
        f.abort()
        raise
    return f.close()


def _works_lines(s: int, e: int, work_ids: np.ndarray, best: np.ndarray,
                 rng: np.random.Generator) -> pa.Array:
    m = e - s
    ratings = rng.integers(1, 5000, m)
    media = _blank(pa.array(np.full(m, "book", dtype=object), pa.string()), rng.random(m) < 0.12)
    title = _title(rng.integers(0, len(WORDS) ** 3, m))
    year = _blank(_s(rng.integers(1900, 2018, m)), rng.random(m) < 0.3)
    return _join('{"books_count": "', _s(rng.integers(1, 30, m)), '", "reviews_count": "',
                 _s(ratings * 3), '", "original_publication_month": "", '
                 '"default_description_language_code": "", "text_reviews_count": "',
                 _s(ratings // 10), '", "best_book_id": "', _s(best[s:e]),
                 '", "original_publication_year": "', year, '", "original_title": "', title,
                 '", "rating_dist": "", "default_chaptering_book_id": "", "original_publication_day": "", '
                 '"original_language_id": "", "ratings_count": "', _s(ratings), '", "media_type": "',
                 media, '", "ratings_sum": "', _s(ratings * 4), '", "work_id": "', _s(work_ids[s:e]), '"}\n')


def _title(code: np.ndarray) -> pa.Array:
    w = [_pick(WORDS, d) for d in _coded(code, len(WORDS))]
    return _join(pc.utf8_capitalize(w[0]), " ", w[1], " ", w[2])


NAMES = 400 * len(WORDS)                                 # first x last; x27 with middle initials


def _author_lines(s: int, e: int, author_ids: np.ndarray, codes: np.ndarray,
                  rng: np.random.Generator) -> pa.Array:
    m = e - s
    code = codes[s:e]                                        # distinct names for distinct authors
    first, last, initial = code % 400, (code // 400) % len(WORDS), code // (400 * len(WORDS))
    name = pc.if_else(pa.array(initial > 0),
                      _join(pc.utf8_capitalize(_pick(WORDS, first)), " ",
                            _pick([chr(64 + i) for i in range(27)], initial), ". ",
                            pc.utf8_capitalize(_pick(WORDS, last))),
                      _join(pc.utf8_capitalize(_pick(WORDS, first)), " ", pc.utf8_capitalize(_pick(WORDS, last))))
    ratings = rng.integers(1, 100_000, m)
    cents = rng.integers(300, 460, m)
    return _join('{"average_rating": "', _s(cents // 100), ".", pc.utf8_lpad(_s(cents % 100), 2, "0"),
                 '", "author_id": "', _s(author_ids[s:e]), '", "text_reviews_count": "', _s(ratings // 12),
                 '", "name": "', name, '", "ratings_count": "', _s(ratings), '"}\n')


class _BookDraws:
    """Per-book choices that need a population-wide view (coverage of authors and publishers)."""

    def __init__(self, n: dict[str, int], rng: np.random.Generator) -> None:
        self.cover_author = rng.permutation(n["authors"])
        self.zipf_author = _Zipf(n["authors"], 0.9, rng)
        self.cover_pub = rng.permutation(n["publishers"])
        self.zipf_pub = _Zipf(n["publishers"], 1.0, rng)
        self.pub_code = _distinct_codes(n["publishers"], len(WORDS) ** 2 * 4, rng)
        self.title_code = _distinct_codes(n["books"], len(WORDS) ** 3, rng)


def _book_lines(s: int, e: int, book_ids: np.ndarray, author_ids: np.ndarray, work_ids: np.ndarray,
                book_work: np.ndarray, d: _BookDraws, rng: np.random.Generator) -> pa.Array:
    m, r = e - s, np.arange(s, e)
    bid = _s(book_ids[s:e])
    author = _s(author_ids[_covering(r, d.cover_author, d.zipf_author, rng)])
    second = rng.random(m) < 0.1
    authors = _join('[{"author_id": "', author, '", "role": ""}',
                    pc.if_else(pa.array(second), _join(', {"author_id": "', _s(author_ids[
                        rng.integers(0, len(author_ids), m)]), '", "role": "Illustrator"}'), ""), "]")
    pub_code = d.pub_code[_covering(r, d.cover_pub, d.zipf_pub, rng)]
    pw = _coded(pub_code, len(WORDS))
    publisher = _blank(_join(pc.utf8_capitalize(_pick(WORDS, pw[0])), " ", pc.utf8_capitalize(
        _pick(WORDS, pw[1])), " ", _pick(("Press", "Books", "Publishing", "House"), pw[2] % 4)),
        rng.random(m) < 0.08)
    cents = np.clip(rng.normal(390, 35, m), 100, 500).astype(np.int64)
    reviews = np.minimum(np.exp(rng.normal(2.5, 1.8, m)), 150_000).astype(np.int64)
    pages = _blank(_s(np.clip(rng.lognormal(5.6, 0.5, m), 8, 2500).astype(np.int64)), rng.random(m) < 0.08)
    year = rng.integers(1950, 2018, m)
    no_year = rng.random(m) < 0.05
    fmt = _pick(FORMATS, rng.choice(len(FORMATS), m, p=FORMAT_P))
    ebook = pc.if_else(pa.array(rng.random(m) < 0.15), "true", "false")
    title = _title(d.title_code[s:e])
    link = _join("https://www.goodreads.com/book/show/", bid)
    isbn = pc.utf8_lpad(_s(rng.integers(0, 10**9, m)), 10, "0")
    return _join('{"isbn": "', isbn, '", "text_reviews_count": "', _s(reviews),
                 '", "series": [], "country_code": "US", "language_code": "eng", "popular_shelves": [], '
                 '"asin": "", "is_ebook": "', ebook, '", "average_rating": "', _s(cents // 100), ".",
                 pc.utf8_lpad(_s(cents % 100), 2, "0"), '", "kindle_asin": "", "similar_books": [], '
                 '"description": "", "format": "', fmt, '", "link": "', link, '", "authors": ', authors,
                 ', "publisher": "', publisher, '", "num_pages": "', pages, '", "publication_day": "',
                 _blank(_s(rng.integers(1, 29, m)), no_year), '", "isbn13": "978', isbn,
                 '", "publication_month": "', _blank(_s(rng.integers(1, 13, m)), no_year),
                 '", "edition_information": "", "publication_year": "', _blank(_s(year), no_year),
                 '", "url": "', link, '", "image_url": "', NO_PHOTO, '", "book_id": "', bid,
                 '", "ratings_count": "', _s(reviews * 9 + rng.integers(0, 9, m)), '", "work_id": "',
                 _s(work_ids[book_work[s:e]]), '", "title": "', title, '", "title_without_series": "',
                 title, '"}\n')


def _genre_lines(s: int, e: int, book_ids: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """0-3 of the ten real genre groups per book, with shelf counts."""
    m = e - s
    k = rng.choice(4, m, p=[0.1, 0.3, 0.35, 0.25])
    order = np.argsort(rng.random((m, len(GENRES))), axis=1)
    slots = []          # slot j is filled iff k > j, so only slots after the first need ", "
    for j in range(3):
        frag = _join(", " if j else "", '"', _pick(GENRES, order[:, j]), '": ',
                     _s(rng.zipf(1.6, m).clip(1, 10**6)))
        slots.append(pc.if_else(pa.array(k > j), frag, ""))
    # (not binary_join_element_wise(null_handling="skip"): pyarrow 26 drops rows whose inputs are all null)
    body = _join(*slots)
    return _join('{"book_id": "', _s(book_ids[s:e]), '", "genres": {', body, "}}\n")


class _Interactions:
    """Interaction lines: Zipf users and books, each user and book at least once when rows allow."""

    def __init__(self, n: dict[str, int], book_ids: np.ndarray, rng: np.random.Generator) -> None:
        self.user_hex = _hex(rng, n["users"])
        self.book_ids = book_ids
        self.cover_u, self.zipf_u = rng.permutation(n["users"]), _Zipf(n["users"], 0.8, rng)
        self.cover_b, self.zipf_b = rng.permutation(n["books"]), _Zipf(n["books"], 1.0, rng)
        self.rating_0 = 0

    def lines(self, s: int, e: int, rng: np.random.Generator) -> pa.Array:
        m, r = e - s, np.arange(s, e)
        user = self.user_hex.take(pa.array(_covering(r, self.cover_u, self.zipf_u, rng)))
        book = _s(self.book_ids[_covering(r, self.cover_b, self.zipf_b, rng)])
        rating = rng.choice(6, m, p=RATING_P)
        # A user's or book's covering row is rated, so the reader's rating-0 drop keeps every id.
        rated = 1 + rng.choice(5, m, p=RATING_P[1:] / RATING_P[1:].sum())
        rating = np.where(r < max(len(self.cover_u), len(self.cover_b)), rated, rating)
        self.rating_0 += int((rating == 0).sum())
        is_read = (rating > 0) | (rng.random(m) < 0.1)
        added = rng.integers(T0, T1, m)
        updated = added + rng.exponential(30 * 86400, m).astype(np.int64)
        read_at = _blank(_dates(added + rng.exponential(60 * 86400, m).astype(np.int64)), ~is_read)
        started = _blank(_dates(added + rng.integers(0, 86400 * 10, m)), rng.random(m) < 0.7)
        return _join('{"user_id": "', user, '", "book_id": "', book, '", "review_id": "', _hex(rng, m),
                     '", "is_read": ', pc.if_else(pa.array(is_read), "true", "false"), ', "rating": ',
                     _s(rating), ', "review_text_incomplete": "", "date_added": "', _dates(added),
                     '", "date_updated": "', _dates(updated), '", "read_at": "', read_at,
                     '", "started_at": "', started, '"}\n')
