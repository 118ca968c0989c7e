"""Registry of raw readers by dataset name (imported lazily: a reader's deps load only when used)."""
from __future__ import annotations

import importlib

from flip_dist.data.readers.base import DatasetSpec, PartResult, RawPart, RawReader
from flip_dist.data.readers.guarded import DEFAULT_LIMITS, ReadLimits
from flip_dist.errors import FlipDataError

READERS = {
    "ml-100k": "flip_dist.data.readers.movielens:MovieLens100KReader",
    "ml-1m": "flip_dist.data.readers.movielens:MovieLens1MReader",
    "bookcrossing": "flip_dist.data.readers.bookcrossing:BookCrossingReader",
    "goodreads": "flip_dist.data.readers.goodreads:GoodReadsReader",
}


def get_reader(name: str) -> RawReader:
    if name not in READERS:
        raise FlipDataError(f"unknown dataset {name!r}; known: {sorted(READERS)}", key=name)
    module, cls = READERS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["DatasetSpec", "PartResult", "RawPart", "RawReader", "ReadLimits", "DEFAULT_LIMITS", "get_reader",
           "READERS"]
