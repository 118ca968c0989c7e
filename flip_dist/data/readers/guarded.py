"""Guards on untrusted raw input: bounded line reads and a decompression budget.

A raw file may be anything: one "line" of gigabytes (a binary file, a file without line breaks), a
small .gz that inflates to terabytes (a gzip bomb, or the wrong file), a truncated download. Readers
go through these helpers so that such input ends as a counted bad row or a FlipDataError naming the
file, with memory bounded by `ReadLimits`, never by the input.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from flip_dist.config import PreprocessConfig
from flip_dist.errors import FlipDataError

SKIP_CHUNK = 1 << 16          # bytes per read while skipping the rest of an overlong line
READ_ALL_CHUNK = 1 << 20      # bytes per step of an unsized read() of a compressed stream
SCAN_CHUNK = 16 << 20         # bytes per read of has_long_line's scan
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class ReadLimits:
    """What one raw line or one compressed file may cost (PreprocessConfig's max_line_bytes and
    max_inflation; the defaults are the config's). A longer line is a bad row and is never held
    whole; a .gz may inflate to `max_inflation` x its size plus `inflation_slack` bytes (so that
    tiny, highly compressible files still read)."""

    max_line_bytes: int = PreprocessConfig.max_line_bytes
    max_inflation: float = PreprocessConfig.max_inflation
    inflation_slack: int = 1 << 20

    @classmethod
    def from_config(cls, cfg: PreprocessConfig) -> ReadLimits:
        return cls(max_line_bytes=cfg.max_line_bytes, max_inflation=cfg.max_inflation)

    def long_line(self) -> str:
        """The bad-row reason (and error message) for a line over the limit."""
        return f"line longer than {self.max_line_bytes} bytes"


DEFAULT_LIMITS = ReadLimits()


class _Stream:
    """The file-object surface the wrappers share: what our readers and Arrow's adapter use."""

    _f: Any

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._f.tell()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class GzipGuard(_Stream):
    """A .gz file opened for binary reading. Bytes out are counted against `max_inflation` x the
    file's size (plus slack) while streaming, so a bomb fails after a bounded amount of work; a
    truncated or corrupt stream is a FlipDataError naming the file instead of EOFError/zlib.error.
    No seek: a .gz is one part, read from its start."""

    def __init__(self, path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.max_inflation = limits.max_inflation
        self.budget = int(limits.max_inflation * self.size) + limits.inflation_slack
        self.out = 0
        self._f = gzip.open(self.path, "rb")

    def _count(self, data: bytes) -> bytes:
        self.out += len(data)
        if self.out > self.budget:
            raise FlipDataError(
                f"decompresses to more than {self.max_inflation:g}x its size ({self.size} bytes "
                f"compressed, stopped at {self.out} bytes): a gzip bomb or the wrong file "
                "(preprocess.max_inflation)", path=str(self.path))
        return data

    def _corrupt(self, e: BaseException) -> FlipDataError:
        return FlipDataError(f"truncated or corrupt gzip stream ({type(e).__name__}: {e})", path=str(self.path))

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(READ_ALL_CHUNK), b""))
        try:
            return self._count(self._f.read(n))
        except GZIP_ERRORS as e:
            raise self._corrupt(e) from None

    def readline(self, limit: int | None = -1) -> bytes:
        try:
            return self._count(self._f.readline(-1 if limit is None else limit))
        except GZIP_ERRORS as e:
            raise self._corrupt(e) from None


def open_raw(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
    """A raw file for binary reading: a .gz through GzipGuard, anything else as is."""
    path = Path(path)
    return GzipGuard(path, limits) if path.suffix == ".gz" else open(path, "rb")


def skip_line(f: IO[bytes]) -> int:
    """Read past the rest of the current line in bounded pieces; returns the bytes skipped."""
    n = 0
    while True:
        piece = f.readline(SKIP_CHUNK)
        n += len(piece)
        if not piece or piece[-1:] == b"\n":
            return n


def read_line(f: IO[bytes], limit: int) -> tuple[bytes, bool]:
    """The next line (line break included; b"" at the end) and whether it is longer than `limit`
    bytes. Of a long line only the first `limit` + 1 bytes are read into memory; the rest is skipped."""
    raw = f.readline(limit + 1)
    if len(raw) <= limit or raw[-1:] == b"\n":
        return raw, False
    skip_line(f)
    return raw, True


def long_lines(data: bytes, limit: int, start: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of each line of data[start:stop] longer than `limit` bytes, the region being
    whole lines; stop is the line's break (or the region's end). Cheap when there is none: if every
    aligned block of (limit + 1) // 2 bytes holds a line break, no line can be longer than the
    limit, so a chunk costs a few dozen finds; only a chunk that fails that looks at every byte."""
    stop = len(data) if stop is None else stop
    n = stop - start
    if n <= limit:
        return []
    block = (limit + 1) // 2
    if n // block <= 4096 and all(data.find(b"\n", i, i + block) >= 0
                                  for i in range(start, stop - block + 1, block)):
        return []
    breaks = np.flatnonzero(np.frombuffer(data, np.uint8, n, start) == 10) + start
    starts = np.concatenate(([start], breaks + 1))
    stops = np.concatenate((breaks, [stop]))
    return [(int(starts[i]), int(stops[i])) for i in np.flatnonzero(stops - starts > limit)]


class LineTooLong(FlipDataError):
    """A line over the limit seen by LineCheck, which knows no line numbers: callers fall back
    to their line-by-line path, which names the line."""


class LineCheck(_Stream):
    """A binary stream for readers that take whole blocks (Arrow's): each read() is checked for a
    line over the limit, tracking the line in progress across reads, at a few finds per block."""

    def __init__(self, f: Any, path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> None:
        self._f, self.path, self.limit = f, Path(path), limits.max_line_bytes
        self.run = 0                    # bytes of the line that the last read ended in

    def read(self, n: int | None = -1) -> bytes:
        data = self._f.read(n)
        first = data.find(b"\n")
        if first < 0:
            self.run += len(data)
            long = self.run > self.limit
        else:
            last = data.rfind(b"\n")
            long = self.run + first > self.limit or bool(long_lines(data, self.limit, first + 1, last + 1))
            self.run = len(data) - last - 1
        if long:
            raise LineTooLong(f"a line is longer than {self.limit} bytes", path=str(self.path))
        return data


def has_long_line(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> bool:
    """Whether some line of the file is longer than `limits.max_line_bytes`: a scan in bounded
    chunks (tens of milliseconds per 100 MB), so that a reader can keep its fast path, e.g. csv on
    the file object itself, for the files that have none."""
    with LineCheck(open_raw(path, limits), path, limits) as f:
        try:
            while f.read(SCAN_CHUNK):
                pass
        except LineTooLong:
            return True
    return False


def header_line(path: Path, encoding: str, limits: ReadLimits = DEFAULT_LIMITS) -> str:
    """Line 1 of a raw file, decoded: empty, overlong or undecodable is an error naming line 1."""
    with open_raw(path, limits) as f:
        raw, long = read_line(f, limits.max_line_bytes)
    if not raw:
        raise FlipDataError("file is empty", path=str(path))
    if not raw.strip():
        raise FlipDataError("line 1 is blank: expected the header", path=str(path), row=1)
    if long:
        raise FlipDataError(f"header {limits.long_line()}", path=str(path), row=1)
    try:
        return raw.decode(encoding).rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise FlipDataError(f"header is not {encoding} text ({e.reason} at byte {e.start}): "
                            f"{raw[:80]!r}", path=str(path), row=1) from None


def missing_column(path: Path, key: str, header: str, sep: str) -> FlipDataError:
    """The error for a header line without `key`: shows the line (cut short, one line whatever the
    file holds) and hints at the delimiter when the line has none of the expected one."""
    hint = ""
    if sep not in header and any(c in header for c in ",;\t|" if c != sep):
        hint = f"; is the delimiter {sep!r}?"
    shown = repr(header[:200]) + ("..." if len(header) > 200 else "")
    return FlipDataError(f"missing column (header: {shown}{hint})", path=str(path), key=key)


def column_index(path: Path, names: list[str], want: tuple[str, ...] | list[str], sep: str,
                 header: str | None = None) -> list[int]:
    """Where each wanted column is among a header's `names` (found by name, so a file with its
    columns in another order reads the same; the first of repeated names counts). `header` is
    the raw line, for the error message (default: the names joined by `sep`)."""
    where: dict[str, int] = {}
    for i, n in enumerate(names):
        where.setdefault(n, i)
    for key in want:
        if key not in where:
            raise missing_column(path, key, sep.join(names) if header is None else header, sep)
    return [where[k] for k in want]
