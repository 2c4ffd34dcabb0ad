"""Forwarding chat requests to upstream servers (vLLM, llama.cpp, another vlserve).

The chat route has already parsed the request (same validation as local requests) and
prepared its images (same limits, EXIF, resize; remote URLs fetched under the same policy or
refused). Here the client's body becomes the upstream's: the model id it knows, every image
replaced by vlserve's prepared bitmap as a lossless PNG data URL (so nothing the client sent
reaches the upstream unchecked, and the upstream never fetches a URL), vlserve's parameters
mapped to what that server understands. Then:

- a replica is chosen (least in flight); a connection that fails before the client has been
  sent anything goes to the next replica, so a dead replica costs no request that had not
  started streaming;
- streams pass through event by event as the upstream sends them (never buffered whole);
  closing the client's connection closes the upstream's, which stops its generation;
- the upstream's errors keep their status and OpenAI shape, prefixed with its name; failures
  of the connection itself become 502 (unreachable, broken), 503 (every replica down) or 504
  (no answer in time), naming the upstream.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import cachetools
import httpx2
from PIL import Image

from ..errors import (APIError, BadGatewayError, ServiceUnavailableError, TimeoutError_,
                     UpstreamError)
from ..chat.images import ImageLimits, PreparedImage, limits_for_detail
from ..chat.protocol import ChatRequest, ImagePart
from .upstream import Pool, Upstream, describe

log = logging.getLogger("vlserve.gateway")

# Failures where the upstream cannot have answered: safe to try another replica.
RETRYABLE = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.RemoteProtocolError,
             httpx2.ReadError, httpx2.WriteError, httpx2.WriteTimeout, httpx2.PoolTimeout)
# An upstream that is overloaded or restarting says so with these: another replica may not be.
RETRY_STATUSES = (502, 503)
ENCODED_CACHE_BYTES = 64 * 1024 * 1024   # PNG data URLs of recent images (clients resend them)


@dataclass
class Ledger:
    """What the caller learns of a forwarded request while it runs: `record` (for the audit
    log and metrics) and `log` (the access-log line's fields) are filled in place;
    `error_code` is told the code of an error sent inside a stream; `end` is called once
    with the status when a stream ends (200, 499 when the client left, 502)."""
    record: dict
    log: dict
    error_code: Callable[[str], None]
    end: Callable[[int], None]


@dataclass
class Forwarded:
    """The answer to send: the upstream's JSON `body`, or `stream`, its server-sent events
    as they come (then the ledger's `end` is called when it ends)."""
    headers: dict
    body: bytes | None = None
    stream: Iterator[bytes] | None = None


class Gateway:
    """Sends chat requests to a `Pool`'s upstreams; one per app."""

    def __init__(self, pool: Pool, *, request_timeout: float, limits: ImageLimits):
        self.pool = pool
        self.limits = limits
        # Read timeout = the request timeout: a first token may take long (a long prompt on a
        # CPU upstream); connecting must not.
        self.client = httpx2.Client(timeout=httpx2.Timeout(request_timeout,
                                                           connect=pool.connect_timeout),
                                    # idle connections retire before the upstream's own
                                    # keep-alive (5 s in gunicorn and uvicorn) closes them
                                    limits=httpx2.Limits(max_connections=None,
                                                         keepalive_expiry=2.0))
        self._encoded = cachetools.LRUCache(ENCODED_CACHE_BYTES, getsizeof=len)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def forward(self, body: dict, req: ChatRequest, images: dict[ImagePart, PreparedImage],
                model: str, ledger: Ledger) -> Forwarded:
        """Answer the request from a replica of `model`: a pass-through stream or the
        upstream's JSON, with `X-Vlserve-Backend` naming the upstream."""
        t0 = time.monotonic()
        opened = self._open(body, req, images, model)
        upstream = opened.upstream
        ledger.record["backend"] = upstream.name
        ledger.log.update(backend=upstream.name)
        headers = {"X-Vlserve-Backend": upstream.name}
        if opened.notes:
            headers["X-Vlserve-Upstream-Notes"] = "; ".join(opened.notes)
        if opened.response.status_code != 200:
            self.close_opened(opened)
            error = upstream_error(upstream, opened.response.status_code, opened.content,
                                   _retry_after(opened.response))
            error.headers = headers
            raise error
        if not req.stream:
            self.close_opened(opened)
            _record_answer(_json_answer(opened.content, upstream), ledger)
            return Forwarded(headers, body=opened.content)
        relay = _Relay(self, opened, req.include_usage, t0, ledger)
        return Forwarded(headers, stream=relay.events())

    # -- choosing a replica, with failover --

    def _open(self, body, req, images, model) -> "_Opened":
        tried: list[Upstream] = []
        failures: list[tuple[Upstream, BaseException | int]] = []
        while (upstream := self.pool.choose(model, exclude=tried)) is not None:
            tried.append(upstream)
            outgoing, notes = self.body_for(upstream, body, req, images, model)
            try:
                opened = self._try(upstream, outgoing, req.stream)
            except httpx2.TimeoutException as exc:
                self.pool.release(upstream)
                if isinstance(exc, RETRYABLE):   # connect/pool timeout: nothing was sent
                    failures.append((upstream, exc))
                    self._failed_over(upstream, describe(exc))
                    continue
                raise TimeoutError_(f"upstream {upstream.name!r} did not answer within "
                                    "the request timeout", code="upstream_timeout") from None
            except RETRYABLE as exc:
                self.pool.release(upstream)
                failures.append((upstream, exc))
                self._failed_over(upstream, describe(exc))
                continue
            status = opened.response.status_code
            if status in RETRY_STATUSES and self._more(model, tried):
                self.close_opened(opened)
                failures.append((upstream, status))
                upstream.failovers += 1
                continue
            self.pool.mark_up(upstream)
            opened.notes = notes
            return opened
        raise self._all_failed(model, failures)

    def _try(self, upstream: Upstream, outgoing: dict, stream: bool) -> "_Opened":
        """Send; read the whole answer (non-streaming, or an error) or the first bytes of the
        stream, so that any failure up to there still allows another replica."""
        request = self.client.build_request(
            "POST", f"{upstream.url}/v1/chat/completions", json=outgoing,
            headers={**upstream.headers(), "Accept": "text/event-stream" if stream
                     else "application/json"})
        response = self.client.send(request, stream=True)
        try:
            if not stream or response.status_code != 200:
                return _Opened(upstream, response, response.read(), iter(()))
            chunks = response.iter_raw()
            first = next(chunks, b"")
        except BaseException:
            response.close()
            raise
        return _Opened(upstream, response, first, chunks)

    def _more(self, model: str, tried: list[Upstream]) -> bool:
        return any(u.up and u not in tried for u in self.pool.replicas(model))

    def _failed_over(self, upstream: Upstream, reason: str) -> None:
        self.pool.mark_down(upstream, reason)
        upstream.failovers += 1

    def close_opened(self, opened: "_Opened") -> None:
        """Done with an upstream response: its connection closed, its replica released."""
        opened.response.close()
        self.pool.release(opened.upstream)

    def _all_failed(self, model: str, failures) -> APIError:
        if not failures:
            replicas = self.pool.replicas(model)
            why = "; ".join(f"{u.name}: {u.last_error or 'down'}" for u in replicas)
            return ServiceUnavailableError(
                f"every upstream serving {model!r} is down ({why}); retry shortly",
                code="upstream_unavailable", retry_after=5)
        said = "; ".join(f"{u.name}: " + (f"answered {f}" if isinstance(f, int) else describe(f))
                         for u, f in failures)
        last = failures[-1][1]
        if isinstance(last, int):   # the last replica was busy: pass its 502/503 on
            return UpstreamError(f"no upstream serving {model!r} could take the request "
                                 f"({said})", last, retry_after=5)
        if all(isinstance(f, httpx2.TimeoutException) for _, f in failures):
            return TimeoutError_(f"no upstream serving {model!r} answered in time ({said})",
                                 code="upstream_timeout")
        return BadGatewayError(f"no upstream serving {model!r} could be reached ({said})")

    # -- the upstream's request body --

    def body_for(self, upstream: Upstream, body: dict, req: ChatRequest, images, model: str
                 ) -> tuple[dict, list[str]]:
        """The client's body for this upstream: its model id, prepared images, parameters
        it understands; plus notes on what was mapped or dropped (for the response)."""
        out = {**body, "model": model,
               "messages": [self._message(m, images) for m in body["messages"]]}
        if req.stream:   # usage feeds the audit log and metrics; the client gets it if asked
            out["stream_options"] = {**(body.get("stream_options") or {}),
                                     "include_usage": True}
        notes = map_parameters(out, upstream.kind, req, self.limits)
        return out, notes

    def _message(self, message: dict, images) -> dict:
        content = message.get("content")
        if not isinstance(content, list):
            return message
        return {**message, "content": [self._part(p, images) for p in content]}

    def _part(self, part: dict, images) -> dict:
        if part.get("type") != "image_url":
            return part
        image = part["image_url"]
        key = (ImagePart(image) if isinstance(image, str)
               else ImagePart(image["url"], image.get("detail") or "auto"))
        return {"type": "image_url",
                "image_url": {"url": self.data_url(images[key]), "detail": key.detail}}

    def data_url(self, image: PreparedImage) -> str:
        """The prepared bitmap as a PNG data URL: lossless, so the upstream sees exactly the
        pixels vlserve checked and resized (the same SHA-256 after decoding)."""
        with self._lock:
            url = self._encoded.get(image.sha256)
        if url is None:
            buf = io.BytesIO()
            Image.frombytes("RGB", (image.width, image.height), image.rgb).save(
                buf, "PNG", compress_level=1)   # fast; LAN bandwidth is cheaper than CPU
            url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            with self._lock:
                if len(url) <= self._encoded.maxsize:
                    self._encoded[image.sha256] = url
        return url


def map_parameters(out: dict, kind: str, req: ChatRequest, limits: ImageLimits) -> list[str]:
    """vlserve's parameters -> what an upstream of this kind understands, in place. Image
    detail is always applied by vlserve's own resize before forwarding; vLLM is also told
    the pixel budget, llama.cpp has no per-request image option."""
    notes = []
    if kind == "vllm":
        if "repeat_penalty" in out:
            value = out.pop("repeat_penalty")
            out.setdefault("repetition_penalty", value)
            notes.append("repeat_penalty sent as vLLM's repetition_penalty")
        if "reasoning_format" in out:
            out.pop("reasoning_format")
            notes.append("reasoning_format dropped: vLLM separates reasoning with its "
                         "--reasoning-parser")
        if req.image_parts and "mm_processor_kwargs" not in out:
            budget = max(_pixels(limits_for_detail(limits, p.detail)) for p in req.image_parts)
            out["mm_processor_kwargs"] = {"max_pixels": budget}
            notes.append(f"image detail sent as mm_processor_kwargs.max_pixels={budget}")
    elif kind == "llama.cpp" and any(p.detail != "auto" for p in req.image_parts):
        notes.append("image detail applied by vlserve's resize only: llama.cpp has no "
                     "per-request image token option")
    return notes


def _pixels(limits: ImageLimits) -> int:
    return limits.max_long_side * limits.max_short_side


class _Opened:
    """An upstream response whose status is known: its whole body (non-streaming, errors)
    or the first bytes of its stream plus the rest to come."""

    def __init__(self, upstream: Upstream, response: httpx2.Response, content: bytes,
                 rest: Iterator[bytes]):
        self.upstream, self.response = upstream, response
        self.content, self.rest = content, rest
        self.notes: list[str] = []


def _json_answer(content: bytes, upstream: Upstream) -> dict:
    """A non-streaming answer, passed on as the upstream wrote it (read for its usage)."""
    try:
        answer = json.loads(content)
    except ValueError:
        raise BadGatewayError(f"upstream {upstream.name!r} answered 200 "
                              "with a body that is not JSON") from None
    return answer if isinstance(answer, dict) else {}


def _record_answer(answer: dict, ledger: Ledger) -> None:
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    choices = answer.get("choices") or [{}]
    _record_usage(usage, answer.get("model"), ledger)
    ledger.record.update(finish_reason=(choices[0] or {}).get("finish_reason"), timings={})
    ledger.log.update(completion_tokens=usage.get("completion_tokens"))


def _record_usage(usage: dict, model, ledger: Ledger) -> None:
    """The finished answer's model and token counts, as the upstream reported them."""
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    ledger.record.update(model=str(model) if model else None,
                    prompt_tokens=usage.get("prompt_tokens"),
                    completion_tokens=usage.get("completion_tokens"),
                    cached_tokens=details.get("cached_tokens"),
                    image_tokens=details.get("image_tokens"))


def _retry_after(response: httpx2.Response) -> int | None:
    value = response.headers.get("Retry-After", "")
    return int(value) if value.isdigit() else None


def upstream_error(upstream: Upstream, status: int, content: bytes,
                   retry_after: int | None = None) -> APIError:
    """An upstream's error response as vlserve's, naming the upstream. Its 401/403 are about
    vlserve's key for it, not the client's: they become 502."""
    error = _error_fields(content)
    message = error.get("message") or f"answered HTTP {status}"
    if status in (401, 403):
        return BadGatewayError(f"upstream {upstream.name!r} refused vlserve's credentials "
                               f"({status}): check --upstream-key {upstream.name}=…",
                               code="upstream_auth_failed")
    if status < 400:
        return BadGatewayError(f"upstream {upstream.name!r} answered HTTP {status}")
    param, code = error.get("param"), error.get("code")
    err = UpstreamError(f"upstream {upstream.name!r}: {message}", status,
                        param=param if isinstance(param, str) else None,
                        code=code if isinstance(code, str) else None, retry_after=retry_after)
    if isinstance(error.get("type"), str):
        err.type = error["type"]
    return err


def _error_fields(content: bytes) -> dict:
    """The error object of an upstream's body, whichever shape: OpenAI's {"error": {...}},
    vLLM's older flat {"object": "error", "message": …}, FastAPI's {"detail": …}."""
    try:
        body = json.loads(content)
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    if isinstance(body.get("error"), dict):
        found = body["error"]
    elif isinstance(body.get("error"), str):
        found = {"message": body["error"]}
    elif "message" in body:
        found = body
    elif "detail" in body:
        found = {"message": str(body["detail"])}
    else:
        return {}
    message = found.get("message")
    return {**found, "message": str(message)[:2000] if message is not None else None}


class _Relay:
    """Passes an upstream's stream on, one server-sent event at a time, and notes what the
    audit log and metrics need (model, finish reason, usage, time to first token)."""

    def __init__(self, gateway: Gateway, opened: _Opened, wants_usage: bool, t0: float,
                 ledger: Ledger):
        self.gateway, self.opened, self.wants_usage, self.t0 = gateway, opened, wants_usage, t0
        self.ledger = ledger
        self.ttft: float | None = None
        self.model: str | None = None
        self.usage: dict | None = None
        self.finish: str | None = None
        self.chunks = 0              # content deltas seen: the count when there is no usage

    def events(self) -> Iterator[bytes]:
        status, upstream = 200, self.opened.upstream
        try:
            status = yield from self._pass_through()
        except GeneratorExit:
            status = 499   # the client left: closing the upstream's connection stops it
            self.ledger.record["cancelled"] = True
            self.ledger.log.update(cancelled=1)
            raise
        except httpx2.HTTPError as exc:   # too late for another replica: say so, in-stream
            status = 502
            self.gateway.pool.mark_down(upstream, describe(exc))
            error = BadGatewayError(f"upstream {upstream.name!r} broke off the answer: "
                                    f"{describe(exc)}", code="upstream_disconnected")
            self.ledger.error_code(error.code)
            yield f"data: {json.dumps(error.to_dict())}\n\ndata: [DONE]\n\n".encode()
        finally:
            self.gateway.close_opened(self.opened)
            self._record(status == 200)
            self.ledger.end(status)

    def _pass_through(self) -> Iterator[bytes]:
        """The upstream's events, each as soon as it is complete, up to its [DONE]: what
        follows on the connection (its end, or a server cutting it) is not the client's
        business. Returns the status for the logs."""
        frames = SSEFrames()
        for data in _chain(self.opened.content, self.opened.rest):
            for frame in frames.feed(data):
                if _is_done(frame):
                    return (yield from self._end(frame))
                if self._keep(frame):
                    yield frame + b"\n\n"
        if _is_done(frames.rest):   # the last event without its blank line
            return (yield from self._end(frames.rest))
        if frames.rest.strip():
            yield frames.rest + b"\n\n"
        if self.finish is None:     # closed cleanly, but before the answer was finished
            return (yield from self._end(b"data: [DONE]"))
        return 200

    def _end(self, done: bytes) -> Iterator[bytes]:
        """The upstream's [DONE]; an answer without a finish reason was cut short by the
        upstream (llama_cpp.server does so when another request arrives): the client is told
        in-stream instead of taking the piece for the whole answer. Returns the status."""
        status = 200
        if self.finish is None:
            status = 502
            error = BadGatewayError(
                f"upstream {self.opened.upstream.name!r} ended the answer without finishing "
                "it (a llama_cpp.server upstream does so when another request arrives: run "
                "it with --interrupt_requests false)", code="upstream_incomplete")
            self.ledger.error_code(error.code)
            yield f"data: {json.dumps(error.to_dict())}\n\n".encode()
        yield done + b"\n\n"
        return status

    def _keep(self, frame: bytes) -> bool:
        """Look at one event; False for the usage chunk vlserve asked for on its own."""
        data = b"\n".join(line[5:].lstrip() for line in frame.split(b"\n")
                          if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            return True
        try:
            event = json.loads(data)
        except ValueError:
            return True
        if not isinstance(event, dict):
            return True
        choices = event.get("choices") or []
        self.model = self.model or event.get("model")
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                self.chunks += 1
                self.ttft = self.ttft or time.monotonic() - self.t0
            self.finish = choice.get("finish_reason") or self.finish
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
            if not choices and not self.wants_usage:
                return False
        return True

    def _record(self, finished: bool) -> None:
        """Counts for the audit log and metrics: the upstream's usage when it sent one,
        else the content chunks seen (one token each on the servers that omit usage)."""
        usage = dict(self.usage or {})
        usage.setdefault("completion_tokens", self.chunks)
        tokens = usage["completion_tokens"]
        timings = {"ttft_ms": round(self.ttft * 1000, 2)} if self.ttft is not None else {}
        elapsed = time.monotonic() - self.t0
        if self.ttft is not None and tokens > 1 and elapsed > self.ttft:
            timings["decode_tokens_per_s"] = round((tokens - 1) / (elapsed - self.ttft), 2)
        if finished:
            _record_usage(usage, self.model, self.ledger)
        self.ledger.record.update(finish_reason=self.finish, timings=timings)
        self.ledger.log.update(completion_tokens=tokens, finish=self.finish)


def _is_done(frame: bytes) -> bool:
    return frame.strip() in (b"data: [DONE]", b"data:[DONE]")


class SSEFrames:
    """Bytes as they arrive -> whole server-sent events (without their blank line), so each
    is passed on the moment it is complete and never split or merged."""

    def __init__(self):
        self.rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        # CRLF may be cut between two reads: normalise the joined bytes, not each read
        *frames, self.rest = (self.rest + data).replace(b"\r\n", b"\n").split(b"\n\n")
        return frames


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
