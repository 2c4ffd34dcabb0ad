"""What the worker's queue holds besides prefills (`prefills`): a `Job` (one chat request,
with its own event queue and cancel flag) and a `Switch` (a request to load or unload a
model)."""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

from .llama import Engine, Prompt
from .output import Delta, Finished, Progress
from ..chat.protocol import SamplingParams
from ..errors import APIError

Event = Progress | Delta | Finished | APIError


class Job:
    """One chat request. `prepare(engine)` tokenizes it for an engine; the HTTP thread does
    that up front when the model it wants is loaded (so a bad request gets its 4xx before
    queueing), the worker does it (again) when the model changed meanwhile."""

    def __init__(self, params: SamplingParams, deadline: float, *, prompt: Prompt | None,
                 engine: Engine | None, prepare: Callable[[Engine], Prompt] | None,
                 model: str | None, owner: str | None = None, progress: bool = False):
        self.params = params
        self.progress = progress    # it asked for Progress events before its first token
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
