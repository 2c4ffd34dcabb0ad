"""Per-key limits on chat inference: requests per minute and requests at once, else 429.

One engine serves everyone, so one key (or, without keys, one client address) must not
starve the others: `--rate-limit N` spreads its chat requests to N a minute and
`--max-streams N` caps how many it has queued or generating at once. Both answer 429 in
OpenAI's shape with Retry-After, which the `openai` SDKs honour by backing off on their own.

Only inference is limited: the model list, /health and admin stay responsive to a client
that hit its limit. Auth's hook runs first, so a request without a valid key gets 401 and
spends nothing here.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import cachetools
from flask import Flask, g, request

from ..config import Settings
from ..errors import APIError

LIMITED_ENDPOINTS = {"api.chat_completions"}
WINDOW = 60.0              # seconds: --rate-limit counts requests per minute
MAX_IDENTITIES = 100_000   # rate buckets kept at most (an idle one expires after WINDOW)
EPSILON = 1e-9             # float slack, so a token due at t is there at t


class RateLimitError(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None):
        super().__init__(message, code=code, retry_after=max(1, int(retry_after)))


class TooManyStreamsError(RateLimitError):
    """Distinct code, same status and type: SDKs treat both as a 429 to retry later."""
    code = "too_many_concurrent_requests"


def now() -> float:
    """The limits' clock: a module function of its own so tests move time, not sleep."""
    return time.monotonic()


class RateLimiter:
    """A token bucket per identity: `per_minute` requests in a burst, then one more every
    60/per_minute seconds. Thread-safe; a refused request spends nothing."""

    def __init__(self, per_minute: int, clock: Callable[[], float] | None = None):
        self.capacity = per_minute
        self.rate = per_minute / WINDOW            # tokens per second
        self._clock = clock or (lambda: now())     # late-bound, so patching `now` works
        self._lock = threading.Lock()
        # identity -> (tokens, when). A bucket idle for WINDOW is full again, the same as no
        # bucket, so letting it expire loses nothing and keeps memory to recent clients.
        self._buckets = cachetools.TTLCache(MAX_IDENTITIES, WINDOW, timer=self._clock)

    def take(self, identity: str) -> int:
        """0 when the request may go (it spends a token); otherwise the whole seconds until
        one would be there (at least 1)."""
        with self._lock:
            t = self._clock()
            tokens, then = self._buckets.get(identity, (self.capacity, t))
            tokens = min(self.capacity, tokens + (t - then) * self.rate)
            if tokens + EPSILON >= 1:
                self._buckets[identity] = (max(0.0, tokens - 1), t)
                return 0
            return max(1, math.ceil((1 - tokens) / self.rate - EPSILON))


class StreamSlots:
    """How many chat requests each identity has in flight, `limit` at most."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}   # only identities with requests in flight

    def running(self, identity: str) -> int:
        with self._lock:
            return self._running.get(identity, 0)

    def acquire(self, identity: str) -> Callable[..., None] | None:
        """A release function (calling it again is a no-op), or None when `limit` run."""
        with self._lock:
            n = self._running.get(identity, 0)
            if n >= self.limit:
                return None
            self._running[identity] = n + 1
        released = False

        def release(_record=None) -> None:   # g.on_finish passes the request's record
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._running[identity] - 1
                if left:
                    self._running[identity] = left
                else:
                    del self._running[identity]
        return release


class Limits:
    """One app's limiters (None when off) and how many requests each refused."""

    def __init__(self, settings: Settings):
        self.rate = RateLimiter(settings.rate_limit) if settings.rate_limit else None
        self.slots = StreamSlots(settings.max_streams) if settings.max_streams else None
        self._refused = {"rate_limited": 0, "too_many_streams": 0}
        self._lock = threading.Lock()

    def stats(self) -> dict:
        with self._lock:
            return dict(self._refused)

    def _count(self, what: str) -> None:
        with self._lock:
            self._refused[what] += 1

    def admit(self) -> None:
        """Let this chat request in or raise a 429. A slot is taken first because giving
        it back is free, unlike a token: a refused request spends neither."""
        who = identity()
        release = None
        if self.slots is not None:
            release = self.slots.acquire(who)
            if release is None:
                self._count("too_many_streams")
                raise TooManyStreamsError(
                    f"too many requests at once: {_describe(who)} already has "
                    f"{self.slots.running(who)} chat request(s) running or queued and the "
                    f"limit is {self.slots.limit} at once; retry when one has finished",
                    retry_after=1)
            g.limits_release = release
            g.on_finish.append(release)   # web.lifecycle.finish_request calls it once the response is complete
        if self.rate is not None:
            wait = self.rate.take(who)
            if wait:
                if release is not None:
                    release()
                self._count("rate_limited")
                raise RateLimitError(
                    f"rate limit reached: {_describe(who)} may send {self.rate.capacity} "
                    f"chat requests per minute; try again in {wait} s", retry_after=wait)


def identity() -> str:
    """Whose budget a request spends: its key's name (auth sets it when keys are
    configured), otherwise its client's address. Prefixed so the two never collide."""
    key = g.get("key_name")
    return f"key:{key}" if key else f"addr:{request.remote_addr}"


def _describe(who: str) -> str:
    kind, _, name = who.partition(":")
    return f"the key {name!r}" if kind == "key" else "this client"


def init_app(app: Flask, settings: Settings) -> None:
    """Limit chat inference as `settings` say. Once per app: a second call is a no-op, so
    it is safe on an app that create_app already set up."""
    state = app.extensions["vlserve"]
    if "limits" in state:
        return
    limits = state["limits"] = Limits(settings)
    if limits.rate is None and limits.slots is None:
        return   # both off: no hook on any request

    @app.before_request
    def limit_chat():   # registered after auth's: unauthenticated requests never get here
        if request.method == "POST" and request.endpoint in LIMITED_ENDPOINTS:
            limits.admit()

    @app.after_request
    def release_on_close(response):
        # g.on_finish frees the slot when the request is finished; this also frees it when
        # the server closes the response, which covers a stream closed before its first
        # chunk (its generator never ran, so it never finishes itself): a slot that is
        # never freed would lock its key out until a restart. Not teardown_request: Flask
        # runs that as soon as a streaming view returns, long before the stream ends.
        release = g.pop("limits_release", None)
        if release is not None:
            response.call_on_close(release)
        return response

def stats(app: Flask) -> dict:
    """Requests refused so far, for metrics: {"rate_limited": n, "too_many_streams": n}."""
    limits = app.extensions["vlserve"].get("limits")
    return limits.stats() if limits is not None else {"rate_limited": 0,
                                                      "too_many_streams": 0}
