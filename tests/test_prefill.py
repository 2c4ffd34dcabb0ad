"""Prefill while typing (POST /v1/chat/prefill), on the real engine with the tiny model.

In the batcher, stepped by hand: a request takes over a prefill that is still running and
continues from where it got to (nothing evaluated twice, the same answer as alone); after a
finished prefill only the text typed since is evaluated; a prefill never evicts another owner's
sequence used within --prefill-protect; while a request generates, a prefill's image waits.
Through the app: the route's answers, supersession and the one-per-owner bound, the same 4xx
as a chat request for a bad image (nothing kept), DELETE, and owners kept apart. (A model
not loaded and a switch racing prefills: test_switching.py; the gateway: test_gateway.py;
the page: test_webui.py.)"""

from __future__ import annotations

import pytest

from conftest import data_url, user, wait_for
from test_batching import Run, alone, request_of
from vlserve.chat.protocol import SamplingParams
from vlserve.engine.batch import Sequence
from vlserve.engine.llama import LlamaEngine
from vlserve.engine.output import Finished

PHOTO = data_url(96, 64)
SYSTEM = "You answer questions about photos of a shop's shelves. " * 3
QUESTION = "How many boxes are on the top shelf?"


@pytest.fixture(scope="module")
def engine(settings):
    """Two sequences; prompts come in slices of 16 tokens, so a prefill can be caught
    half-way; no --prefill-protect (the apps here share it with other tests' requests)."""
    eng = LlamaEngine(settings.replace(parallel=2, n_batch=16, n_ubatch=16, prefill_protect=0))
    yield eng
    eng.close()


class Background:
    """A prefill in the batcher, as the worker makes one."""

    def __init__(self, engine, req, owner=None):
        run = Run(engine, req)   # the same prompt a request would have
        self.prompt, self.end = run.prompt, None
        self.cancelled = False
        self.seq = Sequence(self.prompt, SamplingParams(), lambda: self.cancelled,
                            self._emit, background=True, owner=owner)

    def _emit(self, event):
        assert isinstance(event, Finished), event
        self.end = event

    def slot(self, engine):
        return next(s for s in engine.batcher.slots if s.req is self.seq)


def step_until(engine, predicate, what: str):
    for _ in range(1000):
        if predicate():
            return
        engine.batcher.step()
    raise AssertionError(f"never: {what}")


def photo_request(text=QUESTION, photo=PHOTO, **params):
    return request_of(text, image=photo, system=SYSTEM, **params)


def test_a_request_takes_over_a_running_prefill_and_evaluates_nothing_twice(engine):
    req = photo_request()
    expected = alone(engine, req)   # the answer, and its whole prompt evaluated
    engine._forget_kv()
    bg = Background(engine, req)
    assert engine.batcher.admit(bg.seq)
    slot = bg.slot(engine)
    image_at = next(i for i in bg.prompt.images)
    # half-way: the image is in, some of the text after it is not
    step_until(engine, lambda: slot.cursor > image_at + 1, "the prefill passed its image")
    assert slot.cursor < len(bg.prompt.units)
    run = Run(engine, req)
    engine.batcher.admit(run.seq)
    assert bg.end.finish_reason == "taken_over" and slot.req is run.seq
    done_by_prefill = bg.end.timings["prompt_tokens_evaluated"]
    assert bg.end.timings["images_encoded"] + bg.end.timings["images_from_cache"] == 1
    step_until(engine, lambda: run.end is not None, "the answer")
    timings = run.end.timings
    # the request evaluates exactly what the prefill had not: no image, no token twice
    assert timings["images_encoded"] == timings["images_from_cache"] == 0
    assert timings["prompt_tokens_evaluated"] == run.prompt.n_tokens - done_by_prefill
    assert timings["prompt_tokens_evaluated"] < expected.end.timings["prompt_tokens_evaluated"]
    assert run.text == expected.text   # the KV it continued from is the right one


def test_after_a_finished_prefill_only_the_text_typed_since_is_evaluated(engine):
    engine._forget_kv()
    photo = data_url(90, 70, color=(1, 2, 3))   # new to the embedding cache
    bg = Background(engine, photo_request("How many", photo))   # what was typed so far
    assert engine.batcher.admit(bg.seq)
    step_until(engine, lambda: bg.end is not None, "the prefill")
    assert bg.end.finish_reason == "done" and bg.end.timings["images_encoded"] == 1
    assert bg.end.timings["images_from_cache"] == 0   # its own encode, not a cache hit
    run = Run(engine, photo_request(photo=photo))
    engine.batcher.admit(run.seq)
    step_until(engine, lambda: run.end is not None, "the answer")
    typed_since = run.prompt.n_tokens - bg.prompt.n_tokens
    assert run.end.timings["images_encoded"] == run.end.timings["images_from_cache"] == 0
    assert run.end.timings["prompt_tokens_evaluated"] <= typed_since + 16


def test_a_prefill_never_evicts_another_owners_conversation_used_within_prefill_protect(settings):
    engine = LlamaEngine(settings.replace(parallel=2, prefill_protect=60))
    try:
        _protected(engine)
    finally:
        engine.close()


def _protected(engine):
    first, second = Run(engine, request_of("Hello there.")), Run(engine, request_of("Hi!"))
    for run in (first, second):
        run.seq.owner = "me"
        engine.batcher.admit(run.seq)
    step_until(engine, lambda: first.end and second.end, "both answers")
    kept = [list(s.kv.units) for s in engine.batcher.slots]
    stranger = Background(engine, photo_request(), owner="someone else")
    assert not engine.batcher.admit(stranger.seq)   # both sequences are protected
    assert [list(s.kv.units) for s in engine.batcher.slots] == kept
    stranger.prompt.close()
    # its owner's own new conversation may replace one of them
    own = Background(engine, photo_request(), owner="me")
    assert engine.batcher.admit(own.seq)
    own.cancelled = True
    step_until(engine, lambda: own.end is not None, "the cancelled prefill")
    kept = [list(s.kv.units) for s in engine.batcher.slots]
    # a draft of the same conversation extends it: that evicts nothing
    follow_up = request_of("Hello there.", max_tokens=24)
    draft = Background(engine, follow_up.__class__(
        messages=(*follow_up.messages, *_turn(first.text, "And then?")),
        params=follow_up.params), owner="someone else")
    assert engine.batcher.admit(draft.seq)
    step_until(engine, lambda: draft.end is not None, "the draft")
    assert draft.end.finish_reason == "done"
    assert draft.end.cached_tokens >= len(kept[0]) - 8   # on top of the first conversation


def _turn(answer: str, question: str):
    from vlserve.chat.protocol import Message, TextPart
    return (Message("assistant", (TextPart(answer),)), Message("user", (TextPart(question),)))


def test_with_no_protection_a_prefill_may_take_an_idle_sequence(settings):
    eng = LlamaEngine(settings.replace(parallel=1, prefill_protect=0))
    try:
        run = Run(eng, request_of("Hello there."))
        eng.batcher.admit(run.seq)
        step_until(eng, lambda: run.end is not None, "the answer")
        bg = Background(eng, photo_request())
        assert eng.batcher.admit(bg.seq)
        step_until(eng, lambda: bg.end is not None, "the prefill")
        assert bg.end.finish_reason == "done"
    finally:
        eng.close()


def test_while_a_request_generates_a_prefill_waits_at_its_image(engine):
    engine._forget_kv()
    running = Run(engine, request_of("Keep talking.", max_tokens=400))
    engine.batcher.admit(running.seq)
    bg = Background(engine, photo_request(photo=data_url(80, 60, color=(9, 9, 9))))
    assert engine.batcher.admit(bg.seq)
    slot = bg.slot(engine)
    image_at = next(i for i in bg.prompt.images)
    step_until(engine, lambda: slot.cursor == image_at, "the text before the image")
    for _ in range(20):
        engine.batcher.step()
    assert slot.cursor == image_at and running.end is None   # it waited
    assert slot.stats["images_encoded"] == 0
    running.cancel_after = 0   # the request ends: the prefill goes on
    step_until(engine, lambda: bg.end is not None, "the prefill")
    assert bg.end.finish_reason == "done" and bg.end.timings["images_encoded"] == 1


def test_a_prefills_image_is_two_steps_and_a_request_may_come_between(engine):
    """The vision tower, then the LLM: a request arriving after the first waits for that
    one only, and takes the encoded image from the cache."""
    engine._forget_kv()
    photo = data_url(70, 90, color=(7, 70, 7))
    bg = Background(engine, photo_request(photo=photo))
    assert engine.batcher.admit(bg.seq)
    slot = bg.slot(engine)
    image_at = next(iter(bg.prompt.images))
    step_until(engine, lambda: slot.cursor == image_at, "the text before the image")
    engine.batcher.step()
    assert slot.cursor == image_at and slot.stats["images_encoded"] == 1   # encoded only
    run = Run(engine, photo_request(photo=photo))
    engine.batcher.admit(run.seq)
    assert bg.end.finish_reason == "taken_over"
    step_until(engine, lambda: run.end is not None, "the answer")
    assert run.end.timings["images_encoded"] == 0 and run.end.timings["images_from_cache"] == 1


# ---- through the app ---------------------------------------------------------------------

PREFILL = "/v1/chat/prefill"
CHAT = "/v1/chat/completions"


def draft(text="", photo=PHOTO, **extra):
    parts = [("img", photo)] + ([text] if text else [])
    return {"messages": [{"role": "system", "content": SYSTEM}, user(*parts)], **extra}


def ended(client, answer, **environ) -> dict:
    body = client.get(f"{PREFILL}/{answer['id']}?wait=30", **environ).get_json()
    assert body["state"] not in ("queued", "waiting", "running"), body
    return body


def hold_engine(app):
    """A request that keeps generating until cancelled (its grammar wants a string longer
    than its max_tokens can write: it cannot end by itself): prefills' images wait."""
    from vlserve.chat.protocol import parse_chat_request
    worker = app.extensions["vlserve"]["worker"]
    never = {"type": "json_schema",
             "json_schema": {"name": "long", "schema": {"type": "string", "minLength": 100000}}}
    req = parse_chat_request({"messages": [user("Keep talking.")], "max_tokens": 3000,
                              "response_format": never}, max_tokens_cap=10**6)
    with worker.lease() as engine:
        job = worker.submit(engine.prepare(req, []), req.params, engine=engine)
    wait_for(lambda: worker.busy, "the request running")
    return job


def test_prefill_then_send_evaluates_only_the_question(make_app):
    client = make_app().test_client()
    photo = data_url(100, 60, color=(4, 5, 6))   # new to the embedding cache
    r = client.post(PREFILL, json=draft(photo=photo))
    assert r.status_code == 202, r.get_json()
    answer = r.get_json()
    assert answer["accepted"] and answer["state"] == "queued"
    assert r.headers["Location"] == f"{PREFILL}/{answer['id']}"
    status = ended(client, answer)
    assert status["state"] == "done" and status["images_encoded"] == 1
    r = client.post(CHAT, json=draft(QUESTION, photo=photo, max_tokens=4))
    assert r.status_code == 200, r.get_json()
    timings, usage = r.get_json()["timings"], r.get_json()["usage"]
    question = usage["prompt_tokens"] - status["prompt_tokens"]
    assert timings["images_encoded"] == timings["images_from_cache"] == 0
    assert timings["prompt_tokens_evaluated"] <= question + 16
    health = client.get("/health").get_json()["prefills"]
    assert health["waiting"] == health["running"] == 0 and health["done"] >= 1


def test_a_newer_prefill_supersedes_the_older_one_per_owner_at_most_one(make_app):
    app = make_app()
    client, worker = app.test_client(), app.extensions["vlserve"]["worker"]
    job = hold_engine(app)
    before = worker.prefills.counts()
    texts = ["How", "How many", "How many boxes", "How many boxes are", "How many boxes are on"]
    answers = [client.post(PREFILL, json=draft(t)).get_json() for t in texts]
    other = client.post(PREFILL, json=draft("Is it tidy?"),
                        environ_base={"REMOTE_ADDR": "10.9.9.9"}).get_json()
    elsewhere = {"environ_base": {"REMOTE_ADDR": "10.9.9.9"}}
    wait_for(lambda: worker.prefills.counts()["superseded"] == before["superseded"] + 4
             and client.get(f"{PREFILL}/{other['id']}", **elsewhere).get_json()["state"]
             == "waiting", "four prefills superseded, the other owner's waiting")
    counts = worker.prefills.counts()
    assert counts["waiting"] + counts["running"] == 2   # one per owner
    for a in answers[:-1]:
        assert client.get(f"{PREFILL}/{a['id']}").get_json()["state"] == "superseded"
    job.cancel()
    assert ended(client, answers[-1])["state"] == "done"
    assert ended(client, other, **elsewhere)["state"] == "done"


def test_a_request_of_the_same_owner_ends_its_prefill(make_app):
    app = make_app()
    client = app.test_client()
    job = hold_engine(app)
    answer = client.post(PREFILL, json=draft("Something else")).get_json()
    r = client.post(CHAT, json={"messages": [user("Unrelated.")], "max_tokens": 2})
    assert r.status_code == 200
    assert ended(client, answer)["state"] in ("superseded", "taken_over")
    job.cancel()


def test_a_bad_image_is_the_same_4xx_as_for_a_chat_request_and_nothing_is_kept(make_app):
    app = make_app()
    client, worker = app.test_client(), app.extensions["vlserve"]["worker"]
    before = worker.prefills.counts()
    for url in ("data:image/png;base64,AAAA", "data:text/plain;base64,aGk=", "file:///etc/passwd"):
        body = draft("What is it?", photo=url)
        chat, prefill = client.post(CHAT, json=body), client.post(PREFILL, json=body)
        assert prefill.status_code == chat.status_code and 400 <= chat.status_code < 500
        assert prefill.get_json() == chat.get_json()
    too_long = {"messages": [user("word " * 20000)]}
    chat, prefill = client.post(CHAT, json=too_long), client.post(PREFILL, json=too_long)
    assert (prefill.status_code, prefill.get_json()) == (chat.status_code, chat.get_json())
    r = client.post(PREFILL, json={"messages": [user("hi")], "max_tokens": 0})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "max_tokens"
    assert worker.prefills.counts() == before


def test_delete_drops_a_prefill_and_owners_are_kept_apart(make_app):
    app = make_app()
    client = app.test_client()
    job = hold_engine(app)
    answer = client.post(PREFILL, json=draft("Count them")).get_json()
    stranger = {"environ_base": {"REMOTE_ADDR": "10.7.7.7"}}
    for method in (client.get, client.delete):
        r = method(f"{PREFILL}/{answer['id']}", **stranger)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "prefill_not_found"
    assert client.delete(f"{PREFILL}/{answer['id']}").status_code == 200
    assert ended(client, answer)["state"] == "cancelled"
    assert client.get(f"{PREFILL}/prefill-nope").status_code == 404
    job.cancel()


def test_prefills_are_not_chat_requests(make_app):
    """Not rate-limited as chats, not in the queue's depth, no answer cached."""
    app = make_app(rate_limit=1, queue_size=1)
    client = app.test_client()
    for text in ("a", "ab", "abc"):
        assert client.post(PREFILL, json=draft(text)).status_code == 202
    assert client.post(CHAT, json={"messages": [user("hi")], "max_tokens": 2}).status_code == 200
