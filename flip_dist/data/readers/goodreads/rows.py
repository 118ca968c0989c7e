"""An interactions chunk's valid rows, and how a bad row is judged and recorded: shared by the
JSON and CSV forms, so both count and locate bad rows alike."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from flip_dist.data.bad_rows import BadRows


@dataclass
class Rows:
    """Valid rows of one chunk, before labelling and the join."""

    user: pa.Array                        # string
    book: np.ndarray                      # int64 real book id
    rating: np.ndarray                    # int64 0..5
    ts: np.ndarray | None                 # int64 epoch seconds (JSON form)


def add_bad(bad: BadRows, path: Path, loc: int, reason: str, raw: bytes) -> None:
    """Record a bad line; its bytes are decoded leniently, since bad input is what is being shown."""
    bad.add(str(path), int(loc), reason, raw.decode("utf-8", "replace"))


def apply_checks(checks: list[tuple[str, np.ndarray]], n: int, locs: np.ndarray | None,
                 lines: list[bytes] | None, path: Path, bad: BadRows) -> np.ndarray | None:
    """Mask of rows that pass every check; each failing row is counted once, under its first reason.
    None when a row fails but there are no locations (a fast-path chunk): the caller re-parses it
    line by line so that the row can be named."""
    ok = np.ones(n, dtype=bool)
    for reason, failed in checks:
        hit = np.flatnonzero(ok & failed)
        if len(hit):
            if locs is None or lines is None:
                return None
            for i in hit:
                add_bad(bad, path, locs[i], reason, lines[i])
            ok[hit] = False
    return ok
