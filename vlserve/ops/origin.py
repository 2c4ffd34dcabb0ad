"""What a web page may make a browser do here: the guard against cross-site requests.

With no key set (the default), the API is open to whatever can reach the port, and a
browser can reach a loopback port for any page it shows. Three checks, run before keys and
limits so that a refused request spends nothing and changes nothing:

1. **Host** (DNS rebinding). Bound to loopback (the default), the server answers only
   requests that name it by a loopback name: `localhost`, `*.localhost`, a loopback IP
   (`127.0.0.1`, `[::1]`), any port, or a name given with `--allowed-host`. A page on
   `http://evil.example:7860` whose name is re-pointed at 127.0.0.1 sends
   `Host: evil.example:7860`, and is refused. Bound to another address, every Host is
   accepted (as Ollama does) unless `--allowed-host` names some: then only those, loopback
   names and IP literals (an IP literal cannot be rebound). `--allowed-host '*'` turns the
   check off.
2. **Origin** (cross-site requests). An API request (`/v1/…`, `/admin/…`, `/metrics`) that
   carries an `Origin` is refused unless that is this server's own origin (the host and
   port of its `Host` header: the page served here, also behind a proxy that keeps `Host`)
   or a `--cors-origin`. `Origin: null` (sandboxed frames, local files) is refused. With no
   Origin, `Sec-Fetch-Site: cross-site` or `same-site` (what browsers send on a link or an
   `<img>` from another page) is refused too; requests without either header (curl, the
   `openai` SDK, other servers) pass. `/health`, `/openapi.json`, the page and its files
   are not checked: they change nothing and, without CORS headers, another site's page
   cannot read them.
3. **JSON bodies only** (forms). A POST to the API whose body is not `application/json`
   (or `application/*+json`, which no browser sends cross-site without a preflight), or
   has a body and no Content-Type, is answered 415: an HTML form or a `text/plain` fetch
   can no longer pass for an API call. A POST without a body (`curl -X POST
   …/admin/models/unload`) needs no Content-Type.

Refusals are OpenAI-shaped errors; 403 for Host as for Origin (as Ollama answers a
foreign Host: 421 Misdirected Request lets clients retry on another connection). Logs get
what was refused (`refused=host_not_allowed`), never header values or content.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from flask import Flask, current_app, g, request

from ..config import Settings
from .cors import API_PREFIXES, ORIGIN_SHAPE
from ..errors import APIError, UnsupportedMediaTypeError
from ..chat.remote import is_ip, normalize_host, normalize_pattern   # the same host syntax

GUARDED_PATHS = {"/metrics"}   # besides API_PREFIXES: a GET that tells more than /health
DEFAULT_PORTS = {"http": 80, "https": 443}
FOREIGN_FETCH_SITES = {"cross-site", "same-site"}


class OriginNotAllowedError(APIError):
    status = 403
    type = "permission_error"
    code = "origin_not_allowed"


class HostNotAllowedError(APIError):
    status = 403
    type = "permission_error"
    code = "host_not_allowed"


def is_loopback_bind(host: str) -> bool:
    """`--host` is a loopback address (127.0.0.1, ::1, localhost): only this machine
    connects, so only its browsers — and the pages they show — can reach the server."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header (or an origin's authority) -> (normalised name, port or None); None
    when it is not a host name or IP literal with an optional port."""
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.path or parts.query:
        return None
    name = normalize_host(parts.hostname)
    return (name, port) if name else None


def _loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class HostPolicy:
    """Which Host headers are answered (`active` False: every one is)."""

    def __init__(self, bind: str, allowed: tuple[str, ...] = ()):
        entries = [e.strip() for e in allowed if e.strip()]
        self.any = "*" in entries
        self.patterns = tuple(normalize_pattern(e, what="allowed host")
                              for e in entries if e != "*")
        self.loopback = is_loopback_bind(bind)
        # A LAN bind with no --allowed-host answers any Host (Ollama's default).
        self.active = not self.any and (self.loopback or bool(self.patterns))

    def allows(self, header: str | None) -> bool:
        if not self.active or header is None:   # no Host: HTTP/1.0, never a browser
            return True
        parsed = split_host(header)
        if parsed is None:
            return False
        name = parsed[0]
        if _loopback_name(name) or (not self.loopback and is_ip(name)):
            return True
        return any(name == p or (p.startswith("*.") and not is_ip(name)
                                 and name.endswith(p[1:])) for p in self.patterns)


def own_origin(origin: str, host: str | None) -> bool:
    """`origin` names this server as the request reached it: the host and port of the Host
    header (a missing port is the origin scheme's default, as behind a proxy on 443)."""
    if host is None or not ORIGIN_SHAPE.fullmatch(origin.lower()):
        return False
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return False
    mine, theirs = split_host(host), split_host(parts.netloc)
    if mine is None or theirs is None:
        return False
    default = DEFAULT_PORTS[scheme]
    return mine[0] == theirs[0] and (mine[1] or default) == (port or default)


def guarded(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in GUARDED_PATHS


def origin_refusal() -> APIError | None:
    """Why this API request is a foreign page's, or None."""
    origin = request.headers.get("Origin")
    if origin is not None:
        cors = current_app.extensions["vlserve"].get("cors")   # cors.Origins, when on
        if (own_origin(origin, request.headers.get("Host"))
                or (cors is not None and cors.allows(origin))):
            return None
        what = ("an opaque origin ('null': a sandboxed frame or a local file)"
                if origin == "null" else f"the web origin {origin!r}")
        return OriginNotAllowedError(
            f"refused a browser request from {what}: only this server's own page may call "
            "the API from a browser (the operator can allow a site with --cors-origin)")
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site in FOREIGN_FETCH_SITES:
        return OriginNotAllowedError(
            f"refused a browser request made by a page of another site (Sec-Fetch-Site: "
            f"{site}): only this server's own page may call the API from a browser")
    return None


def is_json(mimetype: str) -> bool:
    """application/json or application/*+json (Werkzeug's `is_json`): types no browser
    sends to another origin without a preflight."""
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json"))


def body_refusal() -> APIError | None:
    """Why this POST's body is not one the API reads, or None."""
    mimetype = request.mimetype   # lower case, parameters (charset…) removed
    if is_json(mimetype):
        return None
    has_body = bool(request.content_length) or "Transfer-Encoding" in request.headers
    if not mimetype and not has_body:
        return None   # `curl -X POST …/unload`: nothing to parse, nothing a form sends
    return UnsupportedMediaTypeError(
        "the request body must be JSON, sent with 'Content-Type: application/json' "
        + (f"(this one is {request.content_type!r})" if mimetype else "(none was sent)"))


def host_refusal(hosts: HostPolicy) -> APIError | None:
    header = request.headers.get("Host")
    if hosts.allows(header):
        return None
    return HostNotAllowedError(
        f"this server does not answer requests for the host {header!r}"
        + (": it listens on loopback, so requests must name it localhost, 127.0.0.1 or "
           "[::1]" if hosts.loopback else "")
        + " (a guard against DNS rebinding; the operator can add a name with "
          "--allowed-host)")


def init_app(app: Flask, settings: Settings) -> None:
    """Register the guard; create_app calls it before auth and limits so that a refused
    request is refused first. Once per app: a second call is a no-op."""
    state = app.extensions["vlserve"]
    if "origin_guard" in state:
        return
    hosts = state["origin_guard"] = HostPolicy(settings.host, settings.allowed_hosts)

    @app.before_request
    def guard_browser_requests():
        refusal = host_refusal(hosts)
        if refusal is None and request.method != "OPTIONS":   # cors.py owns preflights
            if guarded(request.path):
                refusal = origin_refusal()
            if (refusal is None and request.method == "POST" and request.endpoint
                    and request.path.startswith(API_PREFIXES)):
                refusal = body_refusal()
        if refusal is not None:
            g.log["refused"] = refusal.code   # what was refused, never the header's value
            raise refusal
