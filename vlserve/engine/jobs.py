"""What the worker's queue holds: a `Job` (one chat request, with its own event queue and
cancel flag), a `Prefill` (a draft conversation to evaluate in the background) and a
`Switch` (a request to load or unload a model)."""

from __future__ import annotations

import queue
import secrets
import threading
import time
from typing import Callable

from .llama import Engine, Prompt
from .output import Delta, Finished
from ..chat.protocol import SamplingParams
from ..errors import APIError

Event = Delta | Finished | APIError


class Job:
    """One chat request. `prepare(engine)` tokenizes it for an engine; the HTTP thread does
    that up front when the model it wants is loaded (so a bad request gets its 4xx before
    queueing), the worker does it (again) when the model changed meanwhile."""

    def __init__(self, params: SamplingParams, deadline: float, *, prompt: Prompt | None,
                 engine: Engine | None, prepare: Callable[[Engine], Prompt] | None,
                 model: str | None, owner: str | None = None):
        self.params = params
        self.owner = owner          # who sent it (a key's name or an address): its prefills
        self.deadline = deadline
        self.prompt, self.engine, self.prepare = prompt, engine, prepare
        self.model = model          # the model id this request needs; None = whichever
        self.served_model: str | None = None   # the id of the model it ran on
        self._events: queue.Queue[Event] = queue.Queue()
        self._cancel = threading.Event()
        self.taken = False          # the engine thread took it from the queue (worker lock)
        self.withdrawn = False      # left the queue before that (worker lock)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def put(self, event: Event) -> None:
        self._events.put(event)

    def next_event(self, timeout: float) -> Event | None:
        """The next event, or None if nothing arrived in `timeout` seconds."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        if self.prompt is not None:
            self.prompt.close()


class Switch:
    """A request to make `model` the loaded model (or, with `unload`, to free it until the
    next request needs it); `done` is set when it is done (or failed)."""

    def __init__(self, model: str | None, unload: bool = False):
        self.model = model
        self.unload = unload
        self.done = threading.Event()
        self.error: APIError | None = None

    def finish(self, error: APIError | None = None) -> None:
        self.error = error
        self.done.set()


# How a prefill ended: done (its whole prompt is in a sequence), images_cached (no sequence
# it could use: its images went into the embedding cache only), taken_over (the request
# arrived and continued from it), superseded (a newer prefill of the same owner, or the
# owner's request, replaced it), cancelled (DELETE, or its deadline), dropped (the model
# changed or the server stopped), failed.
PREFILL_ENDS = ("done", "images_cached", "taken_over", "superseded", "cancelled", "dropped",
                "failed")


class Prefill:
    """A draft conversation to evaluate into a sequence before it is sent (prefill while
    typing). The engine thread moves it queued -> waiting -> running -> one of PREFILL_ENDS; any
    thread may read `view()` (a copy taken under its lock) or wait for `ended`."""

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

    def end(self, state: str, result: dict | None = None) -> bool:
        """Its one ending (engine thread; False if it had ended already); a cancelled one
        ends as what cancelled it."""
        if self.ended.is_set():
            return False
        with self._lock:
            if state == "cancelled" and self._reason is not None:
                state = self._reason
            self._state, self._result = state, dict(result or {})
        self.prompt.close()
        self.ended.set()
        return True

    def view(self) -> dict:
        with self._lock:
            return {"id": self.id, "object": "chat.prefill", "model": self.model,
                    "state": self._state, "prompt_tokens": self.prompt.n_tokens,
                    **self._result}
