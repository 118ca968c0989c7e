"""Atomic writes: every output appears complete under its final name, or not at all.

Files are replaced with one rename (os.replace), so a reader sees the old or the new file. A
folder cannot be renamed over a non-empty folder; on Linux atomic_output_dir swaps the two in one
renameat2(RENAME_EXCHANGE) call, so a reader again sees the old or the new folder; elsewhere it
falls back to two renames, with a short window where neither exists (see atomic_output_dir)."""
from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_AT_FDCWD = -100          # <fcntl.h>: paths relative to the working directory
_RENAME_EXCHANGE = 2      # <linux/fs.h>: swap the two paths atomically; both must exist
# renameat2 errors that mean "no exchange here", not "this rename is wrong": EINVAL (a filesystem
# without RENAME_EXCHANGE support), ENOSYS (a kernel before 3.15), EPERM (seccomp filters of
# some container runtimes answer unknown syscalls so; a real permission problem fails the
# fallback's own renames the same way).
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EPERM})


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
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """A sibling temporary path for the caller to write (a Parquet writer, a PNG), fsynced and
    renamed over `final` on success (readers see the old file or the whole new one), removed on
    error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
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


@functools.lru_cache(maxsize=1)
def _libc_renameat2() -> Callable[..., int] | None:
    """libc's renameat2 (glibc >= 2.28, musl >= 1.2.2), or None: not Linux, or a libc without it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "renameat2"):
        return None
    fn = libc.renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths `a` and `b` in one atomic step (both must exist). False, with nothing
    changed, where no atomic exchange is available (no renameat2, or an error in _NO_EXCHANGE);
    any other failure raises OSError."""
    renameat2 = _libc_renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextmanager
def atomic_output_dir(final: str | os.PathLike, *, overwrite: bool = False,
                      marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to `final`, on error remove it.

    An existing `final` is an error unless `overwrite`, and even then it is replaced only when it is
    empty or holds `marker` (check_replaceable): never a folder of someone else's files. A crash at
    any point leaves the previous `final` untouched or the new one complete.

    Replacing an existing `final`: on Linux the new folder and `final` are swapped in one
    renameat2(RENAME_EXCHANGE), so `final` exists at every moment, old or new, and the old tree,
    now under the temporary name, is then deleted. Where that is unavailable (another OS, a libc
    without renameat2, a filesystem or kernel that answers EINVAL / ENOSYS / EPERM), the old
    folder is renamed to a `.old` sibling and the new one renamed in: between those two renames
    there is a short window with neither under the final name (the old one is still whole under
    its `.old` name until the new one is in place), and a reader then finds no `final`.
    The temporary folders' names start with '.' and end in '.tmp' / '.old' so nothing mistakes
    them for output; a crash while the old tree is being deleted can leave one behind.
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
            if _exchange(tmp, final):
                shutil.rmtree(tmp, ignore_errors=True)        # the old tree, now under the tmp name
            else:
                trash = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
