"""The dataset manifest: what a processed folder promises the code that trains on it.

Preprocessing writes `manifest.json` through `Manifest`; training reads it back through
`read_manifest`, which checks every key training uses (present, of its type, consistent with the
others) and names the key at fault. Keys that only describe the run (timings, bad rows, split
details) ride along untyped in `details`, so nothing a writer recorded is lost on a round trip."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from flip_dist.errors import FlipDataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    dataset: str
    num_samples: int
    num_train: int
    num_test: int
    num_fields: int
    num_features: int            # rows of the feature table (global ids, specials included)
    fields: tuple[str, ...]      # column names in field order
    field_offsets: tuple[int, ...]   # first global id of each field's block, and the end
    tokenizer: str               # the tokenizer folder the shards were encoded with
    tokenizer_name: str          # as configured: 'minilm', 'roberta-bpe' or a folder
    tokenizer_fingerprint: str   # what the token ids mean (text_assets.tokenizer_fingerprint)
    text_vocab_size: int
    text_pad_id: int
    text_mask_id: int
    max_length: int
    format_version: int = FORMAT_VERSION
    details: dict[str, Any] = field(default_factory=dict)   # everything else, as written

    def __post_init__(self) -> None:
        if len(self.fields) != self.num_fields:
            raise FlipDataError(f"{len(self.fields)} field names for num_fields={self.num_fields}", key="fields")
        if len(self.field_offsets) != self.num_fields + 1:
            raise FlipDataError(f"{len(self.field_offsets)} offsets for {self.num_fields} fields (want one more)",
                                key="field_offsets")

    @classmethod
    def from_json(cls, data: Any, path: str | Path = MANIFEST) -> Manifest:
        """The typed manifest of a parsed manifest.json, or a FlipDataError naming the key."""
        if not isinstance(data, dict):
            raise FlipDataError(f"manifest must be a JSON object, not {type(data).__name__}", path=str(path))
        typed: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "details":
                continue
            if f.name not in data:
                if f.name == "format_version":
                    continue
                if f.name == "tokenizer_fingerprint":
                    raise FlipDataError(_NO_FINGERPRINT, path=str(path), key=f.name)
                raise FlipDataError("manifest lacks a key training needs", path=str(path), key=f.name)
            typed[f.name] = _typed(data[f.name], f.name, path)
        details = {k: v for k, v in data.items() if k not in typed}
        try:
            return cls(**typed, details=details)
        except FlipDataError as e:
            raise FlipDataError(e.reason, path=str(path), key=e.key) from None

    def to_json(self) -> dict[str, Any]:
        """The manifest.json content: the typed keys and the details, in one object."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name != "details":
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return {**out, **self.details}


_INT_KEYS = {"num_samples", "num_train", "num_test", "num_fields", "num_features", "text_vocab_size",
             "text_pad_id", "text_mask_id", "max_length", "format_version"}
_STR_KEYS = {"dataset", "tokenizer", "tokenizer_name", "tokenizer_fingerprint"}
# Folders preprocessed before token numberings were recorded: their ids cannot be checked against
# the PLM's (roberta-bpe and a real RoBERTa checkpoint share a size, not a numbering).
_NO_FINGERPRINT = ("manifest predates tokenizer fingerprints (an older flip-dist wrote it), so its token ids "
                   "cannot be checked against the PLM's; rerun preprocessing: flip-dist preprocess "
                   "--config <your config> --set preprocess.overwrite=true")


def _typed(value: Any, key: str, path: str | Path) -> Any:
    def bad(want: str) -> FlipDataError:
        return FlipDataError(f"must be {want}, not {value!r}"[:300], path=str(path), key=key)

    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("an integer >= 0")
        return value
    if key in _STR_KEYS:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if key == "fields":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of field names")
        return tuple(value)
    if key == "field_offsets":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value) \
                or any(b < a for a, b in zip(value, value[1:])):
            raise bad("a non-decreasing list of integers")
        return tuple(value)
    raise AssertionError(f"no type for manifest key {key}")


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FlipDataError("no manifest.json: not a processed dataset (or an unfinished one)", path=str(folder))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlipDataError(f"manifest is not valid JSON: {e}", path=str(path)) from e
    return Manifest.from_json(data, path)


def write_manifest(folder: str | Path, doc: dict[str, Any]) -> Manifest:
    """Write `doc` as the folder's manifest.json (atomically), after checking it holds every key
    training reads: a writer cannot leave one out."""
    from flip_dist.io_atomic import write_json_atomic

    path = Path(folder) / MANIFEST
    manifest = Manifest.from_json(doc, path)
    write_json_atomic(path, doc)
    return manifest
