"""The single thread that owns the engine.

HTTP threads `submit()` a prepared prompt and read events from the job's own queue; the
worker runs one job at a time. A full queue is refused at once (503), never piled up; a
job whose client left or whose deadline passed is skipped or stopped within a token.
Exceptions travel back through the job's queue, so the HTTP thread decides the status.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from typing import Callable

from PIL import Image

from .engine import Delta, Engine, Finished, Prompt
from .errors import APIError, InternalError, ServiceUnavailableError, TimeoutError_
from .images import ImageLimits, PreparedImage, prepare_image
from .protocol import ChatRequest, ImagePart, Message, SamplingParams, TextPart

log = logging.getLogger(__name__)

Event = Delta | Finished | APIError


class Job:
    def __init__(self, prompt: Prompt, params: SamplingParams, deadline: float):
        self.prompt = prompt
        self.params = params
        self.deadline = deadline
        self._events: queue.Queue[Event] = queue.Queue()
        self._cancel = threading.Event()

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


class Worker:
    """Loads (optionally), warms up, then serves jobs one at a time on its own thread."""

    def __init__(self, load: Callable[[], Engine], *, queue_size: int, request_timeout: float,
                 warmup: bool = True):
        self._load = load
        self._warmup = warmup
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.request_timeout = request_timeout
        self.engine: Engine | None = None
        self.state = "loading"          # loading | warming | ready | failed | stopped
        self.reason = "loading the model"
        self.warmup_seconds: float | None = None
        self.busy = False
        # Served-request counters for /health: finish reasons and tokens generated.
        # Keys fixed up front so /health can copy the dict while this thread updates it.
        self.stats = dict.fromkeys(
            ("stop", "length", "cancelled", "timeout", "tokens_generated"), 0)
        self._thread = threading.Thread(target=self._run, name="vlserve-engine", daemon=True)

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.state, self.reason = "stopped", "the server is shutting down"
        self._queue.put(None)  # type: ignore[arg-type]  # wakes the thread
        self._thread.join(timeout)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while self.state in ("loading", "warming") and time.monotonic() < end:
            time.sleep(0.05)
        return self.state == "ready"

    def require_ready(self) -> Engine:
        if self.state != "ready":
            raise ServiceUnavailableError(f"the model is not ready: {self.reason}",
                                          code="model_not_ready", retry_after=5)
        return self.engine  # type: ignore[return-value]

    def check_room(self) -> None:
        """Refuse early, before a request spends time decoding images, if it cannot queue."""
        if self._queue.full():
            raise self._busy()

    def submit(self, prompt: Prompt, params: SamplingParams) -> Job:
        job = Job(prompt, params, time.monotonic() + self.request_timeout)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            prompt.close()
            raise self._busy() from None
        return job

    def _busy(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"the server is busy: {self._queue.maxsize} requests are already waiting; "
            "retry shortly", retry_after=2)

    # -- the engine thread --

    def _run(self) -> None:
        if not self._start_engine():
            return
        while True:
            job = self._queue.get()
            if job is None or self.state == "stopped":
                break
            self.busy = True
            try:
                self._serve(job)
            finally:
                self.busy = False
                job.prompt.close()

    def _start_engine(self) -> bool:
        try:
            self.engine = self._load()
            if self._warmup:
                self.state, self.reason = "warming", "warming up"
                t0 = time.monotonic()
                warm_up(self.engine)
                self.warmup_seconds = round(time.monotonic() - t0, 3)
                log.info("warm-up done in %.2fs", self.warmup_seconds)
        except Exception as exc:  # the server stays up to report why in /health
            log.exception("engine start failed")
            self.state, self.reason = "failed", str(exc)
            return False
        self.state, self.reason = "ready", "ready"
        return True

    def _serve(self, job: Job) -> None:
        if job.cancelled:
            return
        if job.expired:
            job.put(TimeoutError_("the request waited too long in the queue"))
            return
        stop = lambda: job.cancelled or job.expired  # noqa: E731
        try:
            for event in self.engine.generate(job.prompt, job.params, stop):
                if isinstance(event, Finished):
                    event = self._count(job, event)
                job.put(event)
        except APIError as exc:
            job.put(exc)
        except Exception as exc:
            log.exception("generation failed")
            job.put(InternalError(f"generation failed: {type(exc).__name__}"))


    def _count(self, job: Job, event: Finished) -> Finished | TimeoutError_:
        """Tally a finished job; one stopped by its deadline, not its client, is a timeout."""
        timed_out = event.finish_reason == "cancelled" and job.expired and not job.cancelled
        self.stats["timeout" if timed_out else event.finish_reason] += 1
        self.stats["tokens_generated"] += event.completion_tokens
        if timed_out:
            return TimeoutError_(f"the request exceeded the {self.request_timeout:g}s timeout")
        return event


def warm_up(engine: Engine) -> None:
    """One text and one small image request through the real path, so the first user
    request does not pay for lazy allocations and kernel selection."""
    image = _warmup_image()
    for parts in ((TextPart("Hello"),), (ImagePart("warmup"), TextPart("Describe."))):
        request = ChatRequest(messages=(Message("user", parts),),
                              params=SamplingParams(max_tokens=2, temperature=0))
        images = [image] if any(isinstance(p, ImagePart) for p in parts) else []
        prompt = engine.prepare(request, images)
        try:
            for _ in engine.generate(prompt, request.params, lambda: False):
                pass
        finally:
            prompt.close()


def _warmup_image() -> PreparedImage:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((64, 64)).convert("RGB").save(buf, "PNG")
    return prepare_image(buf.getvalue(), ImageLimits())
