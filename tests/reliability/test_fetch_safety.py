"""`data get` is safe by default: each fault injected without the internet (a throwaway HTTPS server
on 127.0.0.1 with a self-signed certificate, and a stand-in for the pip subprocess), each ending in
a clear FlipDataError that names the source, with nothing partial left behind and nothing of
anyone else's touched."""
from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flip_dist import cli
from flip_dist.data.fetch import FETCHED, Source, UrlSource, WheelSource, fetch
from flip_dist.data.safe_download import FetchDeadlineExceeded, https_opener
from flip_dist.errors import FlipDataError

MB = 1 << 20


# ---------------------------------------------------------------- a loopback HTTPS server

def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 only, valid for a day, trusted by nothing but these tests."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is here to make a test cert")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
        return cert, key
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                        critical=False)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .sign(k, hashes.SHA256()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return cert, key


Route = Callable[[BaseHTTPRequestHandler], None]


class LoopbackHTTPS:
    """Serves `routes` (path -> writer) over TLS on 127.0.0.1 and records every path requested."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[str] = []
        self.stop = threading.Event()
        owner = self
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"       # bodies end when the connection closes

            def do_GET(self) -> None:
                owner.hits.append(self.path)
                route = owner.routes.get(self.path)
                try:
                    if route is None:
                        self.send_error(404)
                    else:
                        route(self)
                except (OSError, ssl.SSLError):  # the client hung up on us: that is the point
                    pass

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = self.socket.accept()
                sock.settimeout(10)
                return tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def finish_request(self, request, client_address):
                request.do_handshake()          # in the handler's thread, never the accept loop
                super().finish_request(request, client_address)

            def handle_error(self, request, client_address) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path: str, scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def body(data: bytes, *, length: int | None = -1) -> Route:
    """200 with `data`; Content-Length is len(data), or `length` when given, or absent when None."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/zip")
        if length is not None:
            h.send_header("Content-Length", str(len(data) if length == -1 else length))
        h.end_headers()
        for i in range(0, len(data), 64 * 1024):
            h.wfile.write(data[i:i + 64 * 1024])
    return route


def redirect(location: str) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return route


def trickle(server: LoopbackHTTPS, total: int, every_s: float) -> Route:
    """Honest headers, then one byte every `every_s`: never idle long enough for a socket timeout."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(total))
        h.end_headers()
        for _ in range(total):
            if server.stop.wait(every_s):
                return
            h.wfile.write(b"\0")
            h.wfile.flush()
    return route


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    return _self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture()
def server(tls_files) -> Iterator[LoopbackHTTPS]:
    srv = LoopbackHTTPS(*tls_files)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture()
def opener(tls_files):
    """Trusts only the test certificate; no proxies, so nothing leaves 127.0.0.1."""
    return https_opener(ssl_context=ssl.create_default_context(cafile=str(tls_files[0])), proxies={})


# ---------------------------------------------------------------- pinned test sources

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return buf.getvalue()


GOOD = {"toy/a.csv": b"user,item\n1,2\n", "toy/b.csv": b"item,title\n2,Heat\n"}
GOOD_ZIP = make_zip(GOOD)


def url_source(url: str, files: dict[str, bytes] = GOOD, zip_bytes: bytes = GOOD_ZIP, *,
               zip_sha: str | None = None, member_sha: dict[str, str] | None = None, max_bytes: int = MB,
               max_member: int = MB, max_total: int = 4 * MB, wheel: WheelSource | None = None) -> Source:
    names = {m.rsplit("/", 1)[-1]: m for m in files}
    pins = member_sha or {n: sha(files[m]) for n, m in names.items()}
    return Source(name="toy", url=UrlSource(url=url, sha256=zip_sha or sha(zip_bytes), members=names,
                                            member_sha256=pins, max_bytes=max_bytes),
                  wheel=wheel, max_member_bytes=max_member, max_total_bytes=max_total)


def snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path under `folder` with its bytes (None for folders) and mtime: 'untouched' exactly."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def assert_nothing_left(parent: Path, *expected: str) -> None:
    """No output folder, no .tmp / .old sibling: an atomic failure leaves the parent as it was."""
    assert sorted(p.name for p in parent.iterdir()) == sorted(expected)


# ---------------------------------------------------------------- the faults

def test_non_https_urls_are_rejected_before_any_connection(server, opener, tmp_path, tally):
    from flip_dist.data.safe_download import Deadline, download_pinned

    server.routes["/toy.zip"] = body(GOOD_ZIP)
    for bad in (server.url("/toy.zip", "http"), "ftp://127.0.0.1/toy.zip", "file:///etc/passwd",
                "https:///no-host.zip", "//127.0.0.1/toy.zip"):
        with pytest.raises(FlipDataError, match="only https URLs are fetched"):
            url_source(bad)
        with pytest.raises(FlipDataError, match="only https URLs are fetched"):
            download_pinned(bad, tmp_path / "x.zip", sha256="0" * 64, max_bytes=MB, deadline=Deadline(5),
                            socket_timeout=2, opener=opener)
    assert server.hits == []
    assert_nothing_left(tmp_path)
    tally("bad_input")


def test_unpinned_or_unsafe_source_tables_are_rejected(tally):
    ok = dict(sha256="0" * 64, members={"a.csv": "pkg/a.csv"}, member_sha256={"a.csv": "1" * 64}, max_bytes=MB)
    with pytest.raises(FlipDataError, match="must pin one version with =="):
        WheelSource(requirement="recbole>=1.2", **ok)
    with pytest.raises(FlipDataError, match="64 lowercase hex"):
        WheelSource(requirement="recbole==1.2.1", **(ok | {"sha256": "abc"}))
    with pytest.raises(FlipDataError, match="do not match the members"):
        WheelSource(requirement="recbole==1.2.1", **(ok | {"member_sha256": {}}))
    for member in ("../evil.csv", "/etc/passwd", "pkg/../../evil.csv", "C:/evil.csv", "pkg\\evil.csv"):
        with pytest.raises(FlipDataError, match="relative without '..'"):
            WheelSource(requirement="recbole==1.2.1", **(ok | {"members": {"a.csv": member}}))
    with pytest.raises(FlipDataError, match="plain file name"):
        WheelSource(requirement="recbole==1.2.1", **(ok | {"members": {"../a.csv": "pkg/a.csv"},
                                                           "member_sha256": {"../a.csv": "1" * 64}}))
    with pytest.raises(FlipDataError, match="positive number of bytes"):
        WheelSource(requirement="recbole==1.2.1", **(ok | {"max_bytes": 0}))
    tally("bad_input")


def test_a_redirect_from_https_to_http_is_refused(server, opener, tmp_path, tally):
    server.routes["/toy.zip"] = body(GOOD_ZIP)
    server.routes["/to-https"] = redirect(server.url("/toy.zip"))
    server.routes["/to-http"] = redirect(server.url("/toy.zip", "http"))
    # control: a redirect that stays on https is followed, and the pinned bytes are kept
    out = fetch("toy", tmp_path / "ok", sources={"toy": url_source(server.url("/to-https"))}, opener=opener)
    assert json.loads((out / FETCHED).read_text())["sha256"] == {"a.csv": sha(GOOD["toy/a.csv"]),
                                                                "b.csv": sha(GOOD["toy/b.csv"])}
    server.hits.clear()
    src = url_source(server.url("/to-http"))
    with pytest.raises(FlipDataError, match=r"/to-http: refusing the redirect \(HTTP 302\) to a non-https URL http://"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener)
    assert server.hits == ["/to-http"]                       # the http URL was never requested
    assert_nothing_left(tmp_path, "ok")
    tally("bad_input")


def test_a_download_over_the_cap_is_refused_by_content_length(server, opener, tmp_path, tally):
    server.routes["/huge.zip"] = body(GOOD_ZIP, length=50 * MB)      # says 50 MB; the cap is 1 MB
    src = url_source(server.url("/huge.zip"), max_bytes=MB)
    with pytest.raises(FlipDataError, match=r"/huge\.zip: Content-Length 52,428,800 bytes is over the "
                                            r"1,048,576-byte cap"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener)
    assert_nothing_left(tmp_path)
    tally("bad_input")


def test_a_download_over_the_cap_is_cut_while_streaming_without_length(server, opener, tmp_path, tally):
    server.routes["/endless.zip"] = body(b"\0" * (3 * MB), length=None)   # no Content-Length at all
    src = url_source(server.url("/endless.zip"), max_bytes=MB)
    with pytest.raises(FlipDataError, match=r"/endless\.zip: download passed the 1,048,576-byte cap"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener)
    assert_nothing_left(tmp_path)
    tally("bad_input")


def test_a_zip_bomb_is_cut_at_the_member_and_total_caps(server, opener, tmp_path, tally):
    zeros = b"\0" * (50 * MB)
    bomb = make_zip({"toy/a.csv": zeros})
    assert len(bomb) < MB                                     # small on the wire, 50 MB inflated
    server.routes["/bomb.zip"] = body(bomb)
    src = url_source(server.url("/bomb.zip"), {"toy/a.csv": zeros}, bomb, max_bytes=MB, max_member=MB)
    t0 = time.monotonic()
    with pytest.raises(FlipDataError, match=r"/bomb\.zip!toy/a\.csv: member inflates past the 1,048,576-byte cap"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener)
    assert time.monotonic() - t0 < 30
    assert_nothing_left(tmp_path)
    # each member under its cap, together over the total cap
    parts = {"toy/a.csv": b"a" * (700 * 1024), "toy/b.csv": b"b" * (700 * 1024)}
    pair = make_zip(parts)
    server.routes["/pair.zip"] = body(pair)
    src = url_source(server.url("/pair.zip"), parts, pair, max_member=MB, max_total=MB)
    with pytest.raises(FlipDataError,
                       match=r"/pair\.zip!toy/b\.csv: members inflate past the 1,048,576-byte total cap"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener)
    assert_nothing_left(tmp_path)
    tally("bad_input")


def test_a_checksum_mismatch_on_the_zip_or_a_member_is_refused(server, opener, tmp_path, tally):
    server.routes["/toy.zip"] = body(GOOD_ZIP)
    src = url_source(server.url("/toy.zip"), zip_sha="f" * 64)
    with pytest.raises(FlipDataError, match=rf"/toy\.zip: checksum mismatch: sha256 {sha(GOOD_ZIP)}, pinned f{{64}}"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener)
    assert_nothing_left(tmp_path)
    src = url_source(server.url("/toy.zip"), member_sha={"a.csv": sha(GOOD["toy/a.csv"]), "b.csv": "e" * 64})
    with pytest.raises(FlipDataError, match=r"/toy\.zip!toy/b\.csv: checksum mismatch: .* pinned e{64}"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener)
    assert_nothing_left(tmp_path)
    tally("bad_input")


def test_the_total_deadline_stops_a_trickling_server(server, opener, tmp_path, tally):
    server.routes["/slow.zip"] = trickle(server, total=100_000, every_s=0.05)
    src = url_source(server.url("/slow.zip"))
    t0 = time.monotonic()
    with pytest.raises(FetchDeadlineExceeded, match=r"/slow\.zip: the fetch ran past its 2 s deadline"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener, timeout=5, deadline=2)
    assert 1.5 < time.monotonic() - t0 < 8
    assert_nothing_left(tmp_path)
    tally("bad_input")


def test_the_total_deadline_kills_a_hanging_pip(tmp_path, tally):
    seen: list[float] = []

    def hanging_pip(cmd, **kw):
        seen.append(kw["timeout"])
        return subprocess.run([sys.executable, "-c", "import time; time.sleep(60)"], **kw)

    t0 = time.monotonic()
    with pytest.raises(FetchDeadlineExceeded, match=r"pypi wheel toy==1\.0: pip download was killed after 2 s"):
        fetch("toy", tmp_path / "out", sources={"toy": wheel_source(b"x")}, pip_runner=hanging_pip, deadline=2)
    assert seen and seen[0] <= 2 and time.monotonic() - t0 < 15
    assert_nothing_left(tmp_path)
    tally("bad_input")


def test_an_existing_foreign_folder_is_never_touched(server, opener, tmp_path, capsys, tally):
    server.routes["/toy.zip"] = body(GOOD_ZIP)
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work\n")
    (mine / "sub" / "a.csv").write_bytes(b"\x00\x01 data")
    before, siblings = snapshot(mine), sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(FlipDataError, match=rf"{mine}: exists and is not a folder of ours"):
        fetch("toy", mine, sources={"toy": url_source(server.url("/toy.zip"))}, opener=opener)
    assert server.hits == []                                 # refused before any download
    # the command line: one line on stderr naming the folder, exit code 2
    assert cli.main(["data", "get", "ml-100k", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flip-dist: error: ") and str(mine) in err
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings
    tally("bad_input")


# ---------------------------------------------------------------- the pip wheel path

def wheel_source(wheel: bytes, *, wheel_sha: str | None = None, max_bytes: int = MB) -> Source:
    data = b"user,item\n1,2\n"
    return Source(name="toy", url=None,
                  wheel=WheelSource(requirement="toy==1.0", sha256=wheel_sha or sha(wheel),
                                    members={"a.csv": "toy/a.csv"}, member_sha256={"a.csv": sha(data)},
                                    max_bytes=max_bytes),
                  max_member_bytes=MB, max_total_bytes=MB)


def fake_pip(wheel: bytes, calls: list[list[str]] | None = None, rc: int = 0, stderr: str = ""):
    """Stands in for `pip download`: checks it was asked for hash-checking, drops `wheel` in -d."""
    def run(cmd, **kw):
        assert kw.get("timeout") and kw["timeout"] > 0
        assert "--require-hashes" in cmd and "--no-deps" in cmd
        req = Path(cmd[cmd.index("-r") + 1]).read_text()
        assert req.startswith("toy==1.0 --hash=sha256:")
        if calls is not None:
            calls.append(cmd)
        if rc == 0:
            (Path(cmd[cmd.index("-d") + 1]) / "toy-1.0-py3-none-any.whl").write_bytes(wheel)
        return subprocess.CompletedProcess(cmd, rc, "", stderr)
    return run


def test_a_wheel_whose_hash_is_not_pinned_is_refused(tmp_path, tally):
    wheel = make_zip({"toy/a.csv": b"user,item\n1,2\n"})
    calls: list[list[str]] = []
    # control: the pinned wheel is unpacked, recorded, and then only verified
    out = fetch("toy", tmp_path / "ok", sources={"toy": wheel_source(wheel)}, pip_runner=fake_pip(wheel, calls))
    record = json.loads((out / FETCHED).read_text())
    assert record["source"] == "pypi wheel toy==1.0" and record["source_sha256"] == sha(wheel)
    assert fetch("toy", out, sources={"toy": wheel_source(wheel)}, pip_runner=fake_pip(wheel, calls)) == out
    assert len(calls) == 1
    # a different wheel than the pinned one (pip's own check bypassed: the stand-in ignores it)
    src = wheel_source(wheel, wheel_sha="d" * 64)
    with pytest.raises(FlipDataError, match=rf"pypi wheel toy==1\.0: checksum mismatch: wheel "
                                            rf"toy-1\.0-py3-none-any\.whl has sha256 {sha(wheel)}, pinned d{{64}}"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, pip_runner=fake_pip(wheel))
    assert_nothing_left(tmp_path, "ok")
    # a wheel over the cap
    with pytest.raises(FlipDataError, match=r"pypi wheel toy==1\.0: wheel .* over the 100-byte cap"):
        fetch("toy", tmp_path / "out", sources={"toy": wheel_source(wheel, max_bytes=100)},
              pip_runner=fake_pip(wheel))
    # pip itself refusing (as it does on a hash mismatch): its complaint, on one line
    with pytest.raises(FlipDataError, match=r"pypi wheel toy==1\.0: could not download the wheel: ERROR: "
                                            r"THESE PACKAGES DO NOT MATCH"):
        fetch("toy", tmp_path / "out", sources={"toy": wheel_source(wheel)},
              pip_runner=fake_pip(wheel, rc=1, stderr="WARNING: noise\nERROR: THESE PACKAGES DO NOT MATCH\n"))
    assert_nothing_left(tmp_path, "ok")
    tally("bad_input")


def test_a_tampered_url_falls_back_to_the_pinned_wheel(server, opener, tmp_path, tally):
    wheel = make_zip({"toy/a.csv": b"user,item\n1,2\n"})
    server.routes["/toy.zip"] = body(make_zip({"toy/a.csv": b"user,item\n6,6\n"}))   # not the pinned bytes
    wsrc = wheel_source(wheel)
    src = url_source(server.url("/toy.zip"), {"toy/a.csv": b"user,item\n1,2\n"}, GOOD_ZIP, wheel=wsrc.wheel)
    out = fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener, pip_runner=fake_pip(wheel))
    assert json.loads((out / FETCHED).read_text())["source"] == "pypi wheel toy==1.0"
    assert (out / "a.csv").read_bytes() == b"user,item\n1,2\n"
    # both sources bad: the error names both
    shutil.rmtree(out)
    with pytest.raises(FlipDataError, match=r"pypi wheel toy==1\.0: checksum mismatch.*and before it: "
                                            r"https://127\.0\.0\.1:\d+/toy\.zip: checksum mismatch"):
        fetch("toy", tmp_path / "out", sources={"toy": src}, opener=opener,
              pip_runner=fake_pip(make_zip({"toy/a.csv": b"other"})))
    assert_nothing_left(tmp_path)
    tally("fault")
