"""atomic_output_dir replacing an existing folder: the atomic exchange on Linux, and the two-rename
fallback where renameat2(RENAME_EXCHANGE) is not available."""
from __future__ import annotations

import ctypes
import errno
import os
import sys
import threading
from pathlib import Path

import pytest

from flip_dist import io_atomic
from flip_dist.io_atomic import atomic_output_dir

MARK = "MARK.json"


def _write(folder: Path, text: str) -> None:
    (folder / MARK).write_text("{}")
    (folder / "data.txt").write_text(text)


def _replace(final: Path, text: str) -> None:
    with atomic_output_dir(final, overwrite=True, marker=MARK) as tmp:
        _write(tmp, text)


def _old_folder(parent: Path) -> Path:
    final = parent / "out"
    final.mkdir()
    _write(final, "old")
    (final / "stale.txt").write_text("only in the old folder")
    return final


def _assert_replaced(parent: Path, final: Path) -> None:
    assert sorted(p.name for p in final.iterdir()) == [MARK, "data.txt"]
    assert (final / "data.txt").read_text() == "new"
    assert [p.name for p in parent.iterdir()] == ["out"], "a .tmp / .old folder was left behind"


def _exchange_works_here(folder: Path) -> bool:
    """Whether renameat2(RENAME_EXCHANGE) swaps two folders on this OS, libc and filesystem,
    asked of libc directly (not through the code under test)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    a, b = folder / "a", folder / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").touch()
    ok = libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), ctypes.c_uint(2)) == 0
    swapped = (b / "x").exists()
    for p in (a / "x", b / "x"):
        p.unlink(missing_ok=True)
    a.rmdir()
    b.rmdir()
    return ok and swapped


@pytest.fixture
def exchange_here(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    works = _exchange_works_here(probe)
    probe.rmdir()
    if not works:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this OS / libc / filesystem")


def test_replacing_a_folder_gives_the_new_content_and_leaves_no_temp_folder(tmp_path):
    final = _old_folder(tmp_path)
    _replace(final, "new")
    _assert_replaced(tmp_path, final)


def test_a_new_folder_appears_whole(tmp_path):
    final = tmp_path / "out"
    _replace(final, "new")
    _assert_replaced(tmp_path, final)


def test_the_exchange_is_what_replaces_the_folder_on_linux(tmp_path, monkeypatch, exchange_here):
    calls: list[tuple[Path, Path, bool]] = []
    real = io_atomic._exchange

    def spy(a: Path, b: Path) -> bool:
        swapped = real(a, b)
        calls.append((a, b, swapped))
        return swapped

    renames: list[tuple[str, str]] = []
    real_replace = os.replace
    monkeypatch.setattr(io_atomic, "_exchange", spy)
    monkeypatch.setattr(io_atomic.os, "replace", lambda s, d: (renames.append((str(s), str(d))), real_replace(s, d)))
    final = _old_folder(tmp_path)
    _replace(final, "new")
    _assert_replaced(tmp_path, final)
    assert len(calls) == 1 and calls[0][1] == final and calls[0][2] is True
    assert renames == [], "the two-rename fallback ran although the exchange worked"


def test_the_final_folder_exists_at_every_moment_of_a_replacement(tmp_path, exchange_here):
    """A reader polling the final path never misses it while it is replaced many times. Only the
    final path itself is polled: a file inside may be gone for a reader that resolved the old
    folder just before the swap, since the old tree is deleted after it."""
    final = tmp_path / "out"
    _replace(final, "v0")
    stop = threading.Event()
    missing: list[int] = []
    polls = [0]

    def reader() -> None:
        while not stop.is_set():
            if not os.path.exists(final):
                missing.append(polls[0])
            polls[0] += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for i in range(1, 201):
            _replace(final, f"v{i}")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert missing == [], f"the final folder was missing in {len(missing)} of {polls[0]} polls"
    assert polls[0] > 0
    assert (final / "data.txt").read_text() == "v200"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_without_renameat2_the_two_rename_fallback_replaces_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(io_atomic, "_libc_renameat2", lambda: None)
    final = _old_folder(tmp_path)
    _replace(final, "new")
    _assert_replaced(tmp_path, final)


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS])
def test_an_unsupported_exchange_falls_back_to_two_renames(tmp_path, monkeypatch, err):
    """A filesystem without RENAME_EXCHANGE (EINVAL) or a kernel without renameat2 (ENOSYS)."""
    tried: list[int] = []

    def refuses(*args: object) -> int:
        tried.append(args[-1])
        ctypes.set_errno(err)
        return -1

    monkeypatch.setattr(io_atomic, "_libc_renameat2", lambda: refuses)
    final = _old_folder(tmp_path)
    _replace(final, "new")
    _assert_replaced(tmp_path, final)
    assert tried == [2]


def test_another_exchange_error_is_raised_and_the_old_folder_kept(tmp_path, monkeypatch):
    def fails(*args: object) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(io_atomic, "_libc_renameat2", lambda: fails)
    final = _old_folder(tmp_path)
    with pytest.raises(OSError) as info:
        _replace(final, "new")
    assert info.value.errno == errno.EIO
    assert (final / "data.txt").read_text() == "old" and (final / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_foreign_folder_is_still_refused(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "thesis.tex").write_text("someone's work")
    with pytest.raises(FileExistsError, match="holds no MARK.json"):
        _replace(final, "new")
    assert [p.name for p in final.iterdir()] == ["thesis.tex"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
