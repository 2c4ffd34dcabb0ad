"""The answer to a queued chat job, as the client asked for it: streamed as server-sent
events (keep-alive comments while it waits) or collected whole; a client that leaves stops
its job; the request's log fields and record are filled from the job's end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

from flask import Response, g, jsonify, request, stream_with_context

from . import state
from .client import client_gone
from .lifecycle import finish_request, sse_data
from ..chat.answer import Answer, Deltas, finish_reason, shape_answer
from ..chat.prompt import Preparation
from ..chat.protocol import ChatRequest, chunk, completion, usage_dict
from ..engine.jobs import Job
from ..engine.output import Delta, Finished, Progress
from ..errors import APIError
from ..gateway.upstream import LOCAL
from ..ops import audit

KEEPALIVE_SECONDS = 1.0   # SSE comment cadence while queued or prefilling; also how fast a
                          # vanished client is noticed before the first token
CLIENT_CHECK_SECONDS = 0.25   # a non-streamed request checks this often that its client is
                              # still there, whether tokens are flowing or not
CANCEL_GRACE_SECONDS = 2.0    # after a client left, how long its thread waits for the engine
                              # to confirm the stop (for the log's counts) before it ends


@dataclass(frozen=True)
class Reply:
    """What every response of one request carries besides the generated text."""
    cid: str
    model: str
    prep: Preparation
    reasoning_inline: bool
    cache_key: str | None = None   # where a complete answer is kept (deterministic requests)

    @property
    def calls(self) -> bool:
        """Whether tool calls are read out of the answer."""
        return bool(self.prep.req.tools and self.prep.req.tools.calls)

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
            state.get()["responses"].put(self.cache_key, {
                "model": job_model(job, self), "raw": raw, "finish_reason": event.finish_reason,
                "thinking": bool(job.prompt and job.prompt.thinking),
                "usage": self.usage(event), "context": self.dropped})

    def extra(self, event: Finished) -> dict:
        extra = {"timings": dict(event.timings)}  # a copy: the stream adds ttft_ms to it
        if self.dropped:
            extra["context"] = self.dropped
        return extra


def answer(job: Job, req: ChatRequest, reply: Reply) -> Response:
    """The queued job's answer: a stream of server-sent events, or the whole completion."""
    if req.stream:
        g.stream_logs_itself = True
        response = Response(stream_with_context(_sse(job, req, reply)),
                            mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    else:
        response = _collect(job, reply)
    response.headers.update(reply.headers())
    return response


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
    if not state.worker().withdraw(job):
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
    raw, thinking = "".join(text), bool(job.prompt and job.prompt.thinking)
    reply.keep(job, event, raw)
    shaped = shape_answer(raw, thinking, reply.reasoning_inline, reply.calls)
    reason = finish_reason(event.finish_reason, shaped.calls_complete)
    _log_finish(event, job, reply, reason)  # _events ends on Finished unless it raised above
    record_content(reply.prep.req, reply.prep.images, shaped)
    return jsonify(completion(reply.cid, job_model(job, reply), shaped.content, reason,
                              reply.usage(event), reply.extra(event), shaped.reasoning,
                              shaped.tool_calls))


def record_content(req: ChatRequest, images, shaped: Answer) -> None:
    """With --log-content only: the conversation and answer for the audit log."""
    if state.get()["settings"].log_content:
        g.record["content"] = audit.content(req, images, shaped.content, shaped.reasoning,
                                            shaped.tool_calls)


def job_model(job: Job, reply: Reply) -> str:
    """The id of the model that answered (known once the job ran)."""
    return job.served_model or reply.model


def _mark_cancelled() -> None:
    g.log.update(cancelled=1)
    g.record["cancelled"] = True


def _log_finish(event: Finished, job: Job, reply: Reply, reason: str | None = None) -> None:
    """The end in the log line and the record; `reason`: the answer's finish_reason, when
    it is not the engine's (`tool_calls`)."""
    reason = reason or event.finish_reason
    g.log.update(completion_tokens=event.completion_tokens, finish=reason)
    g.record.update(model=job_model(job, reply), prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    cached_tokens=event.cached_tokens, image_tokens=reply.prep.image_tokens,
                    finish_reason=reason, timings=dict(event.timings))


def _sse(job: Job, req: ChatRequest, reply: Reply) -> Iterator[str]:
    created = int(time.time())
    cid, name = reply.cid, reply.model
    status, t0, ttft = 200, time.monotonic(), None
    deltas, raw = Deltas(lambda: bool(job.prompt and job.prompt.thinking),
                        reply.reasoning_inline, reply.calls), []
    try:
        first = chunk(cid, name, created, {"role": "assistant", "content": ""})
        if reply.dropped:   # known before generating: a client that stops early still sees it
            first["context"] = reply.dropped
        yield sse_data(first)
        for event in _events(job):
            if event is None:
                if _client_gone():
                    status = 499
                    _mark_cancelled()
                    return
                yield ": keep-alive\n\n"   # holds proxies open during long prefills
            elif isinstance(event, Progress):
                progress = chunk(cid, name, created, {})
                progress["prompt_progress"] = event.to_dict()
                yield sse_data(progress)
            elif isinstance(event, Delta):
                ttft = ttft or time.monotonic() - t0
                name = job_model(job, reply)
                raw.append(event.text)
                for delta in deltas.feed(event.text):
                    yield sse_data(chunk(cid, name, created, delta))
            elif isinstance(event, APIError):
                status = event.status
                yield sse_data(event.to_dict())
            else:
                for delta in deltas.finish():
                    yield sse_data(chunk(cid, name, created, delta))
                reason = finish_reason(event.finish_reason, deltas.calls_complete)
                _log_finish(event, job, reply, reason)
                reply.keep(job, event, "".join(raw))
                final = chunk(cid, name, created, {}, reason)
                final.update(reply.extra(event))
                final["timings"]["ttft_ms"] = round((ttft or 0) * 1000, 2)
                g.record["timings"]["ttft_ms"] = final["timings"]["ttft_ms"]
                yield sse_data(final)
                if req.include_usage:
                    yield sse_data(chunk(cid, name, created, {}, choices=False,
                                      usage=reply.usage(event)))
        yield "data: [DONE]\n\n"
    except GeneratorExit:
        status = 499  # client closed the connection
        _mark_cancelled()
        raise
    finally:
        _abandon(job)  # a no-op after the end; frees the queue place or sequence if not
        if state.get()["settings"].log_content:   # the stream's whole answer: only for it
            thinking = bool(job.prompt and job.prompt.thinking)
            record_content(req, reply.prep.images, shape_answer(
                "".join(raw), thinking, reply.reasoning_inline, reply.calls))
        finish_request(status)
