"""The reader interface: raw files in a dataset's distributed format -> staging Arrow tables.

A staging table has `label` (int8), `order` (int64 sort key: timestamp, or a seeded random key
for datasets without one), `row_id` (int64, unique, breaks ties) and one string column per field.
Parsing is split into parts so that Ray tasks can read a large raw dataset in parallel.

Raw files are untrusted: `context`, `read_part` and `iter_part` take the `ReadLimits` of the run
(max line length, max gzip inflation; defaults are PreprocessConfig's) and read through the bounded
helpers here and in `guarded`, so bad input ends as a counted bad row (file and line in the
quarantine) or a FlipDataError naming the file and the line or key, never as a stray exception.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers.guarded import DEFAULT_LIMITS, ReadLimits, column_index, header_line, open_raw, skip_line
from flip_dist.errors import FlipDataError

ROW_ID_PART_SHIFT = 40  # row_id = part_index << 40 | row index within the part


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is, independent of how its files are laid out."""

    name: str
    fields: tuple[str, ...]          # column names, in field order (the prompt's order)
    field_texts: tuple[str, ...]     # how the template names each field: "<text> is <value>."
    label_rule: str
    split_rule: str
    has_time: bool


@dataclass(frozen=True)
class RawPart:
    """One unit of parse work: a file, or a line-aligned byte range of one."""

    index: int
    path: str
    start: int = 0
    end: int = -1                    # -1: to the end of the file
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartResult:
    table: pa.Table
    bad: BadRows
    stats: dict[str, int]            # named drop counts (e.g. rating == 3, unknown book)


class RawReader(ABC):
    """Reads one dataset's raw files. `context` holds side tables shared by all parts."""

    spec: DatasetSpec

    @abstractmethod
    def parts(self, raw_dir: Path, target_bytes: int) -> list[RawPart]:
        """Split the raw input into independent parse units (validates that files exist)."""

    def context(self, raw_dir: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
        """Side tables (users, items) every part needs; built once, shipped through the object store."""
        return None

    @abstractmethod
    def read_part(self, part: RawPart, context: Any, seed: int,
                  limits: ReadLimits = DEFAULT_LIMITS) -> PartResult:
        """Parse one part into a staging table; malformed rows go to the result's BadRows."""

    def iter_part(self, part: RawPart, context: Any, seed: int, max_rows: int,
                  limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[PartResult]:
        """The part's staging rows in tables of about `max_rows`; each result's bad rows and stats
        are to be summed. Readers of parts that can be huge (a .gz file is one part) override this to stream."""
        res = self.read_part(part, context, seed, limits)
        for start in range(0, max(res.table.num_rows, 1), max_rows):
            first = start == 0
            yield PartResult(res.table.slice(start, max_rows), res.bad if first else BadRows(),
                             res.stats if first else {})

    def staging_schema(self) -> pa.Schema:
        return pa.schema([("label", pa.int8()), ("order", pa.int64()), ("row_id", pa.int64())]
                         + [(f, pa.string()) for f in self.spec.fields])


def require_file(raw_dir: Path, *names: str) -> Path:
    """The first of `names` that exists under raw_dir, else an error naming what was looked for."""
    for name in names:
        p = Path(raw_dir) / name
        if p.is_file():
            if p.stat().st_size == 0:
                raise FlipDataError("file is empty", path=str(p))
            return p
    raise FlipDataError(f"missing raw file: expected one of {list(names)}", path=str(raw_dir))


def row_ids(part_index: int, n: int) -> np.ndarray:
    return (np.int64(part_index) << ROW_ID_PART_SHIFT) + np.arange(n, dtype=np.int64)


def seeded_order(ids: np.ndarray, seed: int) -> np.ndarray:
    """A random but reproducible sort key per row (splitmix64 of row id and seed), for datasets
    without timestamps: sorting by it and taking the first 90% is a seeded random split."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)


def enter_part(f: IO[bytes], start: int) -> int:
    """Position an open file at the first line of the part that begins at byte `start`, and return
    that line's offset. The one rule for a line that crosses a part boundary: it belongs to the part
    in which it starts. So a part that begins mid-line skips to the next line break (the previous
    part owns that line and reads on past its own end to finish it), and a part stops before a line
    that starts at or after its end. Every reader of byte-range parts enters them here."""
    if start <= 0:          # a freshly opened file (a .gz stream cannot seek; it is one part)
        return 0
    f.seek(start - 1)
    if f.read(1) == b"\n":
        return start
    return start + skip_line(f)


def iter_lines(path: Path, start: int = 0, end: int = -1, limits: ReadLimits = DEFAULT_LIMITS,
               bad: BadRows | None = None) -> Iterator[tuple[int, bytes]]:
    """Raw lines (no line break) of a byte range, each with its 1-based line number when the
    range starts at 0, else the byte offset of the line (which still locates it).

    A line longer than `limits.max_line_bytes` is never held whole: it is skipped in bounded pieces
    and counted in `bad` ("line longer than N bytes"), or, without `bad`, is a FlipDataError."""
    max_line_bytes = limits.max_line_bytes
    with open_raw(path, limits) as f:
        enter_part(f, start)
        lineno = 0
        while True:
            pos = f.tell()
            if end >= 0 and pos >= end:
                break
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                break
            lineno += 1
            loc = lineno if start == 0 else pos
            if len(raw) > max_line_bytes and raw[-1:] != b"\n":
                skip_line(f)
                reason = limits.long_line()
                if bad is None:
                    raise FlipDataError(reason, path=str(path), row=loc)
                bad.add(str(path), loc, reason, repr(raw[:200]))
                continue
            yield loc, raw.rstrip(b"\r\n")


def split_delimited(path: Path, encoding: str, sep: str, ncols: int, bad: BadRows,
                    skip_header: bool = False, start: int = 0, end: int = -1,
                    limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[tuple[int, list[str]]]:
    """Rows of a plainly delimited text file with exactly `ncols` columns; others go to `bad`
    (wrong column count, undecodable bytes, a line over `limits.max_line_bytes`)."""
    for lineno, raw in iter_lines(path, start, end, limits, bad):
        if skip_header and lineno == 1 and start == 0:
            continue
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as e:
            bad.add(str(path), lineno, f"undecodable bytes ({e.reason})", repr(raw[:200]))
            continue
        if not line.strip():
            continue
        cols = line.split(sep)
        if len(cols) != ncols:
            bad.add(str(path), lineno, f"expected {ncols} columns, found {len(cols)}", line)
            continue
        yield lineno, cols


def header_columns(path: Path, encoding: str, sep: str, want: Sequence[str],
                   limits: ReadLimits = DEFAULT_LIMITS,
                   name: Callable[[str], str] = str.strip) -> tuple[list[int], int]:
    """(position of each wanted column, number of columns) from line 1 of a file with a header:
    columns are found by name, so reordered files read the same; a missing one is an error
    naming the key (and a hint when the delimiter looks wrong)."""
    header = header_line(path, encoding, limits)
    names = [name(c) for c in header.split(sep)]
    return column_index(path, names, list(want), sep, header), len(names)


def named_rows(path: Path, encoding: str, sep: str, want: Sequence[str], bad: BadRows,
               limits: ReadLimits = DEFAULT_LIMITS, name: Callable[[str], str] = str.strip
               ) -> Iterator[tuple[int, list[str]]]:
    """The `want` columns, in that order, of each data row of a delimited file with a header.
    A file without a single data line is an error ("no data rows")."""
    where, ncols = header_columns(path, encoding, sep, want, limits, name)
    seen, before = False, bad.total
    for lineno, cols in split_delimited(path, encoding, sep, ncols, bad, skip_header=True, limits=limits):
        seen = True
        yield lineno, [cols[i] for i in where]
    if not seen and bad.total == before:
        raise FlipDataError("no data rows (only a header)", path=str(path))


def byte_ranges(path: Path, target_bytes: int) -> list[tuple[int, int]]:
    """[start, end) parts of about `target_bytes` covering a file; they split lines anywhere, and
    `enter_part` decides which part owns a line cut in two."""
    size = path.stat().st_size
    n = max(1, -(-size // max(1, target_bytes)))
    bounds = [size * i // n for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


def staging_table(spec: DatasetSpec, labels: Sequence[int], order: np.ndarray, ids: np.ndarray,
                  columns: dict[str, Iterable[str]]) -> pa.Table:
    arrays = {"label": pa.array(np.asarray(labels, dtype=np.int8)),
              "order": pa.array(order, type=pa.int64()), "row_id": pa.array(ids, type=pa.int64())}
    for f in spec.fields:
        arrays[f] = pa.array(list(columns[f]), type=pa.string())
    return pa.table(arrays)
