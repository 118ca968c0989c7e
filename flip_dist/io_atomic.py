"""Atomic writes: every output appears complete under its final name, or not at all."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces (checksummed downloads, checkpoint manifests)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a sibling temp file, fsync it, then rename over `path`."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text to a sibling temp file, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_replaceable(final: str | os.PathLike, marker: str | None) -> None:
    """Refuse to replace a folder that this kind of writer did not make: `final` may be replaced only
    when it is empty or holds `marker` (FETCHED.json, manifest.json, a checkpoint manifest), the file
    only that writer leaves. Anything else is someone's data, and a rename over it would delete it."""
    final = Path(final)
    if not final.exists():
        return
    if not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder; refusing to replace it")
    if marker is not None and (final / marker).is_file():
        return
    if not any(final.iterdir()):
        return
    raise FileExistsError(f"{final} exists and holds no {marker or 'marker file'}: flip_dist did not write it, so it "
                          "will not replace it. Choose another output folder, or move that one away yourself.")


@contextmanager
def atomic_output_dir(final: str | os.PathLike, *, overwrite: bool = False,
                      marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to `final`, on error remove it.

    An existing `final` is an error unless `overwrite`, and even then it is replaced only when it is
    empty or holds `marker` (check_replaceable): never a folder of someone else's files. A crash at
    any point leaves the previous `final` untouched or the new one complete; between the two renames
    that swap them there is a moment with neither under the final name (the old one is still whole
    under its `.old` name until the new one is in place). The temporary folder's name starts with
    '.' and ends in '.tmp' so nothing mistakes it for output.
    """
    final = Path(final)
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} already exists; pass overwrite to replace it")
        check_replaceable(final, marker)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            check_replaceable(final, marker)     # again: something may have appeared meanwhile
            trash = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
