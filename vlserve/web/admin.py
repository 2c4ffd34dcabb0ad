"""Model administration: load another model, unload, and follow loading progress.

Loading happens on the engine thread (worker.py), after the requests already queued; the
HTTP side only asks and waits. Progress and state changes reach the page over SSE.
"""

from __future__ import annotations

import queue

from flask import Blueprint, Response, current_app, jsonify, stream_with_context

from .lifecycle import json_body, sse_data
from ..errors import InvalidRequestError, NotFoundError, TimeoutError_
from ..engine.worker import Worker

bp = Blueprint("admin", __name__, url_prefix="/admin")

KEEPALIVE_SECONDS = 1.0


def _worker() -> Worker:
    return current_app.extensions["vlserve"]["worker"]


def _body() -> dict:
    return json_body(must_be_object=True)


def _check_local(name: str | None) -> None:
    """Loading and unloading are about the model in this process: a pure gateway has none,
    and an upstream's models are loaded by the upstream."""
    state = current_app.extensions["vlserve"]
    if not state["settings"].local:
        raise InvalidRequestError("this server is a gateway without a local model: nothing "
                                  "to load or unload here (upstreams manage their own models)",
                                  code="no_local_model")
    gateway = state.get("gateway")
    if (name and gateway is not None and gateway.pool.replicas(name)
            and state["library"].get(name) is None):
        owners = ", ".join(u.name for u in gateway.pool.replicas(name))
        raise InvalidRequestError(f"model {name!r} is served by upstream {owners}: it is not "
                                  "loaded here; requests naming it are forwarded",
                                  param="model", code="upstream_model")


@bp.post("/models/load")
def load_model():
    """{"model": ID, "wait": true}: 200 when loaded (or already), 202 when not waiting, the
    load's error (with the previous model serving again) when it failed."""
    body = _body()
    name, wait = body.get("model"), body.get("wait", True)
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("'model' must be the id of a model on this server",
                                  param="model")
    _check_local(name)
    library = current_app.extensions["vlserve"]["library"]
    model = library.get(name)
    if model is None:
        ids = ", ".join(m.id for m in library.models()) or "none"
        raise NotFoundError(f"model {name!r} is not on this server (it has: {ids}); "
                            "`vlserve pull` downloads catalog models", param="model",
                            code="model_not_found")
    worker = _worker()
    worker.check_accepting()
    switch = worker.switch(model.id)
    if not wait:
        return jsonify({"model": model.id, "status": "queued"}), 202
    if not switch.done.wait(worker.request_timeout):
        raise TimeoutError_(f"loading {model.id} is taking longer than "
                            f"{worker.request_timeout:g}s; follow /admin/models/events")
    if switch.error is not None:
        raise switch.error
    return jsonify({"model": model.id, "status": worker.state,
                    "load_seconds": worker.load_seconds})


@bp.post("/models/unload")
def unload_model():
    """Free the model's memory now; the next chat request loads it again."""
    _check_local(None)
    worker = _worker()
    worker.check_accepting()
    switch = worker.unload()
    switch.done.wait(worker.request_timeout)
    return jsonify({"model": worker.model, "status": worker.state})


@bp.get("/models/events")
def model_events():
    """SSE: the current state first, then every state change and loading progress."""
    worker = _worker()
    events = worker.events.subscribe()

    def stream():
        try:
            yield sse_data({"type": "state", "state": worker.state, "reason": worker.reason,
                         "model": worker.model})
            while True:
                try:
                    yield sse_data(events.get(timeout=KEEPALIVE_SECONDS))
                except queue.Empty:
                    yield ": keep-alive\n\n"   # also how a closed connection is noticed
        finally:
            worker.events.unsubscribe(events)

    return Response(stream_with_context(stream()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
