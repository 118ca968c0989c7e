"""Errors that name the file, row or key at fault, so users can fix their input."""
from __future__ import annotations


class FlipDataError(ValueError):
    """Bad or missing input data. The message names the file and, where known, the row or key."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 key: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"line {row}")
        if key is not None:
            where.append(f"key {key!r}")
        self.path, self.row, self.key = path, row, key
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class FlipConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; names the key."""
