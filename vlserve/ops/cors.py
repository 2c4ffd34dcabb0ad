"""CORS: off unless `--cors-origin` names the browser origins whose pages may call the API.

Off, no response carries an Access-Control-* header, so browsers keep other sites' pages
from calling the API with custom headers or reading its answers (the chat page is
same-origin and needs none). On, an allowed origin's preflight is approved and its
responses are readable, errors and streams included, so its page can show the
OpenAI-shaped error and honour Retry-After.

A request from an origin not allowed here (other than the server's own) is refused before
it runs, by origin.py; this module decides what an allowed origin's page may send and read.

Origins match exactly, scheme://host[:port] as browsers send them. A literal "*" entry
allows every origin: discouraged, since any page a user happens to open may then use the
server from their browser and read the answers (with no key set, that is any page at all
using an intranet server). Access-Control-Allow-Credentials is never sent, "*" or not:
keys travel in headers a page sets itself, never in cookies a browser adds on its own.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, request

from ..config import Settings
from ..errors import APIError

log = logging.getLogger("vlserve")

API_PREFIXES = ("/v1/", "/admin/")
API_PATHS = {"/health", "/metrics"}
ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
BASE_HEADERS = ("Authorization", "Content-Type", "x-api-key")
# What the openai JS SDK and fetch wrappers add besides: metadata the server ignores.
# Anything else asked for (X-Forwarded-For, say, which a proxy might trust) is left out
# of the answer, and the browser then refuses to send it.
SAFE_HEADER = re.compile(r"x-stainless-[a-z0-9-]{1,64}|openai-(organization|project|beta)"
                         r"|accept|accept-language|content-language|x-requested-with")
EXPOSE_HEADERS = "Retry-After, X-Context-Dropped"
MAX_AGE = 600   # seconds a browser may reuse a preflight's answer
ORIGIN_SHAPE = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")


class CORSOriginError(APIError):
    status = 403
    type = "permission_error"
    code = "cors_origin_not_allowed"


class Origins:
    """The allowlist: exact origins, or anything when it holds "*"."""

    def __init__(self, entries: tuple[str, ...]):
        cleaned = {e.strip().rstrip("/").lower() for e in entries if e.strip()}
        self.any = "*" in cleaned
        self.exact = frozenset(cleaned - {"*"})
        if self.any:
            log.warning("CORS allows every origin (--cors-origin '*'): any web page a user "
                        "opens can call this server from their browser; list origins instead")
        for entry in sorted(self.exact):
            if not ORIGIN_SHAPE.fullmatch(entry):
                log.warning("CORS origin %r never matches: an origin is scheme://host[:port] "
                            "with no path", entry)

    def allows(self, origin: str | None) -> bool:
        """`null` (a sandboxed frame, a local file) never matches, not even "*"."""
        if not origin or origin == "null":
            return False
        return self.any or origin.lower() in self.exact


def in_scope(path: str) -> bool:
    """The API's paths; the page and its files are same-origin and never need CORS."""
    return path.startswith(API_PREFIXES) or path in API_PATHS


def allowed_headers(requested: str) -> list[str]:
    """The base headers plus those of `requested` (a preflight's comma-separated
    Access-Control-Request-Headers) that are safe to let a page send."""
    allowed = list(BASE_HEADERS)
    seen = {h.lower() for h in allowed}
    for name in (h.strip().lower() for h in requested.split(",")):
        if name and name not in seen and SAFE_HEADER.fullmatch(name):
            allowed.append(name)
            seen.add(name)
    return allowed


def _preflight(origins: Origins) -> Response:
    origin = request.headers["Origin"]
    if not origins.allows(origin):
        raise CORSOriginError(f"the origin {origin!r} may not call this server from a "
                              "browser; the operator can allow it with --cors-origin")
    response = Response(status=204)
    response.headers.update({
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": ", ".join(
            allowed_headers(request.headers.get("Access-Control-Request-Headers", ""))),
        "Access-Control-Max-Age": str(MAX_AGE)})
    # The answer depends on what was asked, so caches must keep one per question.
    response.vary.update(("Access-Control-Request-Method", "Access-Control-Request-Headers"))
    return response


def init_app(app: Flask, settings: Settings) -> None:
    """Answer preflights and mark responses readable for `settings.cors_origins`; with
    none, do nothing at all. Once per app: a second call is a no-op."""
    if not settings.cors_origins:
        return
    state = app.extensions["vlserve"]
    if "cors" in state:
        return
    origins = state["cors"] = Origins(settings.cors_origins)

    @app.before_request
    def answer_preflight():
        # Auth lets OPTIONS through (a browser never sends a key with a preflight), and
        # limits count only POSTs, so a preflight gets here whatever hooks came before.
        if (request.method == "OPTIONS" and in_scope(request.path)
                and "Origin" in request.headers
                and "Access-Control-Request-Method" in request.headers):
            return _preflight(origins)

    @app.after_request
    def allow_reading(response: Response) -> Response:
        # Runs for errors too (401, 429, …): a page must be able to read why it failed.
        if not in_scope(request.path):
            return response
        # Vary on every API response, allowed or not: a cache must not hand one origin's
        # answer to another.
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origins.allows(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response
