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
    worker = Worker(lambda: engine, queue_size=kw.pop("queue_size", 2),
                    request_timeout=kw.pop("request_timeout", 30), warmup=False).start()
    assert worker.wait_ready(5)
    return worker


def test_events_arrive_in_order_and_end_with_finished():
    engine = FakeEngine(tokens=3)
    worker = make_worker(engine)
    events = drain(worker.submit(engine.prompt(), SamplingParams()))
    assert [e.text for e in events[:-1]] == ["t0 ", "t1 ", "t2 "]
    assert events[-1] == Finished("length", 3, 3)
    worker.stop()


def test_full_queue_is_refused_at_once_with_retry_after():
    engine = FakeEngine(tokens=50, delay=0.02)
    worker = make_worker(engine, queue_size=1)
    running = worker.submit(engine.prompt("a"), SamplingParams())
    assert engine.started.wait(5)
    worker.submit(engine.prompt("b"), SamplingParams())       # waits in the queue
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as info:
        worker.submit(engine.prompt("c"), SamplingParams())
    assert time.monotonic() - t0 < 0.5
    assert info.value.status == 503 and info.value.retry_after
    running.cancel()
    worker.stop()


def test_cancelled_job_stops_within_a_token_and_queued_cancel_is_skipped():
    engine = FakeEngine(tokens=1000, delay=0.01)
    worker = make_worker(engine)
    first = worker.submit(engine.prompt("a"), SamplingParams())
    queued = worker.submit(engine.prompt("b"), SamplingParams())
    queued.cancel()
    assert engine.started.wait(5)
    first.cancel()
    assert drain(first)[-1].finish_reason == "cancelled"
    third = worker.submit(engine.prompt("c"), SamplingParams())
    engine.tokens = 1
    assert isinstance(drain(third)[-1], Finished)
    assert engine.ran == ["a", "c"]
    worker.stop()


def test_deadline_becomes_a_timeout_error():
    engine = FakeEngine(tokens=1000, delay=0.01)
    worker = make_worker(engine, request_timeout=0.3)
    events = drain(worker.submit(engine.prompt(), SamplingParams()))
    assert isinstance(events[-1], TimeoutError_) and events[-1].status == 504
    assert worker.stats["timeout"] == 1 and worker.stats["cancelled"] == 0
    worker.stop()


def test_engine_exception_travels_back_and_worker_survives():
    engine = FakeEngine(fail=True)
    worker = make_worker(engine)
    events = drain(worker.submit(engine.prompt(), SamplingParams()))
    assert isinstance(events[-1], InternalError)
    engine.fail = False
    assert isinstance(drain(worker.submit(engine.prompt(), SamplingParams()))[-1], Finished)
    worker.stop()


def test_failed_load_is_reported_not_raised():
    def broken():
        raise ValueError("no such file: x.gguf")
    worker = Worker(broken, queue_size=1, request_timeout=5).start()
    assert not worker.wait_ready(5)
    assert worker.state == "failed" and "x.gguf" in worker.reason
    with pytest.raises(ServiceUnavailableError):
        worker.require_ready()
