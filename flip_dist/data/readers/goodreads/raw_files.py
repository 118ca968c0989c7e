"""Locating GoodReads' raw files and vetting them before any parse: which interactions form is
present, which books files, and whether a CSV file has the columns and rows it must have."""
from __future__ import annotations

from pathlib import Path

from flip_dist.data.readers.base import require_file
from flip_dist.data.readers.guarded import ReadLimits, column_index, header_line, open_raw, read_line
from flip_dist.errors import FlipDataError

INTERACTIONS_JSON = "goodreads_interactions_dedup.json"
INTERACTIONS_CSV = "goodreads_interactions.csv"
USER_MAP, BOOK_MAP = "user_id_map.csv", "book_id_map.csv"
BOOKS = "goodreads_books.json"
AUTHORS, GENRES, WORKS = ("goodreads_book_authors.json", "goodreads_book_genres_initial.json",
                          "goodreads_book_works.json")


def find(raw_dir: Path, name: str) -> Path | None:
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


def interaction_files(raw_dir: Path) -> tuple[str, list[Path]]:
    """Which interactions form is present: the deduplicated JSON, other JSON (subsets), or the CSV."""
    dedup = find(raw_dir, INTERACTIONS_JSON)
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


def books_files(raw_dir: Path) -> list[Path]:
    """goodreads_books.json[.gz], else the genre-subset books files goodreads_books_<genre>.json[.gz]."""
    main = find(raw_dir, BOOKS)
    files = [main] if main is not None else _glob_json(raw_dir, "goodreads_books_")
    if not files:
        raise FlipDataError(f"missing raw file: expected {BOOKS}.gz or {BOOKS}", path=str(raw_dir / BOOKS))
    for p in files:
        if p.stat().st_size == 0:
            raise FlipDataError("file is empty", path=str(p))
    return files


def csv_names(path: Path, want: tuple[str, ...], limits: ReadLimits) -> list[str]:
    """The column names on line 1 of a CSV file (bounded, strict UTF-8: errors name line 1),
    checked to hold `want`."""
    header = header_line(path, "utf-8", limits)
    names = [c.strip() for c in header.split(",")]
    column_index(path, names, want, ",", header)
    return names


def data_after_header(path: Path, limits: ReadLimits) -> bool:
    """Whether anything but white space follows line 1 (read in bounded pieces)."""
    with open_raw(path, limits) as f:
        read_line(f, limits.max_line_bytes)
        for piece in iter(lambda: f.read(1 << 16), b""):
            if not piece.isspace():
                return True
    return False
