"""The single thread that owns the engine — and so the only place a model is loaded, switched
or unloaded.

HTTP threads `submit()` a job and read events from the job's own queue. The worker takes
queued items in order — jobs, and requests to load another model — admits jobs into the
engine's free sequences and steps them together (batch.py: continuous batching). A full
queue is refused at once (503), never piled up; a job whose client left or whose deadline
passed is skipped or stopped within a token.
Exceptions travel back through the job's queue, so the HTTP thread decides the status.

Switching happens here too, once the running jobs are done: jobs queued behind a switch
wait for it, and so does a job for another model; a job
prepared (tokenized) for a model that is no longer loaded is prepared again for the one that
is; a load that fails puts the previous model back, so the server never ends up without one.

The engine's lifetime: a llama.cpp model is freed only when no thread can still use it. Any
other thread that touches the engine (an HTTP thread tokenizing a request, /health reading
its cache) holds a `lease()`; freeing it (a switch, an unload, the keep-alive timeout) first
refuses new leases, then waits for the held ones to end. A Python reference to an engine does
not keep llama.cpp's memory alive, so nothing outside a lease may call into it. A request
whose model is switched away while it is being prepared finishes preparing on the old engine
(the switch waits for it), then is prepared again here, on the engine it will run on.

Every job ends with exactly one terminal event (Finished or an error), whatever happens to it:
run, refused, expired, cancelled while queued (`withdraw`), or left over at shutdown.

Prefills (`prefill()`, prefills.py) are background work: queued beside jobs, they never
count against the queue's size, never load a model, and give way to every request.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import queue
import threading
import time
from typing import Callable

from .batch import Sequence
from .jobs import Job, Switch
from .prefills import Prefill, Prefills
from .llama import Engine, Prompt
from .output import Delta, Finished, Progress
from .warmup import warm_up
from ..errors import (APIError, InternalError, ModelLoadError, ServiceUnavailableError,
                     TimeoutError_)
from .events import EventHub
from ..chat.protocol import SamplingParams

log = logging.getLogger("vlserve.worker")

ARRIVAL_WAIT = 0.05   # seconds a new prefill waits for requests still on their way in
LoadProgress = Callable[[float], None]
Loader = Callable[[str | None, LoadProgress], Engine]   # (model id, progress 0..1) -> engine


class Worker:
    """Loads, warms up, then serves jobs one at a time on its own thread."""

    def __init__(self, load: Loader, *, queue_size: int, request_timeout: float,
                 warmup: bool = True, model: str | None = None, keep_alive: float = 0):
        self._load = load
        self._warmup = warmup
        self._keep_alive = keep_alive   # seconds idle before unloading; 0 = never
        self._queue: queue.Queue[Job | Prefill | Switch | None] = queue.Queue()
        self._queue_size = queue_size
        self._waiting = 0               # jobs in the queue (switches do not count)
        self._lock = threading.Lock()
        self._leases = 0                # threads using the engine outside this one
        self._draining = False          # an unload waits for those: no new leases
        self._drained = threading.Condition(self._lock)
        self.request_timeout = request_timeout
        self.events = EventHub()
        self.engine: Engine | None = None
        self._runner = None             # the engine's sequences (its batch.Batcher)
        self._running = 0               # this worker's requests in the runner
        self._arriving = 0              # requests between arrival and the queue
        self.model = model              # id of the loaded model (or the one to load)
        self.state = "loading"          # loading | warming | ready | unloaded | failed | stopped
                                        # | none (no local model: a pure gateway)
        self.reason = "loading the model"
        self.warmup_seconds: float | None = None
        self.load_seconds: float | None = None
        self._served = False            # a model was up once: later loads are switches
        # Served-request counters for /health: finish reasons and tokens generated.
        # Keys fixed up front so /health can copy the dict while this thread updates it.
        self.stats = dict.fromkeys(
            ("stop", "length", "cancelled", "timeout", "tokens_generated", "model_loads",
             "model_load_failures"), 0)
        self.prefills = Prefills()      # background prefills (prefills.py)
        self._thread = threading.Thread(target=self._run, name="vlserve-engine", daemon=True)

    def start(self) -> "Worker":
        self._thread.start()
        return self

    @contextlib.contextmanager
    def arriving(self):
        """Around a request's way in (parse, images, tokenize, submit): while any is on its
        way, the engine holds a new prefill back a moment for it (ARRIVAL_WAIT)."""
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1

    def without_model(self, reason: str) -> None:
        """No local model at all (a pure gateway): never started, refuses jobs."""
        self.model = None
        self._set_state("none", reason)

    def stop(self, timeout: float = 10.0) -> None:
        self._set_state("stopped", "the server is shutting down")
        self._queue.put(None)  # wakes the thread
        self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        """True while a request is running in the engine."""
        return self._running > 0

    @property
    def depth(self) -> int:
        return self._waiting

    def engine_view(self) -> dict | None:
        """What other threads may know of the loaded engine, read under a lease: its info,
        cache and batching numbers (copies). None when no engine is ready."""
        with self.lease() as engine:
            if engine is None:
                return None
            runner = self._runner
            return {"info": dict(engine.info), "cache": engine.cache_stats(),
                    "batch": runner.stats()}

    def wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while self.state in ("loading", "warming") and time.monotonic() < end:
            time.sleep(0.05)
        return self.state == "ready"

    def check_accepting(self) -> None:
        """Jobs may queue while a model loads for a switch or after an idle unload; not
        before the first model is up, nor after a load left the server with none."""
        if self.state in ("failed", "stopped") or not self._served:
            raise self._not_ready()

    def _not_ready(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(f"the model is not ready: {self.reason}",
                                       code="model_not_ready", retry_after=5)

    @contextlib.contextmanager
    def lease(self, model: str | None = None):
        """The loaded engine, kept loaded while the block runs; None when it is not ready,
        is not `model` (None: whichever is loaded), or is about to be freed. The only way
        another thread may use the engine; keep the block short of waiting on this worker."""
        with self._lock:
            engine = self.engine
            granted = (engine is not None and not self._draining and self.state == "ready"
                       and model in (None, self.model))
            if granted:
                self._leases += 1
        try:
            yield engine if granted else None
        finally:
            if granted:
                with self._lock:
                    self._leases -= 1
                    if not self._leases:
                        self._drained.notify_all()

    def withdraw(self, job: Job) -> bool:
        """Take a job out of the queue for good (its client left): it ends now, cancelled,
        even while the engine thread is busy. False when it was already taken."""
        with self._lock:
            if job.taken or job.withdrawn:
                return False
            job.withdrawn = True
            self._waiting -= 1
            self.stats["cancelled"] += 1
        job.cancel()
        job.put(Finished("cancelled", 0, 0))
        job.close()
        return True

    def check_room(self) -> None:
        """Refuse early, before a request spends time decoding images, if it cannot queue."""
        if self._waiting >= self._queue_size:
            raise self._busy()

    def submit(self, prompt: Prompt | None, params: SamplingParams, *,
               prepare: Callable[[Engine], Prompt] | None = None, model: str | None = None,
               engine: Engine | None = None, owner: str | None = None,
               progress: bool = False) -> Job:
        """Queue a request: `prompt` prepared on `engine` (under a lease), or None to have
        the engine thread prepare it. `owner`'s prefill, if any, ends when it starts.
        `progress`: the job also gets `Progress` events while its prompt is evaluated."""
        if prompt is not None and engine is None:
            raise TypeError("a prepared prompt needs the engine it was prepared on")
        job = Job(params, time.monotonic() + self.request_timeout, prompt=prompt,
                  engine=engine if prompt is not None else None, prepare=prepare, model=model,
                  owner=owner, progress=progress)
        with self._lock:
            if self.state == "stopped":
                job.close()
                raise self._not_ready()
            if self._waiting >= self._queue_size:
                job.close()
                raise self._busy()
            self._waiting += 1
        self._queue.put(job)
        return job

    def prefill(self, prompt: Prompt, engine: Engine, *, owner: str) -> Prefill:
        """Queue a background prefill of `prompt` (prepared on `engine` under a lease). It
        supersedes the owner's previous one; it never counts against the queue's size."""
        prefill = Prefill(prompt, engine, owner=owner, model=self.model or "",
                          deadline=time.monotonic() + self.request_timeout)
        with self._lock:   # as submit(): nothing queues after the stop signal
            if self.state == "stopped":
                prompt.close()
                raise self._not_ready()
            self._queue.put(prefill)
        self.prefills.add(prefill)
        return prefill

    def switch(self, model: str) -> Switch:
        """Ask for `model` to be loaded after the jobs already queued; never refused."""
        request = Switch(model)
        self._queue.put(request)
        return request

    def unload(self) -> Switch:
        """Free the model after the jobs already queued; the next job loads it again."""
        request = Switch(self.model, unload=True)
        self._queue.put(request)
        return request

    def _busy(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"the server is busy: {self._queue_size} requests are already waiting; "
            "retry shortly", retry_after=2)

    def _set_state(self, state: str, reason: str, **extra) -> None:
        self.state, self.reason = state, reason
        self.events.publish({"type": "state", "state": state, "reason": reason,
                             "model": self.model, **extra})

    # -- the engine thread --

    def _run(self) -> None:
        try:
            self._load_model(self.model)
        except Exception as exc:  # the server stays up to report why in /health
            log.error("engine start failed: %s", exc)
            self._set_state("failed", str(exc))
            return
        held: collections.deque[Job | Prefill | Switch] = collections.deque()  # taken, not acted on
        while self.state != "stopped":
            if not held and not self._running and not self.prefills.running:
                item = self._next_item()          # idle: wait (and unload after keep-alive)
                if item is None:
                    break
                held.append(item)
            if not self._take_queued(held):
                break
            self._act(held)
            if self.engine is not None:
                self.prefills.start(self._runner, self.engine, requests_running=self._running > 0)
            if not self._wait_for_arrivals(held):
                break
            if self._running or self.prefills.running:
                self._runner.step()
        if self._runner is not None:
            self._runner.close()
        self._refuse_leftovers(held)

    def _refuse_leftovers(self, held) -> None:
        """At shutdown: whatever is still queued gets its answer (503), never silence."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                held.append(item)
        self.prefills.drop()
        for item in held:
            if isinstance(item, Switch):
                item.finish(self._not_ready())
            elif isinstance(item, Prefill):
                self.prefills.end(item, "dropped")
            elif self._take(item):
                item.put(self._not_ready())
                item.close()

    def _wait_for_arrivals(self, held) -> bool:
        """Before the first step of newly admitted requests: while others are still on their
        way in (tokenizing on HTTP threads), wait up to ARRIVAL_WAIT for them so that their
        prompts join the same batch. A lone request never waits. False on the stop signal."""
        starting = self._runner.starting if self._runner is not None else 0
        if not (self._arriving and self._running and starting == self._running):
            return True   # nobody on the way, or answers already running: no stalling them
        end = time.monotonic() + ARRIVAL_WAIT
        while self._arriving and time.monotonic() < end:
            try:
                item = self._queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return False
            held.append(item)
            self._act(held)
        return True

    def _take_queued(self, held) -> bool:
        """Move whatever is queued into `held` without waiting; False on the stop signal."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            held.append(item)

    def _act(self, held) -> None:
        """Admit held jobs into free sequences, in order. A switch, or a job for another
        model, waits until the running requests are done (they finish on the old model)."""
        while held:
            item = held[0]
            if isinstance(item, Job) and item.withdrawn:   # answered already: skip it
                held.popleft()
                continue
            if isinstance(item, Prefill):   # never waits: it only takes its owner's place
                held.popleft()
                self.prefills.hold(item, self.engine)
                continue
            running = self._running > 0
            if isinstance(item, Switch):
                if running:
                    return
                held.popleft()
                self._switch(item)
                continue
            wanted = item.model or self.model
            if (wanted != self.model or self.engine is None) and running:
                return
            if running and not self._runner.free:
                return
            held.popleft()
            if self._take(item):   # not withdrawn by its client meanwhile
                self._admit(item)

    def _take(self, job: Job) -> bool:
        with self._lock:
            if job.withdrawn:
                return False
            job.taken = True
            self._waiting -= 1
        return True

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            job.put(self._count(job, Finished("cancelled", 0, 0)))
            job.close()
            return
        if job.expired:
            self.stats["timeout"] += 1   # as a deadline reached while running is
            job.put(TimeoutError_("the request waited too long in the queue"))
            job.close()
            return
        try:
            if not self._ensure_model(job):
                job.close()
                return
            job.served_model = self.model
            self._runner.admit(Sequence(job.prompt, job.params,
                                        lambda: job.cancelled or job.expired,
                                        lambda event: self._deliver(job, event),
                                        owner=job.owner, progress=job.progress))
            self.prefills.supersede(job.owner)   # its draft was sent: the rest is moot
        except APIError as exc:
            job.put(exc)
            job.close()
            return
        except Exception as exc:
            log.exception("preparing a request failed")
            job.put(InternalError(f"generation failed: {type(exc).__name__}"))
            job.close()
            return
        self._running += 1

    def _deliver(self, job: Job, event) -> None:
        """An event of a running job, counted; the job's prompt is freed once it ends."""
        if isinstance(event, Finished):
            event = self._count(job, event)
        elif isinstance(event, Exception) and not isinstance(event, APIError):
            log.error("generation failed: %r", event)
            event = InternalError(f"generation failed: {type(event).__name__}")
        if isinstance(event, (Delta, Progress)):
            job.put(event)
            return
        self._running -= 1   # before the client hears it is done, so that it reads us idle
        job.put(event)
        job.close()

    def _next_item(self) -> Job | Switch | None:
        """The next queued item; unloads the model first if it stays idle past keep-alive
        (idle: nothing queued and no request on its way in)."""
        if self._keep_alive <= 0 or self.engine is None:
            return self._queue.get()
        while True:
            try:
                return self._queue.get(timeout=self._keep_alive)
            except queue.Empty:
                if not (self._arriving or self._leases):
                    break
        log.info("idle for %gs: unloading %s", self._keep_alive, self.model)
        self._unload(f"unloaded after {self._keep_alive:g}s idle")
        return self._queue.get()

    def _load_model(self, model: str | None) -> None:
        """Load and warm `model`; on failure nothing is loaded and the error propagates."""
        self.model = model
        self._last_progress = 0.0
        self._set_state("loading", f"loading {model or 'the model'}", progress=0.0)
        t0 = time.monotonic()
        try:
            engine = self._load(model, self._progress)
            with self._lock:
                self.engine = engine
            self._runner = engine.runner()
            if self._warmup:
                self._set_state("warming", "warming up")
                t1 = time.monotonic()
                warm_up(self.engine)
                self.warmup_seconds = round(time.monotonic() - t1, 3)
                log.info("warm-up done in %.2fs", self.warmup_seconds)
        except BaseException:
            self.stats["model_load_failures"] += 1
            self._unload()
            raise
        self.load_seconds = round(time.monotonic() - t0, 3)
        self.stats["model_loads"] += 1
        self._served = True
        self._set_state("ready", "ready", load_seconds=self.load_seconds)

    def _progress(self, fraction: float) -> None:
        # llama.cpp reports per tensor: a few hundred calls; pass on steps of 5%
        if fraction < 1 and fraction - self._last_progress < 0.05:
            return
        self._last_progress = fraction
        self.events.publish({"type": "progress", "model": self.model,
                             "progress": round(fraction, 3)})
        self.reason = f"loading {self.model or 'the model'} ({fraction:.0%})"

    def _unload(self, reason: str | None = None) -> None:
        """Free the engine and give its memory back to the OS, once no other thread holds
        a lease on it (new leases are refused meanwhile); with a reason, the server stays in
        the "unloaded" state (the next job loads the model again)."""
        with self._lock:
            self._draining = True
            while self._leases:
                self._drained.wait()
            engine, self.engine = self.engine, None
            self._draining = False   # no engine: leases are refused for that reason now
        self.prefills.drop()
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if engine is not None:
            engine.close()
            del engine
            gc.collect()
            _trim_heap()
        if reason:
            self._set_state("unloaded", f"{reason}; the next request loads it again")

    def _switch(self, request: Switch) -> None:
        if request.unload:
            self._unload("unloaded on request")
            request.finish()
            return
        if request.model == self.model and self.engine is not None:
            request.finish()
            return
        previous = self.model
        log.info("switching model: %s -> %s", previous, request.model)
        self._unload()
        try:
            self._load_model(request.model)
            request.finish()
            return
        except Exception as exc:
            log.error("loading %s failed: %s", request.model, exc)
            failure = f"could not load {request.model}: {exc}"
        if previous is None:
            self._set_state("failed", failure)
            request.finish(ModelLoadError(failure))
            return
        try:
            self._load_model(previous)
        except Exception as exc:
            self._set_state("failed", f"{failure}; reloading {previous} failed too: {exc}")
            request.finish(ModelLoadError(self.reason))
            return
        self.events.publish({"type": "rolled_back", "model": previous, "reason": failure})
        request.finish(ModelLoadError(f"{failure}; {previous} is loaded again", param="model"))

    def _ensure_model(self, job: Job) -> bool:
        """Load what the job needs (another model, or ours after an idle unload) and prepare
        its prompt for the engine it will run on. False (the job told why) if impossible."""
        wanted = job.model or self.model
        if wanted != self.model or self.engine is None:
            switch = Switch(wanted)  # type: ignore[arg-type]
            self._switch(switch)
            if switch.error is not None:
                job.put(switch.error)
                return False
        if job.prompt is None or job.engine is not self.engine:
            job.close()
            job.prompt, job.engine = job.prepare(self.engine), self.engine
        return True

    def _count(self, job: Job, event: Finished) -> Finished | TimeoutError_:
        """Tally a finished job; one stopped by its deadline, not its client, is a timeout."""
        timed_out = event.finish_reason == "cancelled" and job.expired and not job.cancelled
        with self._lock:   # withdraw() counts from HTTP threads
            self.stats["timeout" if timed_out else event.finish_reason] += 1
            self.stats["tokens_generated"] += event.completion_tokens
        if timed_out:
            return TimeoutError_(f"the request exceeded the {self.request_timeout:g}s timeout")
        return event


def _trim_heap() -> None:
    """Ask glibc to return freed heap pages; without this, RSS stays at its high-water mark
    after a model's host buffers are freed. A no-op elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
