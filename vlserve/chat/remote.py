"""Remote image URLs: off by default; on, only from an allowlist of hosts, safe against SSRF.

A client can make the server fetch an `http(s)://` image only when the operator listed its
host (`--remote-image-host`). Even then the fetch must not reach the inside of the network
the server sits in, so:

- the URL is parsed once here (no `user@host` forms, no odd host characters), its host
  normalised (lower case, IDNA, no trailing dot) and matched against the allowlist;
- the host is resolved here, once, and refused if ANY address is loopback, private,
  link-local (cloud metadata at 169.254.169.254), shared (100.64/10), multicast, reserved
  or unspecified, IPv4 in IPv6 forms included (unless `allow_private`);
- the connection goes to that vetted address, never to the name again, so DNS cannot
  answer differently between the check and the connect (rebinding); the `Host:` header,
  TLS SNI and certificate check use the name;
- redirects are followed only to the same host (http -> https allowed, never back), each
  hop checked again, at most `MAX_REDIRECTS`;
- one deadline covers the whole fetch (resolve, connect, TLS, headers, body, redirects): a
  watchdog shuts the socket when it passes, so a server dripping a byte at a time cannot
  hold a request thread; the body is capped at `max_bytes`.

Every refusal is an `ImageError` (400) naming the reason and the host; never the body.
"""

from __future__ import annotations

import _socket
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from ..errors import ImageError

log = logging.getLogger("vlserve.remote")

MAX_REDIRECTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_HOST_LABELS = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
# RFC 6052 NAT64 prefix: the last 32 bits are an IPv4 address, vetted as such.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class RemotePolicy:
    hosts: tuple[str, ...] = ()      # allowlist: "img.example.com", "*.example.com" (subdomains,
                                     # not the apex), or an IP literal; () = remote images off
    allow_private: bool = False      # allow loopback/private/link-local addresses (a LAN camera)
    timeout: float = 10.0            # seconds for the whole fetch, redirects included
    max_bytes: int = 20 * 1024 * 1024  # = ImageLimits.max_bytes (the cache passes the smaller)
    https_only: bool = False
    ca_file: str | None = None       # CA bundle for https (None: the system's trust store)

    def __post_init__(self):
        if isinstance(self.hosts, str):
            raise TypeError("RemotePolicy.hosts is a tuple of host names, not a string")
        object.__setattr__(self, "hosts", tuple(normalize_pattern(h) for h in self.hosts))
        if not self.timeout > 0:
            raise ValueError("RemotePolicy.timeout must be > 0")

    @property
    def enabled(self) -> bool:
        return bool(self.hosts)

    def allows(self, host: str) -> bool:
        """`host` is already normalised (see `normalize_host`)."""
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if not is_ip(host) and host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False


def normalize_pattern(entry: str, what: str = "remote image host") -> str:
    """An allowlist entry (`what`: for messages) in canonical form; ValueError says what
    is wrong with it."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"empty {what}")
    text = entry.strip()
    if "://" in text or "/" in text or "@" in text:
        raise ValueError(f"{what} {text!r}: give a host name, not a URL")
    if text.startswith("*."):
        rest = normalize_host(text[2:])
        if rest is None or is_ip(rest):
            raise ValueError(f"{what} pattern {text!r} is not '*.' and a domain")
        return "*." + rest
    if "*" in text:
        raise ValueError(f"{what} {text!r}: '*' is only allowed as a leading '*.'")
    host = normalize_host(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    if host is None:
        raise ValueError(f"{what} {text!r} is not a valid host name or IP address")
    return host


def normalize_host(host: str) -> str | None:
    """Lower case, IDNA (punycode), no trailing dot; canonical text for IP literals; None if
    it is neither a plausible DNS name nor an IP address."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    host = host.strip().rstrip(".").lower()
    if not host:
        return None
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            return None
    if not _HOST_LABELS.fullmatch(host) or len(host) > 253:
        return None
    return host


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Anything that is not a plain public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and _forbidden(embedded):
            return True
        if ip.ipv4_mapped is not None:
            return False  # ::ffff:0:0/96 itself counts as private; the IPv4 inside decided
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or not ip.is_global
            or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED))


_SHARED = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str      # normalised
    port: int
    path: str      # path and query, as sent


def _parse(url: str, policy: RemotePolicy, param: str | None) -> _Target:
    def refuse(why: str):
        raise ImageError(why, param=param)

    url = url.strip()
    if "\\" in url or any(ord(c) < 0x21 or c == "\x7f" for c in url):
        refuse("remote image URL contains characters that are not allowed (space, control, '\\')")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        refuse("remote image URL is malformed (bad host or port)")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        refuse(f"remote image URL scheme '{scheme[:16]}:' is not supported (http and https only)")
    if scheme == "http" and policy.https_only:
        refuse("remote image URLs must use https on this server")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        refuse("remote image URLs with user info ('user@host') are refused")
    raw_host = parts.hostname or ""
    host = normalize_host(raw_host)
    if host is None:
        refuse("remote image URL has no valid host")
    if not policy.allows(host):
        refuse(f"remote image host '{host[:100]}' is not allowed on this server "
               "(the operator lists allowed hosts with --remote-image-host)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:  # non-ASCII in the path is sent percent-encoded (UTF-8), as browsers do
        path = quote(path, safe="/?#[]@!$&'()*+,;=:%~-._")
    except UnicodeError:
        refuse("remote image URL path is not valid text")
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)


class _Watchdog:
    """Shuts the current socket down when the deadline passes, unblocking any read."""

    def __init__(self, timeout: float):
        self.deadline = time.monotonic() + timeout
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.fired and sock is not None:
                _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        # The plain socket call, on the file descriptor: for an SSLSocket its own shutdown()
        # would also drop the TLS object under the thread that is reading from it.
        _socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def fetch_image(url: str, policy: RemotePolicy, *, param: str | None) -> bytes:
    """The bytes of the image at `url`, fetched under `policy`; ImageError says why not."""
    if not isinstance(url, str):
        raise ImageError("image URL must be a string", param=param)
    if not policy.enabled:
        raise ImageError("remote image URLs are not fetched on this server", param=param)
    target = _parse(url, policy, param)
    first_host = target.host
    dog = _Watchdog(policy.timeout)
    try:
        for hop in range(MAX_REDIRECTS + 1):
            status, location, body = _fetch_once(target, policy, param, dog)
            if status not in _REDIRECTS:
                return body
            if not location:
                raise ImageError(f"remote image host '{target.host}' answered HTTP {status} "
                                 "without a Location", param=param)
            if hop == MAX_REDIRECTS:
                raise ImageError(f"remote image: too many redirects (more than {MAX_REDIRECTS}) "
                                 f"from host '{first_host}'", param=param)
            target = _redirect(target, location, policy, param)
        raise AssertionError("unreachable")
    finally:
        dog.cancel()


def _redirect(current: _Target, location: str, policy: RemotePolicy, param) -> _Target:
    base = f"{current.scheme}://{_netloc(current)}{current.path}"
    try:
        new_url = urljoin(base, location.strip())
    except ValueError:
        raise ImageError(f"remote image host '{current.host}' redirected to a malformed URL",
                         param=param) from None
    scheme = new_url.split(":", 1)[0].lower()
    if current.scheme == "https" and scheme != "https":
        raise ImageError(f"remote image host '{current.host}' redirected from https to "
                         f"{scheme[:16]}: refused", param=param)
    try:
        host = normalize_host(urlsplit(new_url).hostname or "")
    except ValueError:
        host = None
    if host != current.host:
        shown = f"'{host[:100]}'" if host else "a malformed URL"
        raise ImageError(f"remote image host '{current.host}' redirected to another host "
                         f"({shown}); only redirects on the same host are followed",
                         param=param)
    return _parse(new_url, policy, param)


def _netloc(t: _Target) -> str:
    host = f"[{t.host}]" if ":" in t.host else t.host
    default = 443 if t.scheme == "https" else 80
    return host if t.port == default else f"{host}:{t.port}"


def _fetch_once(t: _Target, policy: RemotePolicy, param, dog: _Watchdog
                ) -> tuple[int, str | None, bytes]:
    """One request: (status, Location, body). The body is read only for a 200."""
    def timed_out() -> ImageError:
        return ImageError(f"remote image host '{t.host}' did not answer within "
                          f"{policy.timeout:g} s (timeout)", param=param)

    addresses = _resolve(t, policy, param, dog)
    sock = None
    try:
        sock = _connect_any(t, addresses, param, dog)
        if t.scheme == "https":
            sock = _wrap_tls(sock, t, policy, param, dog)
        conn = http.client.HTTPConnection(t.host, t.port)
        conn.default_port = 443 if t.scheme == "https" else 80  # Host: leaves the default out
        conn.sock = sock  # connected (and TLS-verified) to the vetted address: no resolving
        conn.putrequest("GET", t.path, skip_accept_encoding=True)  # Host: from t.host/t.port
        conn.putheader("User-Agent", "vlserve")
        conn.putheader("Accept", "image/*")
        conn.putheader("Accept-Encoding", "identity")
        conn.putheader("Connection", "close")
        conn.endheaders()
        resp = conn.getresponse()
        if resp.status in _REDIRECTS:
            return resp.status, resp.getheader("Location"), b""
        if resp.status != 200:
            raise ImageError(f"remote image host '{t.host}' answered HTTP {resp.status} "
                             f"{_printable(resp.reason)}; an image needs 200", param=param)
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            shown = f"'{_printable(ctype)}'" if ctype else "none"
            raise ImageError(f"remote image from host '{t.host}' has content type {shown}, "
                             "not an image", param=param)
        return 200, None, _read_body(resp, t, policy, param, dog, timed_out)
    except ImageError:
        if dog.fired:
            raise timed_out() from None
        raise
    except TimeoutError:
        raise timed_out() from None
    except Exception as e:  # noqa: BLE001 - socket, TLS, http.client: one message, no traceback
        if dog.fired:
            raise timed_out() from None
        log.info("remote image fetch from %s failed: %r", t.host, e)
        if isinstance(e, ssl.SSLCertVerificationError):
            why = "its TLS certificate did not verify"
        elif isinstance(e, ssl.SSLError):
            why = "the TLS handshake failed"
        elif isinstance(e, http.client.HTTPException):
            why = "its answer was not valid HTTP or was cut short"
        else:
            why = "the connection failed"
        raise ImageError(f"remote image host '{t.host}' could not be fetched: {why}",
                         param=param) from None
    finally:
        dog.watch(None)
        if sock is not None:
            sock.close()


def _read_body(resp, t: _Target, policy: RemotePolicy, param, dog: _Watchdog, timed_out) -> bytes:
    def too_big(size: str) -> ImageError:
        return ImageError(f"remote image from host '{t.host}' is too large: {size} exceeds the "
                          f"limit of {policy.max_bytes} bytes", param=param)

    length = resp.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise too_big(f"{int(length)} bytes")  # before reading any of it
    chunks, size = [], 0
    while True:
        if dog.remaining() <= 0:
            raise timed_out()
        chunk = resp.read1(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > policy.max_bytes:
            raise too_big("more than the announced size" if length else f"over {size} bytes")
        chunks.append(chunk)
    if dog.fired:
        raise timed_out()
    return b"".join(chunks)


def _printable(text: str | None) -> str:
    return "".join(c for c in (text or "")[:60] if c.isprintable())


def _resolve(t: _Target, policy: RemotePolicy, param, dog: _Watchdog) -> list[tuple]:
    """Vetted (family, sockaddr) pairs for the target: every address or none."""
    if is_ip(t.host):
        ip = ipaddress.ip_address(t.host)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        infos = [(family, (t.host, t.port) if ip.version == 4 else (t.host, t.port, 0, 0))]
    else:
        infos = _getaddrinfo_within(t.host, t.port, dog.remaining(), param, policy)
    if not infos:
        raise ImageError(f"remote image host '{t.host}' could not be resolved", param=param)
    if not policy.allow_private:
        for _, sockaddr in infos:
            address = sockaddr[0].split("%", 1)[0]
            try:
                bad = _forbidden(ipaddress.ip_address(address))
            except ValueError:
                bad = True
            if bad:
                log.warning("remote image host %s resolves to %s: refused (private, loopback, "
                            "link-local or reserved)", t.host, address)
                raise ImageError(f"remote image host '{t.host}' resolves to a private, loopback, "
                                 "link-local or reserved address: refused", param=param)
    return infos


def _getaddrinfo_within(host: str, port: int, timeout: float, param, policy) -> list[tuple]:
    """socket.getaddrinfo in a helper thread, so a slow resolver also meets the deadline."""
    result: dict = {}

    def lookup():
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as e:  # noqa: BLE001 - gaierror, UnicodeError, ...
            result["error"] = e

    worker = threading.Thread(target=lookup, name="vlserve-resolve", daemon=True)
    worker.start()
    worker.join(max(0.0, timeout))
    if worker.is_alive():
        raise ImageError(f"remote image host '{host}' could not be resolved within "
                         f"{policy.timeout:g} s (timeout)", param=param)
    if "error" in result:
        raise ImageError(f"remote image host '{host}' could not be resolved", param=param)
    infos = []
    for family, _type, _proto, _canon, sockaddr in result["infos"]:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in infos:
            infos.append((family, sockaddr))
    return infos


def _connect(family: int, sockaddr: tuple, timeout: float) -> socket.socket:
    """A TCP connection to one vetted address (tests replace this to redirect the wire)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        return sock
    except BaseException:
        sock.close()
        raise


def _connect_any(t: _Target, infos: list[tuple], param, dog: _Watchdog) -> socket.socket:
    error: Exception | None = None
    for family, sockaddr in infos:
        remaining = dog.remaining()
        if remaining <= 0:
            break
        try:
            sock = _connect(family, sockaddr, remaining)
        except OSError as e:
            error = e
            continue
        dog.watch(sock)
        return sock
    if dog.fired or dog.remaining() <= 0 or isinstance(error, socket.timeout):
        raise TimeoutError()
    raise ImageError(f"remote image host '{t.host}' could not be reached (connection failed)",
                     param=param)


def _wrap_tls(sock: socket.socket, t: _Target, policy: RemotePolicy, param,
              dog: _Watchdog) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=policy.ca_file)  # CERT_REQUIRED + hostname check
    sock.settimeout(max(0.001, dog.remaining()))
    # server_hostname: SNI and the name the certificate must carry (an IP literal is checked
    # against the certificate's IP addresses and sends no SNI).
    tls = context.wrap_socket(sock, server_hostname=t.host, do_handshake_on_connect=False)
    dog.watch(tls)  # before the handshake, so a server that stalls it is cut off too
    tls.do_handshake()
    return tls
