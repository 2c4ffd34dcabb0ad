"""POST /v1/chat/completions: parse -> images -> (an upstream's model: forward) -> response
cache -> prompt -> queue -> answer, each step one call into the module that owns it."""

from __future__ import annotations

from flask import g

from . import forwarding, state
from .answer import Reply, answer
from .lifecycle import json_body
from .replay import replay
from ..chat.images import PreparedImage, limits_for_detail
from ..chat.prompt import Preparation
from ..chat.protocol import ChatRequest, ImagePart, new_completion_id, parse_chat_request
from ..errors import InvalidRequestError, ServiceUnavailableError
from ..gateway.upstream import LOCAL
from ..library.disk import LocalModel
from ..ops import auth
from ..ops.limits import identity


def chat_completions():
    settings, worker = state.get()["settings"], state.worker()
    body = json_body()
    req = parse_chat_request(body, max_tokens_cap=settings.max_tokens_cap or 10**7)
    constraint = req.params.constraint
    if constraint is not None and constraint.grammar is not None:
        # its size, never the schema (client content)
        g.log.update(constrained=1, grammar_bytes=len(constraint.grammar))
    if req.tools:   # counts, never names
        g.log.update(tools=len(req.tools.definitions), tool_choice=req.tools.choice)
    upstream = upstream_model(req.model, settings)
    if upstream is not None:
        images = request_images(req, settings)
        return forwarding.forward(state.get()["gateway"], body, req, images, upstream)
    # Counted from here to the queue: requests arriving together start together (an idle
    # engine waits a moment for them rather than prefilling the first alone).
    with worker.arriving():
        target = _target_model(req.model, settings)
        worker.check_accepting()
        worker.check_room()
        images = request_images(req, settings)
        g.record["backend"] = LOCAL
        cache = state.get()["responses"]
        cache_key = cache.key(req, images, target or state.model_id()) if cache else None
        if cache_key:
            hit = cache.get(cache_key)
            g.record["response_cache"] = "hit" if hit else "miss"
            if hit:
                return replay(hit, req, images)
        prep = Preparation(req, images)
        # Tokenized here when its model is loaded, so a bad request fails now, before it
        # queues; the lease keeps that engine loaded meanwhile (else the engine thread
        # prepares it, for whichever engine it will run on).
        with worker.lease(target) as engine:
            prompt = prep(engine) if engine is not None else None
            job = worker.submit(prompt, req.params, prepare=prep, model=target, engine=engine,
                                owner=identity(), progress=req.stream and req.return_progress)
        if prompt is not None:
            g.log.update(prompt_tokens=prompt.n_tokens, image_tokens=prompt.image_tokens)
    g.record["model"] = target or state.model_id()   # the answer's own model replaces it at the end
    reply = Reply(new_completion_id(), target or state.model_id(), prep, req.reasoning_inline,
                  cache_key)
    return answer(job, req, reply)


def upstream_model(name: str | None, settings) -> str | None:
    """The upstream model a request goes to, or None for the local engine. Local models
    keep their names; a name an upstream serves goes there; any other name goes to the
    local model when there is one (as before), else to the first upstream model."""
    gateway = state.get().get("gateway")
    if gateway is None:
        return None
    if name and settings.local and state.library().get(name) is not None:
        return None
    if name and gateway.pool.replicas(name):
        return name
    if settings.local:
        return None
    model = gateway.pool.default_model()
    if model is None:
        raise ServiceUnavailableError("no upstream server has answered yet, so no model is "
                                      "available; retry shortly", code="upstream_unavailable",
                                      retry_after=5)
    return model


def request_images(req: ChatRequest, settings) -> dict[ImagePart, PreparedImage]:
    """The request's images, checked and prepared (the same for every backend), and their
    sizes and hashes in the log and the record."""
    images = _decode_images(req, settings)
    g.log.update(images=len(images), image_bytes=sum(i.source_bytes for i in images.values()))
    g.record.update(stream=req.stream, images=[
        {"sha256": i.sha256, "bytes": i.source_bytes, "width": i.width, "height": i.height}
        for i in images.values()])
    return images


def _target_model(name: str | None, settings) -> str | None:
    """The model a request must run on: the one it names when that model is on disk and
    switching on request is on; otherwise None (whichever is loaded — clients that send a
    fixed name such as "gpt-4o" keep working). Switching the model is everyone's business:
    with keys configured, naming a model that is not the loaded one needs the admin scope."""
    model = named_model(name, settings)
    if model is None:
        return None
    if model.id != state.worker().model and not auth.may("admin"):
        raise auth.PermissionDeniedError(
            f"model {model.id!r} is not loaded, and loading it would switch the model for "
            f"everyone: that needs the 'admin' scope (the key {g.key_name!r} has "
            f"{', '.join(sorted(auth.scopes()))}); use the loaded model "
            f"{state.worker().model!r} or ask an admin", param="model", code="model_switch_forbidden")
    return model.id


def named_model(name: str | None, settings) -> LocalModel | None:
    """The local model on disk a request's `model` names, when naming one switches to it
    (--switch-on-request); None: the request runs on whichever is loaded."""
    if not name or not settings.switch_on_request:
        return None
    return state.library().get(name)


def _decode_images(req: ChatRequest, settings) -> dict[ImagePart, PreparedImage]:
    parts = req.image_parts
    limits = settings.images
    if len(parts) > limits.max_images:
        raise InvalidRequestError(f"too many images: {len(parts)} sent, at most "
                                  f"{limits.max_images} per request", param="messages")
    cache, remote = state.get()["images"], state.get()["remote"]
    return {p: cache.decode(p.url, limits_for_detail(limits, p.detail), param="messages",
                            remote=remote)
            for p in parts}
