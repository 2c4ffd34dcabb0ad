"""`create_app(settings, engine=None)`: the Flask application factory.

Owns what is shared by every route: the worker, error mapping (by exception type, once),
and the one-line-per-request log (sizes and counts only, never content).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from ..library import catalog
from ..config import Settings
from ..chat.images import ImageCache
from ..library.disk import Library, LocalModel
from ..ops.respcache import ResponseCache
from .lifecycle import error_response, finish_request
from ..errors import (APIError, InternalError, InvalidRequestError, MethodNotAllowedError,
                     NotFoundError, PayloadTooLargeError, UnsupportedMediaTypeError)
from ..engine.worker import Worker

log = logging.getLogger("vlserve.access")

HTTP_ERRORS = {404: NotFoundError, 405: MethodNotAllowedError, 413: PayloadTooLargeError,
               415: UnsupportedMediaTypeError}


def create_app(settings: Settings, engine=None, *, start: bool = True) -> Flask:
    """Build the app. With `engine` given (tests), it is served as is; otherwise the worker
    loads the model from `settings` on its own thread so /health answers meanwhile."""
    from . import admin, api, openapi, page as webui
    from ..ops import audit, auth, cors, limits, metrics, origin
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    library = make_library(settings)
    load = _loader(settings, library) if engine is None else lambda *_: engine
    worker = Worker(load, queue_size=settings.queue_size,
                    request_timeout=settings.request_timeout, warmup=settings.warmup,
                    model=settings.model_id, keep_alive=settings.keep_alive)
    app.extensions["vlserve"] = {
        "settings": settings, "worker": worker, "library": library,
        "images": ImageCache(settings.decoded_image_cache_mb * 1024 * 1024),
        "remote": settings.remote_policy,   # built once: host patterns normalized at start
        "webui": webui.find_webui(settings.webui_dir),
        "observers": [],   # callables(record) told of every finished request
        "responses": (ResponseCache(settings.response_cache_dir, settings.response_cache_mb)
                      if settings.response_cache_dir else None),
        "gateway": make_gateway(settings)}
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(webui.bp)
    app.register_blueprint(openapi.bp)
    _register_logging(app)   # first: the auth check below already logs the key's name
    origin.init_app(app, settings)   # before auth and limits: a foreign page spends nothing
    auth.init_app(app, auth.load_keys(settings.api_keys, settings.api_key_file))
    limits.init_app(app, settings)
    cors.init_app(app, settings)
    metrics.init_app(app, settings)
    audit.init_app(app, settings)
    _register_errors(app)
    if not settings.local:
        worker.without_model(GATEWAY_ONLY)
    if start:
        if settings.local:
            worker.start()
        if app.extensions["vlserve"]["gateway"] is not None:
            app.extensions["vlserve"]["gateway"].pool.start()
    return app


GATEWAY_ONLY = ("no local model: this server forwards to its upstreams (start it with "
                "--model to also serve a model here)")


def make_gateway(settings: Settings):
    """The upstream pool and the forwarder, when --upstream is given."""
    if not settings.upstreams:
        return None
    from ..gateway.forward import Gateway
    from ..gateway.upstream import Pool
    pool = Pool(settings.upstreams, interval=settings.upstream_check_interval,
                connect_timeout=settings.upstream_connect_timeout)
    return Gateway(pool, request_timeout=settings.request_timeout, limits=settings.images)


def make_library(settings: Settings) -> Library:
    """The started model (pinned, under its alias) plus whatever the models directory holds."""
    models_dir = Path(settings.models_dir)
    try:
        known = catalog.load(models_dir)
    except catalog.CatalogError as exc:
        log.warning("ignoring the user catalog: %s", exc)
        known = catalog.load(None)
    pinned = None
    if settings.model and settings.mmproj:
        pinned = LocalModel(settings.model_id, Path(settings.model), Path(settings.mmproj),
                            entry=None)
    return Library(models_dir, known, pinned, settings.quant)


def _loader(settings: Settings, library: Library):
    """load(model id, progress) -> a LlamaEngine for that model, with the server's settings
    and the context length its catalog entry suggests unless --ctx-size was given."""
    from ..engine.llama import EngineLoadError, LlamaEngine

    def load(model_id: str | None, progress):
        model = library.get(model_id) if model_id else library.pinned
        if model is None:
            raise EngineLoadError(f"model {model_id!r} is not in {library.models_dir}")
        n_ctx = settings.n_ctx
        if n_ctx is None and model.entry:
            n_ctx = model.entry.ctx   # the catalog's suggestion; else config.DEFAULT_CTX
        return LlamaEngine(settings.replace(model=str(model.model), mmproj=str(model.mmproj),
                                            model_alias=model.id, n_ctx=n_ctx), progress)
    return load


def _register_errors(app: Flask) -> None:
    @app.errorhandler(APIError)
    def on_api_error(exc: APIError):
        g.error_code = exc.code
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException):
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            return on_api_error(PayloadTooLargeError(
                f"the request body is larger than the {limit} byte limit"))
        kind = HTTP_ERRORS.get(exc.code, InvalidRequestError)
        err = kind(f"{exc.name}: {request.method} {request.path}" if exc.code in (404, 405)
                   else f"{exc.name}: {exc.description}")
        err.status = exc.code or 400
        return on_api_error(err)

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return on_api_error(InternalError(f"internal error ({type(exc).__name__})"))


def _register_logging(app: Flask) -> None:
    @app.before_request
    def start_timer():
        g.t0 = time.monotonic()
        g.log = {}          # counts and sizes for the log line
        g.record = {}       # the same and more for observers (audit log, metrics)
        g.on_finish = []    # callbacks run once the response is complete (limits' slots)

    @app.after_request
    def log_request(response: Response):
        # Streams finish themselves when they end: only then are the token counts known.
        if not getattr(g, "stream_logs_itself", False):
            finish_request(response.status_code)
        return response
