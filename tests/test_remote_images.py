"""Remote image URLs (vlserve.chat.remote): off by default, an allowlist of hosts, SSRF-safe.

Everything runs on loopback: a small HTTP(S) server in a thread on 127.0.0.1 serves the
images. Loopback is a private address, so fetches that must succeed use allow_private=True;
the SSRF guards run with allow_private=False and a fake resolver, and check that the test
server saw no connection at all.
"""

from __future__ import annotations

import io
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from conftest import self_signed_certificate
from vlserve.chat import images, remote
from vlserve.errors import ImageError
from vlserve.chat.images import ImageCache, ImageLimits, decode_data_url, prepare_image
from vlserve.chat.remote import RemotePolicy, fetch_image

PARAM = "messages"
LIMITS = ImageLimits()
RED, BLUE = (255, 0, 0), (0, 0, 255)


def png_bytes(size=(40, 20)) -> bytes:
    im = Image.new("RGB", size, RED)
    im.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


PNG = png_bytes()


# --- a loopback image server ------------------------------------------------------------

class ImageServer:
    """Routes are path -> handler(request_handler); records connections and requests."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.routes: dict = {}
        self.connections = 0
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.requests.append((self.path, dict(self.headers)))
                route = outer.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "9")
                    self.end_headers()
                    self.wfile.write(b"not found")
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                    pass

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def get_request(self):
                sock, addr = super().get_request()
                outer.connections += 1
                if tls is not None:
                    sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, addr

            def finish_request(self, request, client_address):
                if tls is not None:
                    try:
                        request.settimeout(5)
                        request.do_handshake()
                    except (ssl.SSLError, OSError):
                        return
                super().finish_request(request, client_address)

            def handle_error(self, request, client_address):
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def send(body: bytes, ctype: str | None = "image/png", status: int = 200, length=True,
         headers: dict | None = None):
    def route(h: BaseHTTPRequestHandler):
        h.send_response(status)
        if ctype:
            h.send_header("Content-Type", ctype)
        if length is True:
            h.send_header("Content-Length", str(len(body)))
        elif length is not None:
            h.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if length is None:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.write(body)
    return route


def redirect(location: str, status: int = 302):
    return send(b"", None, status=status, headers={"Location": location})


@pytest.fixture
def server():
    srv = ImageServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed_certificate(tmp_path_factory.mktemp("tls"), cn="localhost",
                                   san="DNS:localhost,IP:127.0.0.1")


@pytest.fixture
def tls_server(certificate):
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv = ImageServer(tls=context)
    yield srv
    srv.close()


def local(**kw) -> RemotePolicy:
    """A policy that may fetch from this machine's test server."""
    kw.setdefault("hosts", ("127.0.0.1", "localhost"))
    kw.setdefault("allow_private", True)
    kw.setdefault("timeout", 5.0)
    return RemotePolicy(**kw)


def refused(url: str, policy: RemotePolicy, match: str) -> ImageError:
    with pytest.raises(ImageError) as exc:
        fetch_image(url, policy, param=PARAM)
    assert match in exc.value.message, exc.value.message
    assert exc.value.param == PARAM and exc.value.status == 400
    assert exc.value.code == "invalid_image"
    return exc.value


class FakeDNS:
    """socket.getaddrinfo with canned answers for made-up names; real for everything else."""

    def __init__(self, monkeypatch, answers: dict[str, list[str]]):
        self.answers = answers
        self.calls: list[str] = []
        real = socket.getaddrinfo

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            if host not in self.answers:
                return real(host, port, family, type, proto, flags)
            self.calls.append(host)
            out = []
            for ip in self.answers[host]:
                if ":" in ip:
                    out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
                else:
                    out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
            return out

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def wire_to(monkeypatch, srv: ImageServer) -> list:
    """Every connection goes to the test server; returns the addresses asked for."""
    dialled = []

    def connect(family, sockaddr, timeout):
        dialled.append(sockaddr[0])
        return socket.create_connection(("127.0.0.1", srv.port), timeout)

    monkeypatch.setattr(remote, "_connect", connect)
    return dialled


# --- off by default ---------------------------------------------------------------------

@pytest.mark.parametrize("policy", [None, RemotePolicy(), RemotePolicy(hosts=())])
def test_off_by_default_keeps_the_offline_refusal(server, policy):
    server.routes["/a.png"] = send(PNG)
    cache = ImageCache(1 << 20)
    with pytest.raises(ImageError) as exc:
        cache.decode(server.url("/a.png"), LIMITS, param=PARAM, remote=policy)
    message = exc.value.message
    assert "remote image URLs are not fetched: this server is offline" in message
    assert "base64 data: URL" in message and "--remote-image-host" in message
    assert exc.value.param == PARAM
    assert server.connections == 0


def test_data_urls_and_other_schemes_are_unchanged_with_a_policy(server):
    import base64
    cache = ImageCache(1 << 20)
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert cache.decode(url, LIMITS, remote=local()).sha256 == prepare_image(PNG, LIMITS).sha256
    with pytest.raises(ImageError, match="file: URLs are refused"):
        cache.decode("file:///etc/passwd", LIMITS, remote=local())
    with pytest.raises(ImageError, match="'ftp:' is not supported"):
        cache.decode("ftp://127.0.0.1/a.png", LIMITS, remote=local())
    assert server.connections == 0


# --- the allowlist ----------------------------------------------------------------------

def test_host_not_on_the_list_is_named(server):
    server.routes["/a.png"] = send(PNG)
    policy = local(hosts=("images.example.com",))
    refused(server.url("/a.png"), policy, "remote image host '127.0.0.1' is not allowed")
    refused("http://evil.example.org/a.png", policy, "'evil.example.org' is not allowed")
    assert server.connections == 0


@pytest.mark.parametrize("host, allowed", [
    ("a.example.com", True),
    ("deep.a.example.com", True),
    ("A.EXAMPLE.COM", True),
    ("a.example.com.", True),
    ("example.com", False),          # the apex is not a subdomain: list it too if wanted
    ("badexample.com", False),
    ("a.example.com.evil.net", False),
    ("exact.org", True),
    ("sub.exact.org", False),
    ("bücher.example.com", True),    # IDNA: xn--bcher-kva.example.com
    ("xn--bcher-kva.example.com", True),
])
def test_suffix_patterns_and_exact_names(host, allowed):
    policy = RemotePolicy(hosts=("*.Example.COM", "exact.org."))
    assert policy.allows(remote.normalize_host(host)) is allowed


def test_idna_names_on_the_list_match_either_spelling():
    policy = RemotePolicy(hosts=("bücher.de",))
    assert policy.hosts == ("xn--bcher-kva.de",)
    assert policy.allows(remote.normalize_host("BÜCHER.de"))


@pytest.mark.parametrize("entry", ["", "*", "*.", "http://a.com", "a.com/x", "u@a.com",
                                   "a*.com", "*.1.2.3.4", "bad host", "a..b"])
def test_bad_allowlist_entries_are_refused_at_start(entry):
    with pytest.raises(ValueError):
        RemotePolicy(hosts=(entry,))


@pytest.mark.parametrize("url", [
    "http://allowed.com@evil.com/a.png",
    "http://allowed.com:pw@evil.com/a.png",
    "http://evil.com@allowed.com/a.png",   # even when the host itself is allowed
    "http://@allowed.com/a.png",
])
def test_userinfo_tricks_are_refused(server, url):
    refused(url, local(hosts=("allowed.com",)), "user info")
    assert server.connections == 0


@pytest.mark.parametrize("url, message", [
    ("http://allowed.com\\@evil.com/a.png", "not allowed (space, control"),
    ("http://allowed.com/a b.png", "not allowed (space, control"),
    ("http://allowed.com/a\r\nX-Injected: 1", "not allowed (space, control"),
    ("http://%61llowed.com/a.png", "no valid host"),
    ("http://allowed.com:99999/a.png", "malformed"),
    ("http:///a.png", "no valid host"),
    ("gopher://allowed.com/", "'gopher:' is not supported"),
])
def test_malformed_urls_are_refused(url, message):
    refused(url, local(hosts=("allowed.com",)), message)


def test_ip_literals_only_when_the_ip_itself_is_listed(server, monkeypatch):
    server.routes["/a.png"] = send(PNG)
    dns = FakeDNS(monkeypatch, {})
    by_name = local(hosts=("localhost", "*.example.com"))
    refused(server.url("/a.png"), by_name, "'127.0.0.1' is not allowed")
    refused(f"http://[::1]:{server.port}/a.png", by_name, "'::1' is not allowed")
    refused(f"http://2130706433:{server.port}/a.png", by_name, "'2130706433' is not allowed")
    assert server.connections == 0 and dns.calls == []
    # Listed as an IP: fetched, without any DNS lookup.
    assert fetch_image(server.url("/a.png"), local(hosts=("127.0.0.1",)), param=PARAM) == PNG
    assert RemotePolicy(hosts=("[::1]",)).hosts == ("::1",)


def test_a_listed_ip_literal_is_still_vetted(server):
    refused(server.url("/a.png"), local(hosts=("127.0.0.1",), allow_private=False),
            "resolves to a private, loopback, link-local or reserved address")
    assert server.connections == 0


def test_https_only(server):
    refused(server.url("/a.png"), local(https_only=True), "must use https")
    assert server.connections == 0


# --- SSRF: addresses are vetted before any connection -----------------------------------

@pytest.mark.parametrize("answers", [
    ["10.0.0.5"],
    ["169.254.169.254"],            # cloud metadata
    ["127.0.0.1"],
    ["127.8.9.10"],
    ["192.168.1.20"],
    ["172.16.0.1"],
    ["100.64.0.1"],                 # shared address space (carrier NAT)
    ["0.0.0.0"],
    ["224.0.0.1"],                  # multicast
    ["240.0.0.1"],                  # reserved
    ["255.255.255.255"],
    ["::1"],
    ["::"],
    ["fe80::1"],
    ["fc00::1"],
    ["::ffff:127.0.0.1"],           # IPv4-mapped IPv6
    ["::ffff:169.254.169.254"],
    ["64:ff9b::a00:5"],             # NAT64 of 10.0.0.5
    ["2002:a00:5::1"],              # 6to4 of 10.0.0.5
    ["93.184.216.34", "10.0.0.5"],  # a mix: one bad address is enough
    ["10.0.0.5", "93.184.216.34"],
])
def test_private_addresses_are_refused_before_connecting(server, monkeypatch, answers):
    server.routes["/a.png"] = send(PNG)
    FakeDNS(monkeypatch, {"img.example.com": answers})
    dialled = wire_to(monkeypatch, server)
    refused(f"http://img.example.com:{server.port}/a.png",
            RemotePolicy(hosts=("img.example.com",), timeout=5),
            "'img.example.com' resolves to a private, loopback, link-local or reserved")
    assert dialled == [] and server.connections == 0


def test_allow_private_lets_a_lan_host_through(server, monkeypatch):
    server.routes["/a.png"] = send(PNG)
    FakeDNS(monkeypatch, {"camera.lan": ["192.168.1.20"]})
    dialled = wire_to(monkeypatch, server)
    got = fetch_image(f"http://camera.lan:{server.port}/a.png",
                      RemotePolicy(hosts=("camera.lan",), allow_private=True), param=PARAM)
    assert got == PNG and dialled == ["192.168.1.20"]


def test_connects_to_the_vetted_address_and_sends_the_name(server, monkeypatch):
    server.routes["/a.png"] = send(PNG)
    dns = FakeDNS(monkeypatch, {"img.example.com": ["93.184.216.34"]})
    dialled = wire_to(monkeypatch, server)
    url = f"http://img.example.com:{server.port}/a.png?size=large"
    assert fetch_image(url, RemotePolicy(hosts=("img.example.com",)), param=PARAM) == PNG
    assert dialled == ["93.184.216.34"] and dns.calls == ["img.example.com"]  # resolved once
    path, headers = server.requests[-1]
    assert path == "/a.png?size=large"
    assert headers["Host"] == f"img.example.com:{server.port}"
    assert headers["Accept-Encoding"] == "identity"


def test_dns_rebinding_has_no_window(server, monkeypatch):
    """The name is resolved once: a second, private answer is never asked for nor used."""
    server.routes["/a.png"] = send(PNG)
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    dns = FakeDNS(monkeypatch, {})
    dns.answers = type("Rebinding", (dict,), {
        "__contains__": lambda self, k: k == "img.example.com",
        "__getitem__": lambda self, k: next(answers)})()
    dialled = wire_to(monkeypatch, server)
    fetch_image(f"http://img.example.com:{server.port}/a.png",
                RemotePolicy(hosts=("img.example.com",)), param=PARAM)
    assert dns.calls == ["img.example.com"] and dialled == ["93.184.216.34"]


def test_unresolvable_and_unreachable_hosts(monkeypatch):
    FakeDNS(monkeypatch, {"nowhere.example.com": []})
    refused("http://nowhere.example.com/a.png", RemotePolicy(hosts=("nowhere.example.com",)),
            "'nowhere.example.com' could not be resolved")
    port = _closed_port()
    refused(f"http://127.0.0.1:{port}/a.png", local(), "could not be reached")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- redirects --------------------------------------------------------------------------

def test_redirect_on_the_same_host_is_followed(server):
    server.routes["/old"] = redirect("/mid", 301)
    server.routes["/mid"] = redirect(server.url("/a.png", host="localhost"), 307)
    server.routes["/a.png"] = send(PNG)
    assert fetch_image(server.url("/old", host="localhost"), local(), param=PARAM) == PNG
    assert [p for p, _ in server.requests] == ["/old", "/mid", "/a.png"]


def test_redirect_to_another_host_is_refused(server):
    server.routes["/old"] = redirect(server.url("/a.png", host="127.0.0.1"))
    server.routes["/a.png"] = send(PNG)
    err = refused(server.url("/old", host="localhost"), local(),
                  "'localhost' redirected to another host ('127.0.0.1')")
    assert "same host" in err.message
    assert [p for p, _ in server.requests] == ["/old"]


def test_redirect_to_the_metadata_address_is_refused(server):
    server.routes["/old"] = redirect("http://169.254.169.254/latest/meta-data/")
    refused(server.url("/old"), local(hosts=("127.0.0.1", "169.254.169.254")),
            "redirected to another host")


def test_redirect_with_userinfo_is_refused(server):
    server.routes["/old"] = redirect(f"http://evil.com@127.0.0.1:{server.port}/a.png")
    refused(server.url("/old"), local(), "user info")


def test_too_many_redirects(server):
    for i in range(5):
        server.routes[f"/r{i}"] = redirect(f"/r{i + 1}")
    server.routes["/r5"] = send(PNG)
    refused(server.url("/r1"), local(), "too many redirects (more than 3)")
    assert len(server.requests) == 4  # the first request and three redirects
    # Exactly three are fine.
    assert fetch_image(server.url("/r2"), local(), param=PARAM) == PNG


def test_redirect_without_location(server):
    server.routes["/old"] = send(b"", None, status=302)
    refused(server.url("/old"), local(), "HTTP 302 without a Location")


def test_https_to_http_downgrade_is_refused(tls_server, certificate):
    tls_server.routes["/old"] = redirect(f"http://localhost:{tls_server.port}/a.png")
    refused(tls_server.url("/old", host="localhost"), local(ca_file=certificate[0]),
            "redirected from https to http: refused")


def test_http_to_https_upgrade_on_the_same_host_is_followed(server, tls_server, certificate):
    tls_server.routes["/a.png"] = send(PNG)
    server.routes["/old"] = redirect(tls_server.url("/a.png", host="localhost"))
    got = fetch_image(server.url("/old", host="localhost"), local(ca_file=certificate[0]),
                      param=PARAM)
    assert got == PNG


# --- TLS --------------------------------------------------------------------------------

def test_https_verifies_the_certificate_against_the_name(tls_server, certificate, monkeypatch):
    tls_server.routes["/a.png"] = send(PNG)
    trusted = local(ca_file=certificate[0])
    assert fetch_image(tls_server.url("/a.png", host="localhost"), trusted, param=PARAM) == PNG
    # An IP literal is checked against the certificate's IP addresses.
    assert fetch_image(tls_server.url("/a.png"), trusted, param=PARAM) == PNG
    # The system store does not know the test CA.
    refused(tls_server.url("/a.png", host="localhost"), local(),
            "could not be fetched: its TLS certificate did not verify")
    # A name the certificate does not carry, although it resolves to the same address.
    FakeDNS(monkeypatch, {"other.test": ["127.0.0.1"]})
    refused(tls_server.url("/a.png", host="other.test"),
            local(hosts=("other.test",), ca_file=certificate[0]),
            "its TLS certificate did not verify")


# --- what comes back --------------------------------------------------------------------

def test_content_length_over_the_limit_is_refused_before_reading(server):
    big = b"\x00" * 5000
    server.routes["/big.png"] = send(big)
    refused(server.url("/big.png"), local(max_bytes=4000),
            "too large: 5000 bytes exceeds the limit of 4000 bytes")


def test_body_without_length_is_stopped_at_the_limit(server):
    sent = []

    def endless(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Connection", "close")
        h.end_headers()
        for _ in range(10_000):  # 640 MB if nobody stopped it
            h.wfile.write(b"\x00" * 65536)
            sent.append(1)

    server.routes["/endless.png"] = endless
    start = time.monotonic()
    refused(server.url("/endless.png"), local(max_bytes=1_000_000),
            "too large: over 1")
    assert time.monotonic() - start < 3
    # Absence is the point (the sender stays stuck): no event to wait for, so time is used.
    time.sleep(0.3)
    stopped = len(sent)
    time.sleep(0.3)
    # The server is cut off (a write fails) once the socket buffers (a few MB) are full.
    assert len(sent) == stopped < 1000


def test_body_longer_than_announced_is_cut_at_the_announced_length(server):
    # http.client reads what Content-Length says and no more; the rest is never read.
    server.routes["/lie.png"] = send(PNG + b"\x00" * 100_000, length=len(PNG))
    assert fetch_image(server.url("/lie.png"), local(max_bytes=50_000), param=PARAM) == PNG


def test_chunked_body_is_capped_too(server):
    def chunked(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for _ in range(100):
            h.wfile.write(b"%x\r\n%s\r\n" % (10_000, b"\x00" * 10_000))
        h.wfile.write(b"0\r\n\r\n")

    server.routes["/chunked.png"] = chunked
    refused(server.url("/chunked.png"), local(max_bytes=50_000), "too large")


def drip(where: str):
    def route(h):
        sock = h.connection
        if where == "headers":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Slow: "
            sock.sendall(head)
            for _ in range(40):
                sock.sendall(b"a")
                time.sleep(0.5)
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(40):
            sock.sendall(b"\x89")
            time.sleep(0.5)
    return route


@pytest.mark.parametrize("where", ["body", "headers"])
def test_slow_drip_server_is_cut_off_at_the_timeout(server, where):
    server.routes["/slow.png"] = drip(where)
    start = time.monotonic()
    refused(server.url("/slow.png"), local(timeout=1.5), "did not answer within 1.5 s (timeout)")
    elapsed = time.monotonic() - start
    assert elapsed >= 1.4, f"gave up early: {elapsed:.2f} s"
    assert elapsed < 2.0, f"the drip held the request past its timeout: {elapsed:.2f} s"


def test_silent_server_times_out(server):
    server.routes["/silent.png"] = lambda h: time.sleep(5)
    start = time.monotonic()
    refused(server.url("/silent.png"), local(timeout=0.5), "(timeout)")
    assert time.monotonic() - start < 1.0


def test_slow_dns_times_out(monkeypatch):
    real = socket.getaddrinfo

    def slow(host, *a, **k):
        if host == "slow.example.com":
            time.sleep(3)
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    start = time.monotonic()
    refused("http://slow.example.com/a.png", RemotePolicy(hosts=("slow.example.com",), timeout=0.5),
            "could not be resolved within 0.5 s (timeout)")
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("status", [404, 500, 204, 206])
def test_status_other_than_200_is_refused(server, status):
    secret = b"<html>internal secret page</html>"
    server.routes["/x.png"] = send(secret, "text/html", status=status)
    err = refused(server.url("/x.png"), local(), f"answered HTTP {status}")
    assert "secret" not in err.message


def test_missing_route_is_a_404(server):
    refused(server.url("/nothing.png"), local(), "answered HTTP 404 Not Found")


@pytest.mark.parametrize("ctype, ok", [
    ("text/html; charset=utf-8", False),
    ("application/json", False),
    (None, False),
    ("image/png", True),
    ("IMAGE/JPEG; foo=bar", True),
    ("application/octet-stream", True),
])
def test_content_type_must_be_an_image(server, ctype, ok):
    server.routes["/x"] = send(PNG, ctype)
    if ok:
        assert fetch_image(server.url("/x"), local(), param=PARAM) == PNG
    else:
        err = refused(server.url("/x"), local(), "not an image")
        assert "IHDR" not in err.message


# --- prepared like uploads --------------------------------------------------------------

def test_a_remote_png_is_prepared_like_an_upload(server):
    server.routes["/a.png"] = send(PNG)
    img = ImageCache(1 << 20).decode(server.url("/a.png"), LIMITS, param=PARAM, remote=local())
    upload = prepare_image(PNG, LIMITS)
    assert (img.width, img.height, img.format, img.source_bytes) == (40, 20, "PNG", len(PNG))
    assert img.sha256 == upload.sha256 and img.rgb == upload.rgb


def test_an_exif_rotated_jpeg_is_turned_like_an_upload(server):
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    jpeg = buf.getvalue()
    server.routes["/photo.jpg"] = send(jpeg, "image/jpeg")
    img = ImageCache(1 << 20).decode(server.url("/photo.jpg"), LIMITS, remote=local())
    assert (img.width, img.height) == (20, 40)
    assert img.sha256 == prepare_image(jpeg, LIMITS).sha256


def test_image_limits_apply_to_remote_images(server):
    server.routes["/a.png"] = send(PNG)
    cache = ImageCache(1 << 20)
    small = ImageLimits(max_long_side=20, max_short_side=10)
    assert cache.decode(server.url("/a.png"), small, remote=local()).width == 20
    tight = ImageLimits(max_bytes=len(PNG) - 1)  # the smaller of the two caps wins
    with pytest.raises(ImageError, match="too large"):
        cache.decode(server.url("/a.png"), tight, param=PARAM, remote=local())
    server.routes["/text.png"] = send(b"hello", "image/png")
    with pytest.raises(ImageError, match="not a recognised image"):
        cache.decode(server.url("/text.png"), LIMITS, remote=local())


def test_remote_images_are_cached_briefly(server, monkeypatch):
    server.routes["/a.png"] = send(PNG)
    cache = ImageCache(1 << 20)
    url = server.url("/a.png")
    first = cache.decode(url, LIMITS, remote=local())
    assert cache.decode(url, LIMITS, remote=local()) is first
    assert len(server.requests) == 1
    monkeypatch.setattr(images, "REMOTE_TTL", 0.2)  # entries from now on live 0.2 s
    other = server.url("/a.png?v=2")
    cache.decode(other, LIMITS, remote=local())
    time.sleep(0.3)   # past the TTL: the expiry is the subject
    cache.decode(other, LIMITS, remote=local())
    assert len(server.requests) == 3  # expired: fetched again
    monkeypatch.setattr(images, "REMOTE_TTL", 0)  # 0 = never kept
    for _ in range(2):
        cache.decode(server.url("/a.png?v=3"), LIMITS, remote=local())
    assert len(server.requests) == 5


def test_failed_fetches_are_not_cached(server):
    cache = ImageCache(1 << 20)
    for _ in range(2):
        with pytest.raises(ImageError):
            cache.decode(server.url("/missing.png"), LIMITS, remote=local())
    assert len(server.requests) == 2 and len(cache) == 0


def test_decode_data_url_still_refuses_remote_urls():
    with pytest.raises(ImageError, match="--remote-image-host"):
        decode_data_url("https://example.com/a.png", LIMITS)


# --- through the app ----------------------------------------------------------------------

def test_chat_request_with_a_remote_image(server, make_app):
    server.routes["/a.png"] = send(PNG)
    app = make_app(remote_image_hosts=("127.0.0.1",), remote_images_allow_private=True)
    client = app.test_client()
    body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": server.url("/a.png")}},
        {"type": "text", "text": "what is this?"}]}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert len(server.requests) == 1
    off = make_app().test_client()
    resp = off.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400 and "--remote-image-host" in resp.get_json()["error"]["message"]
    assert len(server.requests) == 1


def test_non_ascii_paths_are_percent_encoded_and_surrogates_refused(server):
    server.routes["/b%C3%BCcher.png"] = send(PNG)
    assert fetch_image(server.url("/bücher.png"), local(), param=PARAM) == PNG
    refused(server.url("/\ud800.png"), local(), "path is not valid text")
    with pytest.raises(ImageError, match="not a data: URL"):
        ImageCache(1 << 20).decode("\ud800", LIMITS, remote=local())
