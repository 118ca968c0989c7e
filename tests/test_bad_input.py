"""Bad input through the whole pipeline: clear errors naming the file/row/key, skip-and-count
with a quarantine file, and never a half-written output folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flip_dist.config import PreprocessConfig
from flip_dist.data.preprocess import preprocess
from flip_dist.errors import FlipConfigError, FlipDataError


def _cfg(raw: Path, out: Path, **kw) -> PreprocessConfig:
    return PreprocessConfig(dataset="ml-100k", raw_dir=str(raw), out_dir=str(out), max_length=64,
                            num_workers=2, **kw)


@pytest.fixture()
def raw_copy(ml100k_raw, tmp_path) -> Path:
    dst = tmp_path / "raw"
    shutil.copytree(ml100k_raw, dst)
    return dst


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_few_bad_rows_are_skipped_counted_and_quarantined(raw_copy, tmp_path, ray_local):
    _append(raw_copy / "ml-100k.inter", "1\t2\n196\tabc\t4\t881250949\n")
    out = tmp_path / "out"
    manifest = preprocess(_cfg(raw_copy, out))
    assert manifest["bad_rows"]["total"] == 2
    assert manifest["num_samples"] == 72_855
    q = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [x["line"] for x in q] == [100_002, 100_003]
    assert "expected 4 columns" in q[0]["reason"] and "not an integer: 'abc'" in q[1]["reason"]
    assert q[0]["file"].endswith("ml-100k.inter")


def test_too_many_bad_rows_fail_naming_file_and_line_and_leave_nothing(raw_copy, tmp_path, ray_local):
    _append(raw_copy / "ml-100k.inter", "broken\n" * 2000)
    out = tmp_path / "out"
    with pytest.raises(FlipDataError, match=r"ml-100k\.inter: line 100002: .*2000 of 74855 rows are malformed"):
        preprocess(_cfg(raw_copy, out))
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_failed_rerun_keeps_the_previous_complete_output(raw_copy, tmp_path, ray_local, ml100k_processed):
    out = tmp_path / "out"
    shutil.copytree(ml100k_processed, out)
    before = (out / "manifest.json").read_text()
    (raw_copy / "ml-100k.user").write_text("user_id:token\tage:token\n")  # header lacks columns
    with pytest.raises(FlipDataError, match="key 'gender'"):
        preprocess(_cfg(raw_copy, out, overwrite=True))
    assert (out / "manifest.json").read_text() == before
    assert _leftovers(tmp_path) == []


def test_existing_output_is_not_replaced_without_overwrite(ml100k_raw, tmp_path, ray_local):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        preprocess(_cfg(ml100k_raw, out))
    assert (out / "keep").read_text() == "x"


def test_missing_and_empty_raw_files(raw_copy, tmp_path, ray_local):
    (raw_copy / "ml-100k.item").unlink()
    with pytest.raises(FlipDataError, match=r"missing raw file: expected one of \['ml-100k.item'\]"):
        preprocess(_cfg(raw_copy, tmp_path / "out"))
    (raw_copy / "ml-100k.item").write_text("")
    with pytest.raises(FlipDataError, match=r"ml-100k\.item: file is empty"):
        preprocess(_cfg(raw_copy, tmp_path / "out"))
    with pytest.raises(FlipDataError, match="raw data folder does not exist"):
        preprocess(_cfg(tmp_path / "nowhere", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_tokenizer_path_is_a_config_error(ml100k_raw, tmp_path):
    with pytest.raises(FlipConfigError, match="no/such/tokenizer"):
        preprocess(_cfg(ml100k_raw, tmp_path / "out", tokenizer=str(tmp_path / "no/such/tokenizer")))
    empty = tmp_path / "empty_tok"
    empty.mkdir()
    with pytest.raises(FlipConfigError, match="could not be loaded"):
        preprocess(_cfg(ml100k_raw, tmp_path / "out", tokenizer=str(empty)))


def test_undecodable_bytes_are_bad_rows(tmp_path):
    from flip_dist.data.bad_rows import BadRows
    from flip_dist.data.readers.base import split_delimited

    p = tmp_path / "x.tsv"
    p.write_bytes(b"a\tb\n\xff\xfe\tc\nd\te\n")
    bad = BadRows()
    rows = list(split_delimited(p, "utf-8", "\t", 2, bad))
    assert [r for _, r in rows] == [["a", "b"], ["d", "e"]]
    assert bad.total == 1 and "undecodable" in bad.samples[0]["reason"]


def _naive_long(data: bytes, limit: int) -> list[tuple[int, int]]:
    out, start = [], 0
    for line in data.split(b"\n"):
        if len(line) > limit:
            out.append((start, start + len(line)))
        start += len(line) + 1
    return out


def test_long_line_scans_agree_with_a_plain_split(tmp_path, monkeypatch):
    """The block trick (a line break in every half-limit block) must never miss a long line: lines
    of lengths around the limit, in chunks that cut them anywhere, against a plain split."""
    import numpy as np

    from flip_dist.data.readers import guarded
    from flip_dist.data.readers.guarded import ReadLimits, has_long_line, long_lines

    rng = np.random.default_rng(0)
    monkeypatch.setattr(guarded, "SCAN_CHUNK", 97)          # the carry between chunks, exercised
    for trial in range(300):
        limit = int(rng.integers(1, 40))
        lengths = rng.integers(0, 2 * limit + 2, int(rng.integers(1, 30)))
        if trial % 3 == 0:
            lengths = np.minimum(lengths, limit)             # no long line at all
        data = b"\n".join(b"a" * int(n) for n in lengths) + (b"\n" if trial % 2 else b"")
        want = _naive_long(data, limit)
        assert long_lines(data, limit) == want, (limit, lengths)
        p = tmp_path / "f.txt"
        p.write_bytes(data)
        assert has_long_line(p, ReadLimits(max_line_bytes=limit)) == bool(want), (limit, lengths)


def test_bounded_line_reader_and_gzip_guard(tmp_path):
    import gzip
    import io

    from flip_dist.data.readers.guarded import GzipGuard, ReadLimits, read_line

    f = io.BytesIO(b"short\n" + b"x" * 100_000 + b"\nnext\nlast")
    assert read_line(f, 10) == (b"short\n", False)
    raw, long = read_line(f, 10)
    assert long and raw == b"x" * 11                          # only limit + 1 bytes were kept
    assert [read_line(f, 10), read_line(f, 10), read_line(f, 10)] == [(b"next\n", False), (b"last", False),
                                                                       (b"", False)]

    p = tmp_path / "a.gz"
    p.write_bytes(gzip.compress(b"line\n" * 100_000))
    with GzipGuard(p, ReadLimits(max_inflation=1000.0, inflation_slack=0)) as g:
        assert g.readline(100) == b"line\n" and len(g.read()) == 5 * 99_999
    with GzipGuard(p, ReadLimits(max_inflation=2.0, inflation_slack=0)) as g:
        with pytest.raises(FlipDataError, match=r"a\.gz: decompresses to more than 2x its size"):
            g.read()
    p.write_bytes(p.read_bytes()[:-20])
    with GzipGuard(p) as g:
        with pytest.raises(FlipDataError, match=r"a\.gz: truncated or corrupt gzip stream \(EOFError"):
            g.read()
