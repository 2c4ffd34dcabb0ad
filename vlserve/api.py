"""OpenAI-compatible routes: /v1/chat/completions, /v1/models, and /health."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from dataclasses import dataclass
from typing import Iterator

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context
from werkzeug.exceptions import BadRequest

from .app import log_line
from .engine import Delta, Finished, Prompt
from .context import Fit, fit_messages, strip_thinking
from .errors import APIError, ContextLengthError, InvalidRequestError, NotFoundError
from .images import PreparedImage, limits_for_detail
from .protocol import (ChatRequest, ImagePart, chunk, completion, new_completion_id,
                       parse_chat_request, usage_dict)
from .worker import Job, Worker

bp = Blueprint("api", __name__)

# Room kept for the answer when fitting a request that sets no max_tokens.
DEFAULT_RESERVE = 1024
KEEPALIVE_SECONDS = 1.0   # SSE comment cadence while queued or prefilling; also how fast a
                          # vanished client is noticed before the first token


def _state() -> dict:
    return current_app.extensions["vlserve"]


def _worker() -> Worker:
    return _state()["worker"]


def model_id() -> str:
    return _state()["settings"].model_id


# ---- /health and /v1/models ----------------------------------------------------------------

@bp.get("/health")
def health():
    worker = _worker()
    body = {"status": "ok" if worker.state == "ready" else worker.state,
            "model": model_id(), "queue_depth": worker.depth, "busy": worker.busy,
            "served": dict(worker.stats)}
    if worker.state == "ready":
        body.update(warmup_seconds=worker.warmup_seconds, **worker.engine.info,
                    cache=worker.engine.cache_stats())
        return jsonify(body)
    body["reason"] = worker.reason
    response = jsonify(body)
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def _model_card() -> dict:
    worker = _worker()
    card = {"id": model_id(), "object": "model", "created": _state()["settings"].model_created,
            "owned_by": "vlserve", "capabilities": {"vision": True, "completion": True},
            "status": worker.state}
    if worker.state == "ready":
        card["meta"] = worker.engine.info
    return card


@bp.get("/v1/models")
def list_models():
    return jsonify({"object": "list", "data": [_model_card()]})


@bp.get("/v1/models/<path:name>")
def get_model(name: str):
    if name != model_id():
        raise NotFoundError(f"model {name!r} is not served here", param="model",
                            code="model_not_found")
    return jsonify(_model_card())


# ---- /v1/chat/completions ---------------------------------------------------------------------

@bp.post("/v1/chat/completions")
def chat_completions():
    settings = _state()["settings"]
    req = parse_chat_request(_json_body(), max_tokens_cap=settings.max_tokens_cap or 10**7)
    engine = _worker().require_ready()
    _worker().check_room()
    images = _decode_images(req, settings)
    g.log.update(images=len(images), image_bytes=sum(i.source_bytes for i in images.values()))
    req, prompt, fit = _prepare(req, engine, images)
    g.log.update(prompt_tokens=prompt.n_tokens, image_tokens=prompt.image_tokens)
    job = _worker().submit(prompt, req.params)
    reply = Reply(new_completion_id(), model_id(), prompt.image_tokens, _dropped(fit))
    if req.stream:
        g.stream_logs_itself = True
        response = Response(stream_with_context(_sse(job, req, reply)),
                            mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    else:
        response = _collect(job, reply)
    response.headers.update(reply.headers())
    return response


@dataclass(frozen=True)
class Reply:
    """What every response of one request carries besides the generated text."""
    cid: str
    model: str
    image_tokens: int
    dropped: dict | None       # what context fitting removed, or None

    def usage(self, event: Finished) -> dict:
        return usage_dict(event.prompt_tokens, event.completion_tokens, event.cached_tokens,
                          self.image_tokens)

    def headers(self) -> dict:
        if not self.dropped:
            return {}
        return {"X-Context-Dropped": "images={dropped_images}, messages={dropped_messages}"
                .format(**self.dropped)}

    def extra(self, event: Finished) -> dict:
        extra = {"timings": dict(event.timings)}  # a copy: the stream adds ttft_ms to it
        if self.dropped:
            extra["context"] = self.dropped
        return extra


def _json_body():
    try:
        return request.get_json(force=True)
    except BadRequest:
        raise InvalidRequestError("the request body is not valid JSON") from None


def _decode_images(req: ChatRequest, settings) -> dict[ImagePart, PreparedImage]:
    parts = req.image_parts
    limits = settings.images
    if len(parts) > limits.max_images:
        raise InvalidRequestError(f"too many images: {len(parts)} sent, at most "
                                  f"{limits.max_images} per request", param="messages")
    cache = _state()["images"]
    return {p: cache.decode(p.url, limits_for_detail(limits, p.detail), param="messages")
            for p in parts}


def _prepare(req: ChatRequest, engine, images) -> tuple[ChatRequest, Prompt, Fit | None]:
    """Old reasoning out, then tokenize. Only a conversation that leaves too little room
    for the answer is fitted (and tokenized again): the common case tokenizes once."""
    req = dataclasses.replace(req, messages=strip_thinking(req.messages))
    reserve = req.params.max_tokens or min(DEFAULT_RESERVE, engine.n_ctx // 4)
    try:
        prompt = engine.prepare(req, [images[p] for p in req.image_parts])
        if prompt.n_tokens + reserve <= engine.n_ctx:
            return req, prompt, None
        prompt.close()
    except ContextLengthError:
        pass  # too long even for its max_tokens: fitting decides what goes, or refuses
    fit = _fit(req, engine, images, reserve)
    req = dataclasses.replace(req, messages=fit.messages)
    return req, engine.prepare(req, [images[p] for p in req.image_parts]), fit


def _fit(req: ChatRequest, engine, images, reserve: int) -> Fit:
    """The conversation fitted into the context, leaving `reserve` tokens for the answer.
    A last message that cannot fit is refused here, before any image is encoded."""
    try:
        return fit_messages(req.messages, budget=engine.n_ctx - reserve,
                            count_tokens=lambda msgs: engine.count_tokens(msgs, images))
    except ContextLengthError as exc:
        raise ContextLengthError(
            f"{exc.message}: the context is {engine.n_ctx} tokens and {reserve} of them are "
            "kept for the answer (max_tokens)", param=exc.param) from None


def _dropped(fit: Fit | None) -> dict | None:
    if fit is None or not fit.changed:
        return None
    return {"dropped_images": fit.dropped_images, "dropped_messages": fit.dropped_messages}


def _client_gone() -> bool:
    """True when the peer closed its socket (checked while a non-streaming job waits)."""
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is None:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):
        return True


def _events(job: Job) -> Iterator[Delta | Finished | APIError | None]:
    """The job's events until its terminal one; None on each quiet keepalive interval."""
    while True:
        event = job.next_event(KEEPALIVE_SECONDS)
        yield event
        if isinstance(event, (Finished, APIError)):
            return


def _collect(job: Job, reply: Reply) -> Response:
    text = []
    try:
        for event in _events(job):
            if event is None and _client_gone():
                job.cancel()
                g.log.update(cancelled=1)
            elif isinstance(event, Delta):
                text.append(event.text)
            elif isinstance(event, APIError):
                raise event
    finally:
        job.cancel()
    _log_finish(event)  # _events ends on Finished unless it raised above
    return jsonify(completion(reply.cid, reply.model, "".join(text), event.finish_reason,
                              reply.usage(event), reply.extra(event)))


def _log_finish(event: Finished) -> None:
    g.log.update(completion_tokens=event.completion_tokens, finish=event.finish_reason)


def _sse(job: Job, req: ChatRequest, reply: Reply) -> Iterator[str]:
    created = int(time.time())
    cid, name = reply.cid, reply.model
    status, t0, ttft = 200, time.monotonic(), None
    try:
        yield _data(chunk(cid, name, created, {"role": "assistant", "content": ""}))
        for event in _events(job):
            if event is None:
                if _client_gone():
                    status = 499
                    g.log.update(cancelled=1)
                    return
                yield ": keep-alive\n\n"   # holds proxies open during long prefills
            elif isinstance(event, Delta):
                ttft = ttft or time.monotonic() - t0
                yield _data(chunk(cid, name, created, {"content": event.text}))
            elif isinstance(event, APIError):
                status = event.status
                yield _data(event.to_dict())
            else:
                _log_finish(event)
                final = chunk(cid, name, created, {}, event.finish_reason)
                final.update(reply.extra(event))
                final["timings"]["ttft_ms"] = round((ttft or 0) * 1000, 2)
                yield _data(final)
                if req.include_usage:
                    yield _data(chunk(cid, name, created, {}, choices=False,
                                      usage=reply.usage(event)))
        yield "data: [DONE]\n\n"
    except GeneratorExit:
        status = 499  # client closed the connection
        g.log.update(cancelled=1)
        raise
    finally:
        job.cancel()  # a no-op after the end; frees the engine if the client left
        log_line(status)


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
