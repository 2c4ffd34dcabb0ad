"""OpenAI-compatible routes: /v1/chat/completions, /v1/models, and /health."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Iterator

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context

from ..ops import audit, auth
from . import forwarding
from .lifecycle import finish_request, json_body
from ..engine.llama import Prompt
from ..engine.output import Delta, Finished
from ..chat.context import Fit, fit_messages, strip_thinking
from ..errors import (APIError, ContextLengthError, InvalidRequestError, NotFoundError,
                     ServiceUnavailableError)
from ..chat.images import PreparedImage, limits_for_detail
from ..library.disk import Library, LocalModel
from ..chat.protocol import (ChatRequest, ImagePart, chunk, completion, new_completion_id,
                       parse_chat_request, usage_dict)
from ..chat.reasoning import INLINE_PREFIX, ReasoningSplitter, split_reasoning
from .client import client_gone
from ..gateway.upstream import LOCAL
from ..engine.jobs import Job
from ..engine.worker import Worker

bp = Blueprint("api", __name__)

# Room kept for the answer when fitting a request that sets no max_tokens.
DEFAULT_RESERVE = 1024
KEEPALIVE_SECONDS = 1.0   # SSE comment cadence while queued or prefilling; also how fast a
                          # vanished client is noticed before the first token
CLIENT_CHECK_SECONDS = 0.25   # a non-streamed request checks this often that its client is
                              # still there, whether tokens are flowing or not
CANCEL_GRACE_SECONDS = 2.0    # after a client left, how long its thread waits for the engine
                              # to confirm the stop (for the log's counts) before it ends


def _state() -> dict:
    return current_app.extensions["vlserve"]


def _worker() -> Worker:
    return _state()["worker"]


def _library() -> Library:
    return _state()["library"]


def model_id() -> str:
    return _worker().model or _state()["settings"].model_id


# ---- /health and /v1/models ----------------------------------------------------------------

@bp.get("/health")
def health():
    if not _state()["settings"].local:
        return _gateway_health()
    worker = _worker()
    body = {"status": "ok" if worker.state == "ready" else worker.state,
            "model": model_id(), "queue_depth": worker.depth, "busy": worker.busy,
            "served": dict(worker.stats)}
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
    gateway = _state().get("gateway")
    if gateway is None:
        return {}
    return {"upstreams": {u.name: u.status() for u in gateway.pool.upstreams}}


def _gateway_health():
    """No local model: healthy while at least one upstream answers."""
    pool = _state()["gateway"].pool
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
    worker = _worker()
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
    return _library().models() if _state()["settings"].local else []


def _upstream_cards(skip: set[str]) -> dict[str, dict]:
    """Model id -> card for every upstream model (a local model of the same id wins): the
    upstream's own card (vLLM's max_model_len…) plus which upstreams serve it."""
    gateway = _state().get("gateway")
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


@bp.get("/v1/models")
def list_models():
    local = [_model_card(m) for m in _local_models()]
    upstream = _upstream_cards({c["id"] for c in local})
    return jsonify({"object": "list", "data": local + list(upstream.values())})


@bp.get("/v1/models/<path:name>")
def get_model(name: str):
    model = _library().get(name) if _state()["settings"].local else None
    if model is not None:
        return jsonify(_model_card(model))
    card = _upstream_cards(set()).get(name)
    if card is None:
        raise NotFoundError(f"model {name!r} is not on this server", param="model",
                            code="model_not_found")
    return jsonify(card)


# ---- /v1/chat/completions ---------------------------------------------------------------------

@bp.post("/v1/chat/completions")
def chat_completions():
    settings, worker = _state()["settings"], _worker()
    body = json_body()
    req = parse_chat_request(body, max_tokens_cap=settings.max_tokens_cap or 10**7)
    upstream_model = _upstream_model(req.model, settings)
    if upstream_model is not None:
        images = _request_images(req, settings)
        return forwarding.forward(_state()["gateway"], body, req, images, upstream_model)
    # Counted from here to the queue: requests arriving together start together (an idle
    # engine waits a moment for them rather than prefilling the first alone).
    with worker.arriving():
        target = _target_model(req.model, settings)
        worker.check_accepting()
        worker.check_room()
        images = _request_images(req, settings)
        g.record["backend"] = LOCAL
        cache = _state()["responses"]
        cache_key = cache.key(req, images, target or model_id()) if cache else None
        if cache_key:
            hit = cache.get(cache_key)
            g.record["response_cache"] = "hit" if hit else "miss"
            if hit:
                return _replay(hit, req, images)
        prep = Preparation(req, images)
        # Tokenized here when its model is loaded, so a bad request fails now, before it
        # queues; the lease keeps that engine loaded meanwhile (else the engine thread
        # prepares it, for whichever engine it will run on).
        with worker.lease(target) as engine:
            prompt = prep(engine) if engine is not None else None
            job = worker.submit(prompt, req.params, prepare=prep, model=target, engine=engine)
        if prompt is not None:
            g.log.update(prompt_tokens=prompt.n_tokens, image_tokens=prompt.image_tokens)
    g.record["model"] = target or model_id()   # the answer's own model replaces it at the end
    reply = Reply(new_completion_id(), target or model_id(), prep, req.reasoning_inline,
                  cache_key)
    if req.stream:
        g.stream_logs_itself = True
        response = Response(stream_with_context(_sse(job, req, reply)),
                            mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    else:
        response = _collect(job, reply)
    response.headers.update(reply.headers())
    return response


def _upstream_model(name: str | None, settings) -> str | None:
    """The upstream model a request goes to, or None for the local engine. Local models
    keep their names; a name an upstream serves goes there; any other name goes to the
    local model when there is one (as before), else to the first upstream model."""
    gateway = _state().get("gateway")
    if gateway is None:
        return None
    if name and settings.local and _library().get(name) is not None:
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


def _request_images(req: ChatRequest, settings) -> dict[ImagePart, PreparedImage]:
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
    if not name or not settings.switch_on_request:
        return None
    model = _library().get(name)
    if model is None:
        return None
    if model.id != _worker().model and not auth.may("admin"):
        raise auth.PermissionDeniedError(
            f"model {model.id!r} is not loaded, and loading it would switch the model for "
            f"everyone: that needs the 'admin' scope (the key {g.key_name!r} has "
            f"{', '.join(sorted(auth.scopes()))}); use the loaded model "
            f"{_worker().model!r} or ask an admin", param="model", code="model_switch_forbidden")
    return model.id


class Preparation:
    """Tokenizes one request for an engine: on the HTTP thread when its model is loaded,
    on the engine thread (again) when another model is loaded first. Remembers what the
    last preparation fitted away and how many image tokens it has."""

    def __init__(self, req: ChatRequest, images: dict[ImagePart, PreparedImage]):
        self.req, self.images = req, images
        self.fit: Fit | None = None
        self.image_tokens = 0

    def __call__(self, engine) -> Prompt:
        _, prompt, self.fit = _prepare(self.req, engine, self.images)
        self.image_tokens = prompt.image_tokens
        return prompt


@dataclass(frozen=True)
class Reply:
    """What every response of one request carries besides the generated text."""
    cid: str
    model: str
    prep: Preparation
    reasoning_inline: bool
    cache_key: str | None = None   # where a complete answer is kept (deterministic requests)

    def usage(self, event: Finished) -> dict:
        return usage_dict(event.prompt_tokens, event.completion_tokens, event.cached_tokens,
                          self.prep.image_tokens)

    @property
    def dropped(self) -> dict | None:
        fit = self.prep.fit
        if fit is None or not fit.changed:
            return None
        return {"dropped_images": fit.dropped_images, "dropped_messages": fit.dropped_messages}

    def headers(self) -> dict:
        headers = {"X-Vlserve-Backend": LOCAL}
        if self.cache_key:
            headers["X-Cache"] = "miss"
        if self.dropped:
            headers["X-Context-Dropped"] = (
                "images={dropped_images}, messages={dropped_messages}".format(**self.dropped))
        return headers

    def keep(self, job: Job, event: Finished, raw: str) -> None:
        """Store a complete answer of a deterministic request for its repeats."""
        if self.cache_key and event.finish_reason in ("stop", "length"):
            _state()["responses"].put(self.cache_key, {
                "model": job_model(job, self), "raw": raw, "finish_reason": event.finish_reason,
                "thinking": bool(job.prompt and job.prompt.thinking),
                "usage": self.usage(event), "context": self.dropped})

    def extra(self, event: Finished) -> dict:
        extra = {"timings": dict(event.timings)}  # a copy: the stream adds ttft_ms to it
        if self.dropped:
            extra["context"] = self.dropped
        return extra


def _decode_images(req: ChatRequest, settings) -> dict[ImagePart, PreparedImage]:
    parts = req.image_parts
    limits = settings.images
    if len(parts) > limits.max_images:
        raise InvalidRequestError(f"too many images: {len(parts)} sent, at most "
                                  f"{limits.max_images} per request", param="messages")
    cache, remote = _state()["images"], _state()["remote"]
    return {p: cache.decode(p.url, limits_for_detail(limits, p.detail), param="messages",
                            remote=remote)
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


def _client_gone() -> bool:
    """True when this request's client has closed its connection (client.client_gone)."""
    return client_gone(request.environ)


def _events(job: Job, quiet: float = KEEPALIVE_SECONDS
            ) -> Iterator[Delta | Finished | APIError | None]:
    """The job's events until its terminal one; None on each `quiet` interval without one."""
    while True:
        event = job.next_event(quiet)
        yield event
        if isinstance(event, (Finished, APIError)):
            return


def _abandon(job: Job) -> None:
    """The client is gone: a queued job leaves the queue now (answered, its place freed),
    a running one is stopped at the engine's next step. A no-op on a finished job."""
    if not _worker().withdraw(job):
        job.cancel()


def _walked_away(job: Job, reply: Reply) -> Response:
    """A non-streamed request whose client left: stop its work, log it as 499 (with the
    counts the engine reports, when it does within the grace) and end this thread."""
    _abandon(job)
    _mark_cancelled()
    end = time.monotonic() + CANCEL_GRACE_SECONDS
    while (left := end - time.monotonic()) > 0:
        event = job.next_event(left)
        if isinstance(event, Finished):
            _log_finish(event, job, reply)
            break
        if isinstance(event, APIError):
            break
    return Response(status=499)   # nobody reads it: the status is for the log and audit


def _collect(job: Job, reply: Reply) -> Response:
    text, next_check = [], time.monotonic() + CLIENT_CHECK_SECONDS
    try:
        for event in _events(job, CLIENT_CHECK_SECONDS):
            if time.monotonic() >= next_check:   # even while tokens flow
                next_check = time.monotonic() + CLIENT_CHECK_SECONDS
                if _client_gone():
                    return _walked_away(job, reply)
            if isinstance(event, Delta):
                text.append(event.text)
            elif isinstance(event, APIError):
                raise event
    finally:
        job.cancel()
    _log_finish(event, job, reply)  # _events ends on Finished unless it raised above
    raw, thinking = "".join(text), bool(job.prompt and job.prompt.thinking)
    reply.keep(job, event, raw)
    reasoning, content = _shape_answer(raw, thinking, reply.reasoning_inline)
    _record_content(reply.prep.req, reply.prep.images, content, reasoning)
    return jsonify(completion(reply.cid, job_model(job, reply), content, event.finish_reason,
                              reply.usage(event), reply.extra(event), reasoning))


def _shape_answer(raw: str, thinking: bool, inline: bool) -> tuple[str, str]:
    """(reasoning, content) of a whole answer, as the request asked to see them."""
    if inline:
        return "", (INLINE_PREFIX if thinking else "") + raw
    return split_reasoning(raw, thinking)


def _record_content(req: ChatRequest, images, answer: str, reasoning: str | None) -> None:
    """With --log-content only: the conversation and answer for the audit log."""
    if _state()["settings"].log_content:
        g.record["content"] = audit.content(req, images, answer, reasoning)


def _replay(hit: dict, req: ChatRequest, images) -> Response:
    """A kept answer, in the shape this request asked for (stream or not)."""
    cid = new_completion_id()
    reasoning, content = _shape_answer(hit["raw"], hit["thinking"], req.reasoning_inline)
    _record_content(req, images, content, reasoning)
    extra = {"timings": {}, **({"context": hit["context"]} if hit["context"] else {})}
    g.record.update(model=hit["model"], finish_reason=hit["finish_reason"],
                    prompt_tokens=hit["usage"]["prompt_tokens"], completion_tokens=0)
    if not req.stream:
        response = jsonify(completion(cid, hit["model"], content, hit["finish_reason"],
                                      hit["usage"], extra, reasoning))
    else:
        created, name = int(time.time()), hit["model"]
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"reasoning_content": reasoning}] if reasoning else []
        deltas += [{"content": content}] if content else []
        events = [chunk(cid, name, created, d) for d in deltas]
        events.append({**chunk(cid, name, created, {}, hit["finish_reason"]), **extra})
        if req.include_usage:
            events.append(chunk(cid, name, created, {}, choices=False, usage=hit["usage"]))
        body = "".join(_data(e) for e in events) + "data: [DONE]\n\n"
        response = Response(body, mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache"})
    response.headers.update({"X-Cache": "hit", "X-Vlserve-Backend": LOCAL})
    return response


def job_model(job: Job, reply: Reply) -> str:
    """The id of the model that answered (known once the job ran)."""
    return job.served_model or reply.model


class _Deltas:
    """Raw generated text -> the stream's delta objects: reasoning and answer apart, or
    the raw text with the template's opening <think> restored (reasoning_format "none")."""

    def __init__(self, job: Job, inline: bool):
        self._job, self._inline, self._splitter = job, inline, None

    def feed(self, text: str) -> list[dict]:
        if self._splitter is None:   # the job's prompt is known once its first token came
            thinking = bool(self._job.prompt and self._job.prompt.thinking)
            if self._inline:
                self._splitter = False
                return [{"content": (INLINE_PREFIX if thinking else "") + text}]
            self._splitter = ReasoningSplitter(thinking)
        if self._splitter is False:
            return [{"content": text}]
        return self._shape(self._splitter.feed(text))

    def finish(self) -> list[dict]:
        return self._shape(self._splitter.finish()) if self._splitter else []

    @staticmethod
    def _shape(pieces) -> list[dict]:
        return [{"reasoning_content" if kind == "reasoning" else "content": text}
                for kind, text in pieces]


def _mark_cancelled() -> None:
    g.log.update(cancelled=1)
    g.record["cancelled"] = True


def _log_finish(event: Finished, job: Job, reply: Reply) -> None:
    g.log.update(completion_tokens=event.completion_tokens, finish=event.finish_reason)
    g.record.update(model=job_model(job, reply), prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    cached_tokens=event.cached_tokens, image_tokens=reply.prep.image_tokens,
                    finish_reason=event.finish_reason, timings=dict(event.timings))


def _sse(job: Job, req: ChatRequest, reply: Reply) -> Iterator[str]:
    created = int(time.time())
    cid, name = reply.cid, reply.model
    status, t0, ttft = 200, time.monotonic(), None
    deltas, raw = _Deltas(job, reply.reasoning_inline), []
    try:
        first = chunk(cid, name, created, {"role": "assistant", "content": ""})
        if reply.dropped:   # known before generating: a client that stops early still sees it
            first["context"] = reply.dropped
        yield _data(first)
        for event in _events(job):
            if event is None:
                if _client_gone():
                    status = 499
                    _mark_cancelled()
                    return
                yield ": keep-alive\n\n"   # holds proxies open during long prefills
            elif isinstance(event, Delta):
                ttft = ttft or time.monotonic() - t0
                name = job_model(job, reply)
                raw.append(event.text)
                for delta in deltas.feed(event.text):
                    yield _data(chunk(cid, name, created, delta))
            elif isinstance(event, APIError):
                status = event.status
                yield _data(event.to_dict())
            else:
                for delta in deltas.finish():
                    yield _data(chunk(cid, name, created, delta))
                _log_finish(event, job, reply)
                reply.keep(job, event, "".join(raw))
                final = chunk(cid, name, created, {}, event.finish_reason)
                final.update(reply.extra(event))
                final["timings"]["ttft_ms"] = round((ttft or 0) * 1000, 2)
                g.record["timings"]["ttft_ms"] = final["timings"]["ttft_ms"]
                yield _data(final)
                if req.include_usage:
                    yield _data(chunk(cid, name, created, {}, choices=False,
                                      usage=reply.usage(event)))
        yield "data: [DONE]\n\n"
    except GeneratorExit:
        status = 499  # client closed the connection
        _mark_cancelled()
        raise
    finally:
        _abandon(job)  # a no-op after the end; frees the queue place or sequence if not
        thinking = bool(job.prompt and job.prompt.thinking)
        _record_content(req, reply.prep.images,
                        *reversed(_shape_answer("".join(raw), thinking, reply.reasoning_inline)))
        finish_request(status)


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
