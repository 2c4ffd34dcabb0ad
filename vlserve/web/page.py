"""The chat page at / and /chat.html: plain HTML, CSS and JS with no build step, shipped
inside the package (vlserve/webui/, package data; the checkout's top-level webui/ is a link to
it) so that an installed vlserve serves it with no checkout beside it.

The page talks only to this server's own API, so it is served with a strict Content Security
Policy: no inline scripts or styles, no third-party origins; images only from the page
itself, data: and blob: URLs (uploads and their thumbnails).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flask import Blueprint, Response, current_app, send_from_directory

bp = Blueprint("webui", __name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; "
       "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# /docs: Swagger UI sets style attributes from its scripts (its layout and folding), so that
# page allows inline styles; scripts stay 'self' only, and it reaches no other origin.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def find_webui(configured: str | None) -> Path | None:
    """The page's folder: --webui-dir when given, else the package's own; None without an
    index.html there. (pip installs packages as plain folders, so the package's resources
    are files Flask can send.)"""
    folder = Path(configured) if configured else Path(str(resources.files("vlserve") / "webui"))
    return folder if (folder / "index.html").is_file() else None


def _folder() -> Path:
    folder = current_app.extensions["vlserve"]["webui"]
    if folder is None:
        from ..errors import NotFoundError
        raise NotFoundError("the chat page is not installed here (no webui/index.html); "
                            "the API is at /v1")
    return folder


@bp.get("/")
@bp.get("/chat.html")
def page() -> Response:
    response = send_from_directory(_folder(), "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/docs")
def docs() -> Response:
    """The OpenAPI document rendered (vendored Swagger UI): works with no network."""
    response = send_from_directory(_folder(), "docs.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@bp.get("/static/<path:name>")
def static(name: str) -> Response:
    # Revalidated each load (ETag): a restarted server with a newer page is picked up.
    response = send_from_directory(_folder(), name, max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.after_app_request
def security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["Referrer-Policy"] = "no-referrer"
    return response
