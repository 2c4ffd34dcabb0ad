"""Thinking models through the API: reasoning in `reasoning_content`, the answer in
`content`, with and without the opening tag, streaming and not; inline on request; and old
reasoning never sent back to the model. A scripted engine gives exact text; the generated
tiny Thinking model proves the real template and engine are wired the same way."""

from __future__ import annotations

import json

import pytest

from conftest import make_model, user
from vlserve.web.app import create_app
from vlserve.engine.llama import Delta, Finished, LlamaEngine, Prompt


class ScriptedEngine:
    """Says the same pieces every time; `thinking` as if its template opened <think>."""
    model_id, n_ctx, info = "scripted", 4096, {}

    def __init__(self, pieces, thinking):
        self.pieces, self.thinking = pieces, thinking
        self.seen = []   # the messages each request was prepared with

    def prepare(self, request, images):
        self.seen.append(request.messages)
        return Prompt(units=[1, 2, 3], images={}, n_tokens=3, max_new_tokens=100,
                      thinking=self.thinking)

    def count_tokens(self, messages, images):
        return 3

    def generate(self, prompt, params, cancelled):
        for piece in self.pieces:
            yield Delta(piece)
        yield Finished("stop", 3, len(self.pieces))

    def runner(self):
        return ScriptedRunner(self)

    def cache_stats(self):
        return {}

    def close(self):
        pass


class ScriptedRunner:
    """The batcher's interface over the scripted engine: one request at a time, an event
    a step (the worker itself is tested over the real batcher in test_worker.py)."""

    def __init__(self, engine):
        self.engine, self.seq, self.events = engine, None, None

    @property
    def active(self) -> int:
        return int(self.seq is not None)

    free = property(lambda self: 1 - self.active)
    starting = 0

    def admit(self, seq) -> None:
        self.seq, self.events = seq, self.engine.generate(seq.prompt, seq.params, seq.stop)

    def step(self) -> None:
        event = next(self.events)
        if isinstance(event, Finished):   # free first, as the batcher does
            seq, self.seq = self.seq, None
            seq.emit(event)
        else:
            self.seq.emit(event)

    def stats(self) -> dict:
        return {"parallel": 1, "busy": self.active, "steps": 0, "step_tokens": 0,
                "step_sequences": 0, "tokens_per_second": 0.0}

    def close(self) -> None:
        self.seq = None


OPENED_BY_TEMPLATE = ["Let me", " look.</th", "ink>\n\nA red", " square."]
OWN_TAG = ["<thi", "nk>\nLet me look.", "</think>", "\n\nA red square."]


@pytest.fixture
def scripted_client(settings):
    apps = []

    def make(pieces, thinking):
        engine = ScriptedEngine(pieces, thinking)
        app = create_app(settings, engine=engine)
        assert app.extensions["vlserve"]["worker"].wait_ready(10)
        apps.append(app)
        return app.test_client(), engine

    yield make
    for app in apps:
        app.extensions["vlserve"]["worker"].stop()


def stream_deltas(client, **body):
    r = client.post("/v1/chat/completions", json={"messages": [user("hi")], "stream": True,
                                                  **body})
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.get_data(as_text=True).splitlines()
              if line.startswith("data: {")]
    return [e["choices"][0]["delta"] for e in events if e.get("choices")]


def joined(deltas, key):
    return "".join(d.get(key) or "" for d in deltas)


@pytest.mark.parametrize("pieces, thinking", [(OPENED_BY_TEMPLATE, True), (OWN_TAG, False)])
def test_reasoning_and_answer_apart_streaming_and_not(scripted_client, pieces, thinking):
    client, _ = scripted_client(pieces, thinking)
    msg = client.post("/v1/chat/completions",
                      json={"messages": [user("hi")]}).get_json()["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "A red square.",
                   "reasoning_content": "Let me look."}
    deltas = stream_deltas(client)
    assert joined(deltas, "reasoning_content") == "Let me look."
    assert joined(deltas, "content") == "A red square."
    # reasoning comes first, the answer after it, never mixed in one delta
    kinds = [("reasoning_content" in d, "content" in d and d["content"] != "") for d in deltas]
    assert not any(r and c for r, c in kinds)
    last_reasoning = max(i for i, (r, _) in enumerate(kinds) if r)
    assert all(not c for _, c in kinds[:last_reasoning])


def test_inline_on_request_keeps_a_balanced_think_block(scripted_client):
    client, _ = scripted_client(OPENED_BY_TEMPLATE, True)
    body = {"messages": [user("hi")], "reasoning_format": "none"}
    content = client.post("/v1/chat/completions", json=body).get_json()[
        "choices"][0]["message"]["content"]
    assert content == "<think>\nLet me look.</think>\n\nA red square."
    deltas = stream_deltas(client, reasoning_format="none")
    assert joined(deltas, "content") == content and not joined(deltas, "reasoning_content")
    r = client.post("/v1/chat/completions", json={**body, "reasoning_format": "html"})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "reasoning_format"


def test_a_model_without_reasoning_answers_in_content_only(scripted_client):
    client, _ = scripted_client(["  A red", " square. <think> is a tag"], False)
    msg = client.post("/v1/chat/completions",
                      json={"messages": [user("hi")]}).get_json()["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "  A red square. <think> is a tag"}
    deltas = stream_deltas(client)
    assert joined(deltas, "content") == "  A red square. <think> is a tag"


def test_earlier_reasoning_is_never_sent_back(scripted_client):
    client, engine = scripted_client(OPENED_BY_TEMPLATE, True)
    history = [user("hi"),
               {"role": "assistant", "content": "Let me look.</think>\n\nA red square."},
               user("and now?")]
    assert client.post("/v1/chat/completions", json={"messages": history}).status_code == 200
    sent = engine.seen[-1][1].parts[0].text
    assert sent == "A red square."


def test_generated_thinking_model_streams_its_reasoning(settings, tmp_path):
    model, mmproj = make_model(tmp_path, thinking=True)
    engine = LlamaEngine(settings.replace(model=str(model), mmproj=str(mmproj)))
    try:
        assert engine.opens_thinking and engine.info["thinking"]
        app = create_app(settings.replace(model=str(model), mmproj=str(mmproj),
                                          model_alias=None), engine=engine)
        try:
            client = app.test_client()
            body = {"messages": [user("hi")], "max_tokens": 8, "temperature": 0}
            # random weights never close the block: everything is reasoning
            msg = client.post("/v1/chat/completions", json=body).get_json()[
                "choices"][0]["message"]
            assert msg["reasoning_content"] and msg["content"] == ""
            deltas = stream_deltas(client, max_tokens=8, temperature=0)
            assert joined(deltas, "reasoning_content") == msg["reasoning_content"]
            inline = client.post("/v1/chat/completions",
                                 json={**body, "reasoning_format": "none"}).get_json()
            assert inline["choices"][0]["message"]["content"].startswith("<think>\n")
            card = client.get("/v1/models").get_json()["data"][0]
            assert card["capabilities"]["thinking"]
        finally:
            app.extensions["vlserve"]["worker"].stop()
    finally:
        engine.close()


def test_instruct_model_template_does_not_open_thinking(engine):
    assert engine.opens_thinking is False
