"""Unit tests of the worker with a scripted fake engine (fast; the real engine is tested
through the same worker in test_api.py and test_server.py)."""

from __future__ import annotations

import threading
import time

import pytest

from vlserve.engine import Delta, Finished, Prompt
from vlserve.errors import InternalError, ServiceUnavailableError, TimeoutError_
from vlserve.protocol import SamplingParams
from vlserve.worker import Worker


class FakeEngine:
    model_id, n_ctx, info = "fake", 128, {}

    def __init__(self, tokens=5, delay=0.0, fail=False):
        self.tokens, self.delay, self.fail = tokens, delay, fail
        self.started = threading.Event()
        self.ran: list[str] = []

    def prompt(self, name="p") -> Prompt:
        return Prompt(units=[name], images={}, n_tokens=3, max_new_tokens=99)

    def generate(self, prompt, params, cancelled):
        self.ran.append(prompt.units[0])
        self.started.set()
        if self.fail:
            raise RuntimeError("boom")
        for i in range(self.tokens):
            if cancelled():
                yield Finished("cancelled", 3, i)
                return
            time.sleep(self.delay)
            yield Delta(f"t{i} ")
        yield Finished("length", 3, self.tokens)


def drain(job, timeout=10):
    events = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ev = job.next_event(0.1)
        if ev is not None:
            events.append(ev)
            if not isinstance(ev, Delta):
                return events
    raise AssertionError("job did not finish")


def make_worker(engine, **kw) -> Worker:
    worker = Worker(lambda *_: engine, queue_size=kw.pop("queue_size", 2),
                    request_timeout=kw.pop("request_timeout", 30), warmup=False).start()
    assert worker.wait_ready(5)
    return worker


def test_events_arrive_in_order_and_end_with_finished():
    engine = FakeEngine(tokens=3)
    worker = make_worker(engine)
    events = drain(worker.submit(engine.prompt(), SamplingParams(), engine=engine))
    assert [e.text for e in events[:-1]] == ["t0 ", "t1 ", "t2 "]
    assert events[-1] == Finished("length", 3, 3)
    assert not worker.busy   # already idle when the client hears it is done
    worker.stop()


def test_full_queue_is_refused_at_once_with_retry_after():
    engine = FakeEngine(tokens=50, delay=0.02)
    worker = make_worker(engine, queue_size=1)
    running = worker.submit(engine.prompt("a"), SamplingParams(), engine=engine)
    assert engine.started.wait(5)
    worker.submit(engine.prompt("b"), SamplingParams(), engine=engine)       # waits in the queue
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as info:
        worker.submit(engine.prompt("c"), SamplingParams(), engine=engine)
    assert time.monotonic() - t0 < 0.5
    assert info.value.status == 503 and info.value.retry_after
    running.cancel()
    worker.stop()


def test_cancelled_job_stops_within_a_token_and_queued_cancel_is_skipped():
    engine = FakeEngine(tokens=1000, delay=0.01)
    worker = make_worker(engine)
    first = worker.submit(engine.prompt("a"), SamplingParams(), engine=engine)
    queued = worker.submit(engine.prompt("b"), SamplingParams(), engine=engine)
    queued.cancel()
    assert engine.started.wait(5)
    first.cancel()
    assert drain(first)[-1].finish_reason == "cancelled"
    third = worker.submit(engine.prompt("c"), SamplingParams(), engine=engine)
    engine.tokens = 1
    assert isinstance(drain(third)[-1], Finished)
    assert engine.ran == ["a", "c"]
    worker.stop()


def test_deadline_becomes_a_timeout_error():
    engine = FakeEngine(tokens=1000, delay=0.01)
    worker = make_worker(engine, request_timeout=0.3)
    events = drain(worker.submit(engine.prompt(), SamplingParams(), engine=engine))
    assert isinstance(events[-1], TimeoutError_) and events[-1].status == 504
    assert worker.stats["timeout"] == 1 and worker.stats["cancelled"] == 0
    worker.stop()


def test_engine_exception_travels_back_and_worker_survives():
    engine = FakeEngine(fail=True)
    worker = make_worker(engine)
    events = drain(worker.submit(engine.prompt(), SamplingParams(), engine=engine))
    assert isinstance(events[-1], InternalError) and not worker.busy
    engine.fail = False
    assert isinstance(drain(worker.submit(engine.prompt(), SamplingParams(), engine=engine))[-1], Finished)
    worker.stop()


def test_failed_load_is_reported_not_raised():
    def broken(*_):
        raise ValueError("no such file: x.gguf")
    worker = Worker(broken, queue_size=1, request_timeout=5).start()
    assert not worker.wait_ready(5)
    assert worker.state == "failed" and "x.gguf" in worker.reason
    with pytest.raises(ServiceUnavailableError):
        worker.check_accepting()


class Models:
    """A loader over named fake engines; a name in `broken` fails to load."""

    def __init__(self, *names, broken=()):
        self.engines = {n: FakeEngine(tokens=3) for n in names}
        for name, engine in self.engines.items():
            engine.model_id = name
        self.broken, self.loads, self.closed = set(broken), [], []
        for engine in self.engines.values():
            engine.close = lambda e=engine: self.closed.append(e.model_id)

    def __call__(self, name, progress):
        self.loads.append(name)
        progress(0.5)
        if name in self.broken:
            raise RuntimeError(f"cannot load {name}")
        return self.engines[name]


def prepare_for(name):
    """A job's prepare(): its prompt says which engine it was prepared for."""
    return lambda engine: Prompt(units=[f"{name}@{engine.model_id}"], images={}, n_tokens=3,
                                 max_new_tokens=9)


def test_switch_waits_for_queued_jobs_and_reprepares_stale_prompts():
    models = Models("a", "b")
    models.engines["a"].delay = 0.05
    worker = Worker(models, queue_size=4, request_timeout=30, warmup=False, model="a").start()
    assert worker.wait_ready(5)
    first = worker.submit(prepare_for("j1")(models.engines["a"]), SamplingParams(),
                          prepare=prepare_for("j1"), engine=models.engines["a"])
    switch = worker.switch("b")
    # prepared for "a" while "a" was loaded, but queued behind the switch: prepared again
    stale = worker.submit(prepare_for("j2")(models.engines["a"]), SamplingParams(),
                          prepare=prepare_for("j2"), engine=models.engines["a"])
    worker.check_accepting()            # accepting while the switch is pending
    assert isinstance(drain(first)[-1], Finished) and isinstance(drain(stale)[-1], Finished)
    assert switch.done.wait(5) and switch.error is None
    assert models.engines["a"].ran == ["j1@a"] and models.engines["b"].ran == ["j2@b"]
    assert models.closed == ["a"] and worker.model == "b" and worker.state == "ready"
    worker.stop()


def test_a_job_naming_another_model_loads_it_first():
    models = Models("a", "b")
    worker = Worker(models, queue_size=4, request_timeout=30, warmup=False, model="a").start()
    assert worker.wait_ready(5)
    job = worker.submit(None, SamplingParams(), prepare=prepare_for("j"), model="b")
    assert isinstance(drain(job)[-1], Finished)
    assert models.loads == ["a", "b"] and models.engines["b"].ran == ["j@b"]
    worker.stop()


def test_failed_switch_reloads_the_previous_model_and_says_so():
    models = Models("a", "b", broken={"b"})
    worker = Worker(models, queue_size=4, request_timeout=30, warmup=False, model="a").start()
    assert worker.wait_ready(5)
    events = worker.events.subscribe()
    switch = worker.switch("b")
    assert switch.done.wait(5)
    assert switch.error.code == "model_load_failed" and "a is loaded again" in switch.error.message
    assert models.loads == ["a", "b", "a"] and worker.model == "a" and worker.state == "ready"
    assert worker.stats["model_load_failures"] == 1
    seen = []
    while not events.empty():
        seen.append(events.get_nowait())
    assert "rolled_back" in {e["type"] for e in seen}
    assert any(e["type"] == "progress" for e in seen)
    job = worker.submit(None, SamplingParams(), prepare=prepare_for("j"))
    assert isinstance(drain(job)[-1], Finished)
    worker.stop()


def test_a_job_for_a_model_that_cannot_load_gets_the_error_not_a_hang():
    models = Models("a", "b", broken={"b"})
    worker = Worker(models, queue_size=4, request_timeout=30, warmup=False, model="a").start()
    assert worker.wait_ready(5)
    job = worker.submit(None, SamplingParams(), prepare=prepare_for("j"), model="b")
    err = drain(job)[-1]
    assert err.status == 500 and "cannot load b" in err.message and worker.model == "a"
    worker.stop()


def test_idle_unload_then_reload_on_demand():
    models = Models("a")
    worker = Worker(models, queue_size=4, request_timeout=30, warmup=False, model="a",
                    keep_alive=0.2).start()
    assert worker.wait_ready(5)
    deadline = time.monotonic() + 5
    while worker.state != "unloaded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert models.closed == ["a"] and worker.engine is None
    worker.check_accepting()
    job = worker.submit(None, SamplingParams(), prepare=prepare_for("j"))
    assert isinstance(drain(job)[-1], Finished) and models.loads == ["a", "a"]
    worker.stop()
