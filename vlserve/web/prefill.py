"""POST /v1/chat/prefill: a draft conversation evaluated while its author types, so that
sending it costs what a follow-up costs. GET and DELETE /v1/chat/prefill/<id>: how far it
got, and dropping it.

The body is a chat request's (the conversation as it will be sent: earlier turns, and the
draft message with its images and the text typed so far), checked as one: a bad image or an
over-long conversation gets the same 4xx. Nothing is generated and nothing is cached as an
answer. The engine thread does the work in the background (engine.worker: one prefill per
owner, the newer superseding the older; requests always first). It never loads or switches
a model: a prefill for a model that is not loaded, or an upstream's, is answered
`accepted: false` with the reason, and costs nothing more.
"""

from __future__ import annotations

from flask import g, jsonify, request

from . import state
from .chat import named_model, request_images, upstream_model
from .lifecycle import json_body
from ..chat.prompt import Preparation
from ..chat.protocol import parse_chat_request
from ..errors import NotFoundError
from ..gateway.upstream import LOCAL
from ..ops.limits import identity

MAX_WAIT = 60.0   # seconds GET ?wait= may hold a thread


def create():
    settings, worker = state.get()["settings"], state.worker()
    req = parse_chat_request(json_body(), max_tokens_cap=settings.max_tokens_cap or 10**7)
    name = upstream_model(req.model, settings)
    if name is not None:   # never forwarded: an upstream has no prefill to run it
        return _declined(name, "upstream_model",
                         "the model is an upstream server's; prefill runs on the local engine")
    worker.check_accepting()
    images = request_images(req, settings)
    g.record["backend"] = LOCAL
    named = named_model(req.model, settings)
    wanted = named.id if named is not None else None
    with worker.lease(wanted) as engine:
        if engine is None:   # a prefill never loads or switches a model
            return _declined(wanted or state.model_id(), "model_not_loaded",
                             "the model is not loaded (a prefill never loads one)")
        prompt = Preparation(req, images)(engine)
        prefill = worker.prefill(prompt, engine, owner=identity())
    g.log.update(prompt_tokens=prompt.n_tokens, image_tokens=prompt.image_tokens)
    g.record.update(model=prefill.model, prompt_tokens=prompt.n_tokens,
                    image_tokens=prompt.image_tokens)   # the audit log's line
    response = jsonify({**prefill.view(), "accepted": True})
    response.status_code = 202
    response.headers["Location"] = f"/v1/chat/prefill/{prefill.id}"
    return response


def status(prefill_id: str):
    """The prefill's state; with ?wait=SECONDS, once it has ended (or that time passed)."""
    prefill = _find(prefill_id)
    try:
        wait = min(MAX_WAIT, max(0.0, float(request.args.get("wait", 0))))
    except ValueError:
        wait = 0.0
    if wait:
        prefill.ended.wait(wait)
    return jsonify(prefill.view())


def cancel(prefill_id: str):
    """Drop it (the page: the image was removed, or the conversation left). Its KV stays
    in the cache like any other; the answer is its state then (it ends at the next step)."""
    prefill = _find(prefill_id)
    prefill.cancel()
    return jsonify(prefill.view())


def _find(prefill_id: str):
    prefill = state.worker().prefills.find(prefill_id, identity())
    if prefill is None:
        raise NotFoundError(f"no prefill {prefill_id!r} (they are kept for a while, and "
                            "only for whoever made them)", code="prefill_not_found")
    return prefill


def _declined(model: str, code: str, message: str):
    return jsonify({"object": "chat.prefill", "accepted": False, "model": model,
                    "code": code, "reason": message})
