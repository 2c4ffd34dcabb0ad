"""Upstream OpenAI-compatible servers (vLLM, llama.cpp, another vlserve) and their health.

`Pool` owns what is known about each upstream: the models it serves (read from its
/v1/models), whether it answers, and how many requests vlserve has in flight on it. A
background thread re-reads every upstream's /v1/models each `interval` seconds; a request
that cannot connect marks its upstream down at once, and a later successful check or request
marks it up again. Upstreams serving the same model id are replicas of it: `choose` picks
the healthy one with the fewest requests in flight.

Nothing here forwards a chat request: that is forward.py.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx2

log = logging.getLogger("vlserve.upstream")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LOCAL = "local"   # the backend name of the model served in this process
# What an upstream's model cards say about the server behind them (`owned_by`): the server
# kind decides how vlserve's parameters are mapped (forward.py).
KINDS = {"vllm": "vllm", "vlserve": "vlserve", "llamacpp": "llama.cpp", "me": "llama.cpp"}


class UpstreamSpecError(ValueError):
    pass


@dataclass(frozen=True)
class UpstreamSpec:
    """One `--upstream NAME=URL` (and its `--upstream-key NAME=KEY`)."""
    name: str
    url: str                       # base URL without the trailing /v1
    api_key: str | None = field(default=None, repr=False)


def parse_specs(upstreams, keys=()) -> tuple[UpstreamSpec, ...]:
    """`NAME=URL` strings (and `NAME=KEY` strings) -> specs; errors name the bad entry."""
    key_of = {}
    for item in keys:
        name, sep, key = item.partition("=")
        if not sep or not key:
            raise UpstreamSpecError(f"an upstream key must look like NAME=KEY, got {name!r}=…")
        key_of[name.strip()] = key.strip()
    specs, seen = [], set()
    for item in upstreams:
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not NAME.fullmatch(name) or name == LOCAL:
            raise UpstreamSpecError(
                f"an upstream must look like NAME=URL with NAME made of letters, digits, "
                f"'.', '_' or '-' (and not {LOCAL!r}); got {item!r}")
        if name in seen:
            raise UpstreamSpecError(f"upstream {name!r} is given twice")
        seen.add(name)
        specs.append(UpstreamSpec(name, normalize_url(url, name), key_of.pop(name, None)))
    if key_of:
        raise UpstreamSpecError(f"--upstream-key for unknown upstream(s): {', '.join(key_of)}")
    return tuple(specs)


def normalize_url(url: str, name: str) -> str:
    """http(s)://host[:port][/prefix] with any trailing / and /v1 removed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamSpecError(f"upstream {name!r}: {url!r} is not an http(s) URL")
    if parts.query or parts.fragment or parts.username:
        raise UpstreamSpecError(f"upstream {name!r}: give the key with --upstream-key, and "
                                "no query or fragment in the URL")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


class Upstream:
    """One upstream server and what the last check and requests found out about it."""

    def __init__(self, spec: UpstreamSpec):
        self.spec = spec
        self.name, self.url = spec.name, spec.url
        self.up = False
        self.cards: dict[str, dict] = {}   # model id -> its card from /v1/models
        self.kind = "openai"          # vllm | llama.cpp | vlserve | openai (unknown)
        self.in_flight = 0
        self.last_error: str | None = None
        self.failovers = 0            # requests that went elsewhere because this one failed

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.spec.api_key}"} if self.spec.api_key else {}

    def status(self) -> dict:
        """For /health: no URL (it is open without a key), just the name and the state."""
        return {"up": self.up, "kind": self.kind, "models": list(self.cards),
                "in_flight": self.in_flight, "error": None if self.up else self.last_error}


class Pool:
    """Every upstream, their health, and the choice of a replica for a model."""

    def __init__(self, specs, *, interval: float = 5.0, connect_timeout: float = 5.0,
                 check_timeout: float = 5.0):
        self.upstreams = [Upstream(s) for s in specs]
        self.interval = interval
        self.connect_timeout = connect_timeout
        self._check_timeout = check_timeout
        self._lock = threading.Lock()
        self._turn = 0                # rotates ties between equally loaded replicas
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx2.Client(timeout=httpx2.Timeout(check_timeout,
                                                            connect=connect_timeout))

    # -- health --

    def start(self) -> "Pool":
        """Check every upstream once (in parallel, so a dead one costs one timeout, not one
        each), then keep checking in the background."""
        checks = [threading.Thread(target=self.check, args=(u,), daemon=True)
                  for u in self.upstreams]
        for t in checks:
            t.start()
        for t in checks:
            t.join(self.connect_timeout + self._check_timeout + 1)
        self._thread = threading.Thread(target=self._watch, name="vlserve-upstreams",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._check_timeout + self.connect_timeout + 1)
        self._client.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            for upstream in self.upstreams:
                if self._stop.is_set():
                    return
                if upstream.up and upstream.in_flight:
                    # Its traffic is its check (a failing request marks it down), and a check
                    # would hurt: llama_cpp.server cuts a running stream when any other
                    # request arrives, /v1/models included, and answers that only after the
                    # generation (a long one would time the check out: "down" while working).
                    continue
                self.check(upstream)

    def check(self, upstream: Upstream) -> bool:
        """Read the upstream's /v1/models: up (with its models) or down (with why). The
        models of a down upstream are kept, so its requests get "down", not "unknown"."""
        try:
            response = self._client.get(f"{upstream.url}/v1/models",
                                        headers=upstream.headers())
            if response.status_code in (401, 403):
                raise _CheckFailed(f"/v1/models answered {response.status_code}: check "
                                   f"--upstream-key {upstream.name}=…")
            if response.status_code != 200:
                raise _CheckFailed(f"/v1/models answered {response.status_code}")
            cards = _cards(response)
        except (httpx2.HTTPError, _CheckFailed) as exc:
            self.mark_down(upstream, describe(exc))
            return False
        upstream.cards = cards
        owners = {str(c.get("owned_by", "")).lower() for c in cards.values()}
        upstream.kind = next((KINDS[o] for o in owners if o in KINDS), "openai")
        self.mark_up(upstream)
        return True

    def mark_down(self, upstream: Upstream, reason: str) -> None:
        if upstream.up or upstream.last_error != reason:
            log.warning("upstream %s is down: %s", upstream.name, reason)
        upstream.up, upstream.last_error = False, reason

    def mark_up(self, upstream: Upstream) -> None:
        if not upstream.up:
            log.info("upstream %s is up (%s, models: %s)", upstream.name, upstream.kind,
                     ", ".join(upstream.cards) or "none")
        upstream.up, upstream.last_error = True, None

    # -- routing --

    def models(self) -> dict[str, list[Upstream]]:
        """Model id -> the upstreams serving it, in the order they were declared."""
        found: dict[str, list[Upstream]] = {}
        for upstream in self.upstreams:
            for model in upstream.cards:
                found.setdefault(model, []).append(upstream)
        return found

    def replicas(self, model: str) -> list[Upstream]:
        return [u for u in self.upstreams if model in u.cards]

    def default_model(self) -> str | None:
        """The model for requests naming none of ours: the first model of the first
        upstream that is up (else of the first that ever answered)."""
        for upstream in sorted(self.upstreams, key=lambda u: not u.up):
            if upstream.cards:
                return next(iter(upstream.cards))
        return None

    def choose(self, model: str, exclude=()) -> Upstream | None:
        """The healthy replica of `model` with the fewest requests in flight (ties rotate);
        None when every replica is down or already tried. Counts it as in flight."""
        with self._lock:
            ready = [u for u in self.replicas(model) if u.up and u not in exclude]
            if not ready:
                return None
            self._turn += 1
            best = min(ready, key=lambda u: (u.in_flight,
                                             (ready.index(u) - self._turn) % len(ready)))
            best.in_flight += 1
            return best

    def release(self, upstream: Upstream) -> None:
        with self._lock:
            upstream.in_flight -= 1


class _CheckFailed(Exception):
    pass


def _cards(response: httpx2.Response) -> dict[str, dict]:
    try:
        body = response.json()
        data = body["data"]
        cards = {str(c["id"]): c for c in data if isinstance(c, dict) and c.get("id")}
    except (ValueError, KeyError, TypeError):
        raise _CheckFailed("/v1/models did not answer an OpenAI model list") from None
    return cards


def describe(exc: BaseException) -> str:
    """A short reason for logs, /health and error messages: never the URL or a key."""
    kinds = ((httpx2.ConnectTimeout, "connection timed out"),
             (httpx2.ConnectError, "connection refused or host unreachable"),
             (httpx2.ReadTimeout, "no answer in time"),
             (httpx2.RemoteProtocolError, "closed the connection"),
             (httpx2.ReadError, "connection lost"),
             (httpx2.WriteError, "connection lost while sending"),
             (httpx2.TimeoutException, "timed out"),
             (httpx2.HTTPError, "HTTP error"))
    if isinstance(exc, _CheckFailed):
        return str(exc)
    for kind, text in kinds:
        if isinstance(exc, kind):
            return text
    return type(exc).__name__

