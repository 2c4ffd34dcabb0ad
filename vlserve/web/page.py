"""The chat page (webui/: plain HTML, CSS and JS, no build step) at / and /chat.html.

The page talks only to this server's own API, so it is served with a strict Content Security
Policy: no inline scripts or styles, no third-party origins; images only from the page
itself, data: and blob: URLs (uploads and their thumbnails).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, send_from_directory

bp = Blueprint("webui", __name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; "
       "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def find_webui(configured: str | None) -> Path | None:
    """The page's folder: as configured, else the checkout's webui/, else ./webui."""
    candidates = [Path(configured)] if configured else [
        Path(__file__).resolve().parent.parent / "webui", Path.cwd() / "webui"]
    return next((p for p in candidates if (p / "index.html").is_file()), None)


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
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Referrer-Policy"] = "no-referrer"
    return response
