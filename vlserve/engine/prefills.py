"""Background prefills (prefill while typing): a draft conversation evaluated into a
sequence while its author types, so that sending it costs what a follow-up costs.

A `Prefill` is one of them; `Prefills` is the worker's book of them. They queue beside jobs
but never count against the queue's size, never load or switch a model (one prepared for a
model that is gone is dropped), and give way to every request (batch.py says how). Each
owner (an API key's name, else a client address) has at most one: a newer prefill, or the
owner's request, supersedes the older. A prefill with no sequence it may use still puts its
images into the embedding cache, when no request is running.

Threads: HTTP threads `add`, `find` and read `counts()`; everything else runs on the engine
thread.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

import cachetools

from .batch import Batcher, Sequence
from .llama import Engine, Prompt
from .output import Finished
from ..chat.protocol import SamplingParams

log = logging.getLogger("vlserve.worker")


# How a prefill ended: done (its whole prompt is in a sequence), images_cached (no sequence
# it could use: its images went into the embedding cache only), taken_over (the request
# arrived and continued from it), superseded (a newer prefill of the same owner, or the
# owner's request, replaced it), cancelled (DELETE, or its deadline), dropped (the model
# changed or the server stopped), failed.
PREFILL_ENDS = ("done", "images_cached", "taken_over", "superseded", "cancelled", "dropped",
                "failed")


class Prefill:
    """A draft conversation to evaluate into a sequence before it is sent (prefill while
    typing). The engine thread moves it queued -> waiting -> running -> one of
    PREFILL_ENDS; any thread may read `view()` (a copy taken under its lock) or wait for
    `ended`."""

    def __init__(self, prompt: Prompt, engine: Engine, *, owner: str, model: str,
                 deadline: float):
        self.id = "prefill-" + secrets.token_hex(12)
        self.prompt, self.engine, self.owner, self.model = prompt, engine, owner, model
        self.deadline = deadline
        self.stats = {"images_encoded": 0, "images_from_cache": 0, "image_encode_ms": 0.0}
        self.ended = threading.Event()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._state, self._reason, self._result = "queued", None, {}

    @property
    def stopped(self) -> bool:
        """Cancelled (or superseded), or past its deadline: the engine ends it."""
        return self._cancel.is_set() or time.monotonic() > self.deadline

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
        self._cancel.set()

    def moved(self, state: str) -> None:
        """waiting (for a sequence) or running (in one): engine thread."""
        with self._lock:
            self._state = state

    def end(self, state: str, result: dict | None = None) -> str | None:
        """Its one ending (engine thread): the state it ended in (a cancelled one ends as
        what cancelled it), None if it had ended already."""
        if self.ended.is_set():
            return None
        with self._lock:
            if state == "cancelled" and self._reason is not None:
                state = self._reason
            self._state, self._result = state, dict(result or {})
        self.prompt.close()
        self.ended.set()
        return state

    def view(self) -> dict:
        with self._lock:
            return {"id": self.id, "object": "chat.prefill", "model": self.model,
                    "state": self._state, "prompt_tokens": self.prompt.n_tokens,
                    **self._result}


class Prefills:
    """One worker's prefills: by owner, those waiting for a sequence and those in one; by
    id, the recent ones (for status reads); how each ended, counted."""

    def __init__(self):
        self._waiting: dict[str, Prefill] = {}
        self._running: dict[str, Prefill] = {}
        self._by_id: cachetools.LRUCache[str, Prefill] = cachetools.LRUCache(1024)
        self._ends = dict.fromkeys(PREFILL_ENDS, 0)
        self._lock = threading.Lock()

    # -- any thread --

    def add(self, prefill: Prefill) -> None:
        with self._lock:
            self._by_id[prefill.id] = prefill

    def find(self, prefill_id: str, owner: str) -> Prefill | None:
        """A recent prefill of `owner` by id (None if unknown, or another owner's)."""
        with self._lock:
            prefill = self._by_id.get(prefill_id)
        return prefill if prefill is not None and prefill.owner == owner else None

    def counts(self) -> dict:
        """For /health: prefills waiting and running, and how the others ended."""
        with self._lock:
            return {"waiting": len(self._waiting), "running": len(self._running),
                    **self._ends}

    # -- the engine thread --

    @property
    def running(self) -> bool:
        return bool(self._running)

    def hold(self, prefill: Prefill, engine: Engine | None) -> None:
        """A new prefill replaces its owner's previous one, waiting or running (a running
        one ends at the next step or admission; its KV stays, for this one to reuse)."""
        self.supersede(prefill.owner)
        if prefill.engine is not engine:
            self.end(prefill, "dropped")   # prepared for a model no longer loaded
            return
        with self._lock:
            self._waiting[prefill.owner] = prefill
        prefill.moved("waiting")

    def supersede(self, owner: str | None) -> None:
        """The owner's prefill ends: a newer one came, or its request."""
        with self._lock:
            waiting = self._waiting.pop(owner, None) if owner is not None else None
            running = self._running.get(owner) if owner is not None else None
        if waiting is not None:
            self.end(waiting, "superseded")
        if running is not None:
            running.cancel("superseded")

    def start(self, runner: Batcher, engine: Engine, requests_running: bool) -> None:
        """Give waiting prefills a sequence. One that finds none it may use, while no
        request runs, has its images encoded into the embedding cache and ends there.
        (Called at every turn of the engine loop: nothing to do costs nothing.)"""
        if not self._waiting:
            return
        for prefill in list(self._waiting.values()):
            if prefill.stopped or prefill.engine is not engine:
                self._leave(prefill)
                self.end(prefill, "cancelled" if prefill.stopped else "dropped")
                continue
            sequence = Sequence(prefill.prompt, SamplingParams(), lambda p=prefill: p.stopped,
                                lambda event, p=prefill: self._ended(p, event),
                                background=True, owner=prefill.owner)
            try:
                admitted = runner.admit(sequence)
            except Exception as exc:
                log.error("a prefill could not start: %r", exc)
                self._leave(prefill)
                self.end(prefill, "failed")
                continue
            if admitted:
                self._leave(prefill, running=True)
                prefill.moved("running")
            elif not requests_running:
                self._leave(prefill)
                try:
                    engine.encode_images(prefill.prompt, prefill.stats)
                except Exception as exc:
                    log.error("a prefill's images could not be encoded: %r", exc)
                    self.end(prefill, "failed")
                    continue
                self.end(prefill, "images_cached", dict(prefill.stats))

    def drop(self) -> None:
        """The model goes (or the server stops): waiting prefills end now, running ones
        when the batcher closes."""
        with self._lock:
            waiting, self._waiting = list(self._waiting.values()), {}
            running = list(self._running.values())
        for prefill in waiting:
            self.end(prefill, "dropped")
        for prefill in running:
            prefill.cancel("dropped")

    def end(self, prefill: Prefill, state: str, result: dict | None = None) -> None:
        ended = prefill.end(state, result)
        if ended is not None:
            with self._lock:
                self._ends[ended] += 1

    def _leave(self, prefill: Prefill, *, running: bool = False) -> None:
        """Out of waiting (into running)."""
        with self._lock:
            del self._waiting[prefill.owner]
            if running:
                self._running[prefill.owner] = prefill

    def _ended(self, prefill: Prefill, event) -> None:
        """How a running prefill ended (the batcher emits nothing else for one)."""
        with self._lock:
            if self._running.get(prefill.owner) is prefill:
                del self._running[prefill.owner]
        if isinstance(event, Finished):
            self.end(prefill, event.finish_reason,
                     {"cached_tokens": event.cached_tokens, **event.timings})
        else:
            log.error("a prefill failed: %r", event)
            self.end(prefill, "failed")
