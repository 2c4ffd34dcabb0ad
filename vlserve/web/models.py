"""/health and /v1/models: what this server is and serves (local models, upstream ones)."""

from __future__ import annotations

from flask import jsonify

from . import state
from ..errors import NotFoundError
from ..gateway.upstream import LOCAL
from ..library.disk import LocalModel


def health():
    if not state.get()["settings"].local:
        return _gateway_health()
    worker = state.worker()
    body = {"status": "ok" if worker.state == "ready" else worker.state,
            "model": state.model_id(), "queue_depth": worker.depth, "busy": worker.busy,
            "served": dict(worker.stats), "prefills": worker.prefills.counts()}
    view = worker.engine_view()
    body.update(_upstream_health())
    if view is not None:
        body.update(warmup_seconds=worker.warmup_seconds, **view["info"], cache=view["cache"])
        return jsonify(body)
    if worker.state == "ready":   # ready, yet no lease: it is being freed for a switch
        body.update(status="loading", reason="switching models")
    else:
        body["reason"] = worker.reason
    if worker.state == "unloaded":   # idle: healthy, the next request loads the model
        return jsonify(body)
    response = jsonify(body)
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def _upstream_health() -> dict:
    gateway = state.get().get("gateway")
    if gateway is None:
        return {}
    return {"upstreams": {u.name: u.status() for u in gateway.pool.upstreams}}


def _gateway_health():
    """No local model: healthy while at least one upstream answers."""
    pool = state.get()["gateway"].pool
    up = [u for u in pool.upstreams if u.up]
    body = {"status": "ok" if up else "unavailable", "model": pool.default_model(),
            "backend": "gateway", **_upstream_health()}
    if up:
        return jsonify(body)
    body["reason"] = "no upstream server answers"
    response = jsonify(body)
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def _model_card(model: LocalModel) -> dict:
    worker = state.worker()
    loaded = model.id == worker.model
    card = {"id": model.id, "object": "model", "created": _mtime(model.model),
            "owned_by": "vlserve", "backend": LOCAL,
            "capabilities": {"vision": True, "completion": True, "thinking": model.thinking},
            "loaded": loaded, "status": worker.state if loaded else "available",
            "files": {"model": model.model.name, "mmproj": model.mmproj.name},
            "size_bytes": _size(model)}
    if model.entry is not None:
        card["catalog"] = model.entry.id
    view = worker.engine_view() if loaded else None
    if view is not None:
        card["meta"] = view["info"]
        # what the loaded template does beats what the file name suggests
        card["capabilities"]["thinking"] = bool(view["info"].get("thinking", model.thinking))
        card["capabilities"]["tools"] = bool(view["info"].get("tools"))
    return card


def _mtime(path) -> int:
    try:
        return int(path.stat().st_mtime)
    except OSError:
        return 0


def _size(model: LocalModel) -> int | None:
    try:
        return model.size_bytes
    except OSError:
        return None


def _local_models() -> list[LocalModel]:
    return state.library().models() if state.get()["settings"].local else []


def _upstream_cards(skip: set[str]) -> dict[str, dict]:
    """Model id -> card for every upstream model (a local model of the same id wins): the
    upstream's own card (vLLM's max_model_len…) plus which upstreams serve it."""
    gateway = state.get().get("gateway")
    if gateway is None:
        return {}
    cards = {}
    for model, replicas in gateway.pool.models().items():
        if model in skip:
            continue
        up, card = any(u.up for u in replicas), replicas[0].cards[model]
        created = card.get("created")
        cards[model] = {**card, "id": model, "object": "model",
                        "created": created if isinstance(created, int) else 0,
                        "owned_by": str(card.get("owned_by") or replicas[0].name),
                        "backend": replicas[0].name, "backends": [u.name for u in replicas],
                        "loaded": False, "status": "available" if up else "down",
                        "replicas": [{"backend": u.name, "kind": u.kind, "up": u.up,
                                      "in_flight": u.in_flight} for u in replicas]}
    return cards


def list_models():
    local = [_model_card(m) for m in _local_models()]
    upstream = _upstream_cards({c["id"] for c in local})
    return jsonify({"object": "list", "data": local + list(upstream.values())})


def get_model(name: str):
    model = state.library().get(name) if state.get()["settings"].local else None
    if model is not None:
        return jsonify(_model_card(model))
    card = _upstream_cards(set()).get(name)
    if card is None:
        raise NotFoundError(f"model {name!r} is not on this server", param="model",
                            code="model_not_found")
    return jsonify(card)


# ---- /v1/chat/completions ---------------------------------------------------------------------
