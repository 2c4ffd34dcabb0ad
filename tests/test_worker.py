"""The worker over the real llama.cpp engine and its real batcher, as production runs it:
queueing, refusals, cancellation, deadlines, errors, switching, unloading. The tiny model
loads in a fraction of a second, so each test loads its own engines."""

from __future__ import annotations

import threading

import pytest

from conftest import wait_for
from vlserve.engine.llama import LlamaEngine
from vlserve.engine.output import Delta, Finished
from vlserve.errors import InternalError, ServiceUnavailableError, TimeoutError_
from vlserve.chat.protocol import parse_chat_request
from vlserve.engine.worker import Worker

LONG = 3000   # tokens: a generation that outlasts any wait of these tests


def chat(text: str, max_tokens: int = 3):
    """A parsed request; seeded sampling, so the random-weight model rarely ends early."""
    return parse_chat_request({"messages": [{"role": "user", "content": text}],
                               "max_tokens": max_tokens, "temperature": 1.0, "seed": 3},
                              max_tokens_cap=LONG)


def drain(job, timeout=30):
    """Every event of `job` up to and including its last one."""
    events = []
    while True:
        ev = job.next_event(timeout)
        assert ev is not None, "the job did not finish"
        events.append(ev)
        if not isinstance(ev, Delta):
            return events


def first_token(job, timeout=30):
    ev = job.next_event(timeout)
    assert isinstance(ev, Delta), f"expected a token, got {ev!r}"


class Models:
    """A loader of real engines by name (each the tiny model under that alias); a name in
    `broken` fails to load. Records loads and closes."""

    def __init__(self, settings, *, parallel=1, broken=()):
        self.settings, self.parallel, self.broken = settings, parallel, set(broken)
        self.loads: list[str | None] = []
        self.closed: list[str] = []
        self.live: list[LlamaEngine] = []

    def __call__(self, name, progress):
        self.loads.append(name)
        progress(0.5)
        if name in self.broken:
            raise RuntimeError(f"cannot load {name}")
        engine = LlamaEngine(self.settings.replace(model_alias=name or "tiny",
                                                   parallel=self.parallel))
        close = engine.close

        def closing():
            self.closed.append(engine.model_id)
            close()
        engine.close = closing
        self.live.append(engine)
        return engine

    def close_all(self):
        for engine in self.live:
            if engine.model_id not in self.closed:
                engine.close()


@pytest.fixture
def start(settings):
    """start(model=None, parallel=1, broken=(), **worker options) -> (worker, models)."""
    made = []

    def start(model=None, *, parallel=1, broken=(), **kw):
        models = Models(settings, parallel=parallel, broken=broken)
        worker = Worker(models, queue_size=kw.pop("queue_size", 2),
                        request_timeout=kw.pop("request_timeout", 60), warmup=False,
                        model=model, **kw).start()
        made.append((worker, models))
        assert worker.wait_ready(30), worker.reason
        return worker, models
    yield start
    for worker, models in made:
        worker.stop()
        models.close_all()


def submit(worker, text, max_tokens=3, **kw):
    """Queue a request prepared on the loaded engine, under a lease, as the API does."""
    req = chat(text, max_tokens)
    with worker.lease() as engine:
        assert engine is not None
        return worker.submit(engine.prepare(req, []), req.params, engine=engine, **kw)


def prepared(text, max_tokens=3):
    """A job's prepare(engine), for jobs the engine thread prepares (after a switch)."""
    req = chat(text, max_tokens)
    return req.params, lambda engine: engine.prepare(req, [])


def test_events_arrive_in_order_and_end_with_finished(start):
    worker, _ = start()
    events = drain(submit(worker, "Hello", max_tokens=3))
    assert all(isinstance(e, Delta) for e in events[:-1]) and len(events) >= 2
    assert isinstance(events[-1], Finished) and events[-1].completion_tokens <= 3
    assert not worker.busy   # already idle when the client hears it is done


def test_full_queue_is_refused_at_once_with_retry_after(start):
    worker, _ = start(queue_size=1)
    running = submit(worker, "a", LONG)
    first_token(running)                      # it holds the only sequence
    submit(worker, "b")                       # waits in the queue
    with pytest.raises(ServiceUnavailableError) as info:
        submit(worker, "c")
    assert info.value.status == 503 and info.value.retry_after
    running.cancel()


def test_cancelled_job_stops_and_a_queued_cancel_never_runs(start):
    worker, _ = start()
    first = submit(worker, "a", LONG)
    first_token(first)
    queued = submit(worker, "b", 50)
    queued.cancel()
    first.cancel()
    end = drain(first)[-1]
    assert end.finish_reason == "cancelled" and end.completion_tokens < LONG
    skipped = drain(queued)
    assert len(skipped) == 1 and skipped[0].finish_reason == "cancelled"
    assert skipped[0].completion_tokens == 0          # never generated
    assert isinstance(drain(submit(worker, "c"))[-1], Finished)
    assert worker.stats["cancelled"] == 2


def test_a_running_deadline_becomes_a_timeout_error(start):
    worker, _ = start(request_timeout=0.5)
    events = drain(submit(worker, "slow", LONG))
    assert isinstance(events[-1], TimeoutError_) and events[-1].status == 504
    assert worker.stats["timeout"] == 1 and worker.stats["cancelled"] == 0


def test_a_queued_deadline_is_a_timeout_and_counted(start):
    worker, _ = start()
    running = submit(worker, "a", LONG)
    first_token(running)
    worker.request_timeout = 0.2              # for the next request only
    queued = submit(worker, "b")              # waits behind the one sequence…
    wait_for(lambda: queued.expired, "the queued request's deadline")   # …past its deadline
    running.cancel()
    assert isinstance(drain(queued)[-1], TimeoutError_)
    assert drain(running)[-1].finish_reason == "cancelled"
    assert worker.stats["timeout"] == 1


def test_a_failure_while_preparing_travels_back_and_the_worker_survives(start):
    worker, _ = start()
    params, _ = prepared("x")

    def broken(engine):
        raise RuntimeError("boom")
    events = drain(worker.submit(None, params, prepare=broken))
    assert isinstance(events[-1], InternalError) and "RuntimeError" in events[-1].message
    assert not worker.busy
    assert isinstance(drain(submit(worker, "again"))[-1], Finished)


def test_failed_load_is_reported_not_raised(settings):
    models = Models(settings, broken={"x.gguf"})
    worker = Worker(models, queue_size=1, request_timeout=5, model="x.gguf").start()
    try:
        assert not worker.wait_ready(30)
        assert worker.state == "failed" and "x.gguf" in worker.reason
        with pytest.raises(ServiceUnavailableError):
            worker.check_accepting()
    finally:
        worker.stop()


def test_switch_waits_for_running_jobs_and_prepares_queued_ones_again(start):
    worker, models = start("a", queue_size=4)
    first = submit(worker, "one", LONG)
    first_token(first)
    switch = worker.switch("b")
    params, prepare = prepared("two")
    with worker.lease() as engine_a:          # prepared on "a", queued behind the switch:
        assert engine_a is not None           # prepared again on "b"
        stale = worker.submit(prepare(engine_a), params, prepare=prepare, engine=engine_a)
    worker.check_accepting()                  # accepting while the switch is pending
    first.cancel()
    assert drain(first)[-1].finish_reason == "cancelled"
    assert first.served_model == "a"          # a running request finishes on its model
    assert isinstance(drain(stale)[-1], Finished) and stale.served_model == "b"
    assert switch.done.wait(30) and switch.error is None
    assert models.closed == ["a"] and worker.model == "b" and worker.state == "ready"


def test_a_job_naming_another_model_loads_it_first(start):
    worker, models = start("a", queue_size=4)
    params, prepare = prepared("j")
    job = worker.submit(None, params, prepare=prepare, model="b")
    assert isinstance(drain(job)[-1], Finished)
    assert models.loads == ["a", "b"] and job.served_model == "b" and models.closed == ["a"]


def test_failed_switch_reloads_the_previous_model_and_says_so(start):
    worker, models = start("a", queue_size=4, broken={"b"})
    events = worker.events.subscribe()
    switch = worker.switch("b")
    assert switch.done.wait(30)
    assert switch.error.code == "model_load_failed" and "a is loaded again" in switch.error.message
    assert models.loads == ["a", "b", "a"] and worker.model == "a" and worker.state == "ready"
    assert worker.stats["model_load_failures"] == 1
    seen = []
    while not events.empty():
        seen.append(events.get_nowait())
    assert "rolled_back" in {e["type"] for e in seen}
    assert any(e["type"] == "progress" for e in seen)
    params, prepare = prepared("j")
    assert isinstance(drain(worker.submit(None, params, prepare=prepare))[-1], Finished)


def test_a_job_for_a_model_that_cannot_load_gets_the_error_not_a_hang(start):
    worker, _ = start("a", queue_size=4, broken={"b"})
    params, prepare = prepared("j")
    err = drain(worker.submit(None, params, prepare=prepare, model="b"))[-1]
    assert err.status == 500 and "cannot load b" in err.message and worker.model == "a"


def test_idle_unload_then_reload_on_demand(start):
    worker, models = start("a", keep_alive=0.2)
    wait_for(lambda: worker.state == "unloaded", "the idle model to be unloaded")
    assert models.closed == ["a"] and worker.engine_view() is None
    worker.check_accepting()
    params, prepare = prepared("j")
    assert isinstance(drain(worker.submit(None, params, prepare=prepare))[-1], Finished)
    assert models.loads == ["a", "a"]


def test_an_unload_waits_for_a_lease_and_refuses_new_ones(start):
    worker, models = start("a")
    leased = threading.Event()
    release = threading.Event()

    def hold():
        with worker.lease() as engine:
            assert engine is not None
            leased.set()
            release.wait(30)
            engine.count_tokens(chat("still alive").messages, {})   # still loaded
    holder = threading.Thread(target=hold)
    holder.start()
    assert leased.wait(30)
    unload = worker.unload()

    def refused():
        with worker.lease() as engine:
            return engine is None
    wait_for(refused, "new leases to be refused while the unload waits")
    assert models.closed == []                  # the lease holds the engine
    release.set()
    holder.join(30)
    assert unload.done.wait(30) and models.closed == ["a"]


def test_two_sequences_run_together_over_the_batcher(start):
    worker, _ = start(parallel=2, queue_size=4)
    a = submit(worker, "first", LONG)
    b = submit(worker, "second", LONG)
    first_token(a)
    first_token(b)                               # both decode before either ends
    assert worker.engine_view()["batch"]["busy"] == 2
    a.cancel()
    b.cancel()
    assert drain(a)[-1].finish_reason == drain(b)[-1].finish_reason == "cancelled"
