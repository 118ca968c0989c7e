"""Splitting an interactions file into byte-range parts and reading a part back as whole lines.

The one rule for a line that crosses a part boundary lives in `part_blocks`; everything that reads
a part goes through it, so consecutive parts cover every line exactly once.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from flip_dist.data.bad_rows import BadRows
from flip_dist.data.readers.base import byte_ranges, enter_part
from flip_dist.data.readers.goodreads.rows import add_bad
from flip_dist.data.readers.guarded import DEFAULT_LIMITS, ReadLimits, long_lines, open_raw, skip_line
from flip_dist.errors import FlipDataError

WHOLE_FILE = (0, -1)


def file_ranges(path: Path, target_bytes: int) -> list[tuple[int, int]]:
    """The parts of one file: byte ranges of about `target_bytes` for a plain file; a .gz is one
    part, since a gzip stream cannot seek (decompress it first to read it in parallel)."""
    return [WHOLE_FILE] if path.suffix == ".gz" else byte_ranges(path, target_bytes)


def part_blocks(f: IO[bytes], start: int, end: int, block_bytes: int, limit: int
                ) -> Iterator[tuple[int, bytes]]:
    """(byte offset, whole lines) of the part [start, end) of an open file, about `block_bytes` at
    a time (`end` < 0: to the end of the file).

    The rule (base.enter_part): a line belongs to the part in which it starts, so a part whose
    last line runs past `end` reads on to finish it, and a line starting exactly at `end` is the
    next part's.

    The read past a block's end is bounded: of a last line over `limit` bytes only `limit` + 1 of
    its bytes come back (without a line break), the rest is skipped, so the caller sees it as a
    long line and memory stays within a block plus the limit."""
    pos = enter_part(f, start)
    while end < 0 or pos < end:
        data = f.read(block_bytes if end < 0 else min(block_bytes, end - pos))
        if not data:
            return
        skipped = 0
        if not data.endswith(b"\n"):
            tail = f.readline(limit + 1)
            data += tail
            if len(tail) > limit and not tail.endswith(b"\n"):
                skipped = skip_line(f)          # the last line runs on past the limit
        yield pos, data
        pos += len(data) + skipped


def line_chunks(path: Path, start: int, end: int, chunk_bytes: int, limits: ReadLimits = DEFAULT_LIMITS,
                bad: BadRows | None = None) -> Iterator[tuple[int, bytes]]:
    """(locator of the first line, whole lines) for the lines of the part [start, end), as
    `part_blocks` assigns them; the locator is the 1-based line number when start == 0, else the
    line's byte offset (as in base.iter_lines), since a part cannot know how many lines precede it.

    A line longer than `limits.max_line_bytes` is left out and counted in `bad` (without `bad`: a
    FlipDataError); no more than a chunk plus the limit is ever in memory. A .gz goes through GzipGuard."""
    limit, by_line = limits.max_line_bytes, start == 0
    with open_raw(path, limits) as f:
        line = 1
        for pos, data in part_blocks(f, start, end, chunk_bytes, limit):
            done = 0
            for a, b in long_lines(data, limit):
                if a > done:
                    yield _locate(data, done, by_line, line, pos), data[done:a]
                loc = _locate(data, a, by_line, line, pos)
                if bad is None:
                    raise FlipDataError(limits.long_line(), path=str(path), row=loc)
                add_bad(bad, path, loc, limits.long_line(), data[a:a + 200])
                done = b + 1
            if done < len(data):
                yield _locate(data, done, by_line, line, pos), (data[done:] if done else data)
            if by_line:
                line += data.count(b"\n") + (not data.endswith(b"\n"))


def _locate(data: bytes, i: int, by_line: bool, first_line: int, first_pos: int) -> int:
    """The locator of the line starting at data[i]: its line number, or its byte offset."""
    return first_line + data.count(b"\n", 0, i) if by_line else first_pos + i


def locators(data: bytes, first: int, by_line: bool) -> tuple[list[bytes], np.ndarray]:
    """A chunk's lines and, for each, its 1-based line number or its byte offset (`first` being
    the first line's), so that the slow path can name every bad line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if by_line:
        return lines, first + np.arange(len(lines), dtype=np.int64)
    lengths = np.fromiter((len(x) + 1 for x in lines), dtype=np.int64, count=len(lines))
    return lines, first + np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
