"""response_format: answers held to a JSON schema, token by token, on the real engine.

The tiny model's weights are random, so its free output is noise: whatever valid JSON comes
out is the constraint's doing, and turning the constraint off must show invalid output (so
these tests can fail). Every schema here bounds its strings, numbers and arrays, so that the
noise always reaches the end of the JSON within max_tokens: every answer must then end with
`finish_reason: stop` and validate (jsonschema)."""

from __future__ import annotations

import concurrent.futures
import ctypes
import itertools
import json
from typing import Literal

import jsonschema
import numpy as np
import openai
import pydantic
import pytest
import requests

from conftest import LiveServer, ask_ok as ask, data_url, user
from vlserve.chat.protocol import parse_chat_request
from vlserve.errors import InternalError
from vlserve.library.tinymodel import make_model

CHAT = "/v1/chat/completions"
WORD = {"type": "string", "maxLength": 8}
SMALL = {"type": "integer", "minimum": 0, "maximum": 999}


def obj(properties: dict, **more) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False, **more}


SCHEMAS = {
    "flat": obj({"name": WORD, "count": SMALL, "ok": {"type": "boolean"}}),
    "nested": obj({"meter": obj({"id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                                 "reading": SMALL}), "unit": {"enum": ["kWh", "m3", "l"]}}),
    "array": obj({"labels": {"type": "array", "minItems": 2, "maxItems": 4,
                             "items": obj({"label": {"enum": ["bolt", "nut", "gear"]},
                                           "count": {"type": "integer", "minimum": 0,
                                                     "maximum": 9}})}}),
    "enum_const": obj({"status": {"enum": ["ok", "worn", "broken"]},
                       "version": {"const": 2}}),
    "refs": {**obj({"from": {"$ref": "#/$defs/place"}, "to": {"$ref": "#/$defs/place"}}),
             "$defs": {"place": obj({"city": WORD, "zip": {"type": "string",
                                                           "pattern": "^[0-9]{5}$"}})}},
    "any_of": obj({"item": {"anyOf": [obj({"kind": {"const": "a"}, "x": SMALL}),
                                      obj({"kind": {"const": "b"}, "y": {"type": "boolean"}})]}}),
    "formats": obj({"day": {"type": "string", "format": "date"},
                    "code": {"type": "string", "pattern": "^[a-f0-9]{4}$"}}),
    "receipt": obj({"items": {"type": "array", "maxItems": 3,
                              "items": obj({"name": WORD, "price": SMALL})},
                    "total": {"type": "integer", "minimum": 0, "maximum": 9999}}),
    "nullable": obj({"note": {"type": ["string", "null"], "maxLength": 5},
                     "score": {"type": ["integer", "null"], "minimum": -5, "maximum": 5}}),
    # (a bounded "number" still has unbounded fraction digits: noise never ends it)
    "numbers": obj({"step": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
                    "level": {"type": "number", "enum": [0.5, 1.5, 2]}}),
    "optional": {"type": "object", "additionalProperties": False, "required": ["id"],
                 "properties": {"id": SMALL, "tag": WORD}},
}


def response_format(name: str) -> dict:
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def collect(response: requests.Response, stream: bool) -> tuple[str, str]:
    """(content, finish_reason) of a streamed or whole answer."""
    if not stream:
        choice = response.json()["choices"][0]
        return choice["message"]["content"], choice["finish_reason"]
    text, reason = "", None
    for line in response.iter_lines():
        if line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"]
            if delta:
                text += delta[0]["delta"].get("content") or ""
                reason = delta[0]["finish_reason"] or reason
    return text, reason


@pytest.fixture(scope="module")
def server(real_server):
    return real_server


def test_every_answer_to_every_schema_is_valid_streamed_or_not_batched_with_images(server):
    """11 schemas x temperature 0 and 1 x streamed or not x text or image, twice (another
    seed each time), and once more at temperature 1, 4 at a time: 220 requests, every answer
    complete and valid."""
    cases = [*itertools.product(SCHEMAS, (0, 1), (False, True), (False, True), range(2)),
             *itertools.product(SCHEMAS, (1,), (False, True), (False, True), (2,))]
    photo = data_url(48, 32)

    def one(i_case):
        i, (name, temperature, stream, image, _) = i_case
        content = [{"type": "text", "text": f"Describe part {i} as JSON."}]
        if image:
            content.insert(0, {"type": "image_url", "image_url": {"url": photo}})
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 400,
                "temperature": temperature, "seed": i, "stream": stream,
                "response_format": response_format(name)}
        return name, *collect(ask(server, body), stream)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, enumerate(cases)))
    assert len(answers) >= 200
    for name, text, reason in answers:
        assert reason == "stop", (name, text)
        jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_without_the_constraint_the_same_requests_are_not_json(server):
    """The proof can fail: the same model, unconstrained, writes noise."""
    for name in SCHEMAS:
        body = {"messages": [user(f"Describe part {name} as JSON.")], "max_tokens": 60,
                "temperature": 1, "seed": 1}
        text = ask(server, body).json()["choices"][0]["message"]["content"]
        with pytest.raises(ValueError):
            jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_json_object_is_an_object_or_says_length(server):
    for seed in range(8):
        r = ask(server, {"messages": [user("anything")], "max_tokens": 64, "seed": seed,
                         "temperature": 1, "response_format": {"type": "json_object"}})
        text, reason = collect(r, False)
        if reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:   # cut by max_tokens: never claimed complete
            assert reason == "length" and r.json()["usage"]["completion_tokens"] == 64


def test_a_cut_answer_says_length(server):
    r = ask(server, {"messages": [user("x")], "max_tokens": 5, "temperature": 0,
                     "response_format": response_format("receipt")})
    text, reason = collect(r, False)
    assert reason == "length"
    with pytest.raises(ValueError):
        json.loads(text)


def test_text_format_is_free_text(server):
    r = ask(server, {"messages": [user("x")], "max_tokens": 8, "temperature": 0,
                     "response_format": {"type": "text"}})
    assert r.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("rf, param, words", [
    ("json", "response_format", "must be an object"),
    ({"type": "yaml"}, "response_format.type", "must be one of"),
    ({"type": "json_schema"}, "response_format.json_schema", "'name'"),
    ({"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name",
     "name"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
     "response_format.json_schema.schema", "must be a JSON object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes", "schema": {}}},
     "response_format.json_schema.strict", "true or false"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
        "type": "object", "unevaluatedProperties": False}}},
     "response_format.json_schema.schema", "unevaluatedProperties"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}},
     "response_format.json_schema.schema", "missing"),
])
def test_a_schema_that_cannot_be_enforced_is_a_400_naming_it(client, rf, param, words):
    r = client.post(CHAT, json={"messages": [user("x")], "response_format": rf})
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_an_unimplemented_keyword_is_ignored_when_not_strict(client):
    schema = {"type": "object", "unevaluatedProperties": False, "additionalProperties": False,
              "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    r = client.post(CHAT, json={"messages": [user("x")], "max_tokens": 50, "temperature": 0,
                                "response_format": {"type": "json_schema", "json_schema": {
                                    "name": "x", "schema": schema}}})
    assert r.status_code == 200 and isinstance(json.loads(
        r.get_json()["choices"][0]["message"]["content"])["a"], bool)


def test_stop_strings_and_a_json_format_do_not_mix(client):
    r = client.post(CHAT, json={"messages": [user("x")], "stop": ["}"],
                                "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "stop"


class Reading(pydantic.BaseModel):
    meter: str = pydantic.Field(max_length=6)
    value: int = pydantic.Field(ge=0, le=99999)
    unit: Literal["kWh", "m3"]
    readable: bool


def test_openai_sdk_parse_with_a_pydantic_model(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for seed in range(3):
        done = client.chat.completions.parse(
            model="tiny", response_format=Reading, seed=seed, max_tokens=200,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url()}},
                {"type": "text", "text": "Read the meter."}]}])
        parsed = done.choices[0].message.parsed
        assert isinstance(parsed, Reading) and done.choices[0].finish_reason == "stop"
    # the log line says a grammar held the answer and its size, never the schema
    assert "constrained=1 grammar_bytes=" in server.log() and "Reading" not in server.log()


def test_langchain_with_structured_output_json_schema(server):
    from langchain_openai import ChatOpenAI
    llm = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="tiny",
                     max_tokens=200, temperature=1, max_retries=0)
    structured = llm.with_structured_output(Reading, method="json_schema")
    for _ in range(3):
        reading = structured.invoke("Read the meter in this photo.")
        assert isinstance(reading, Reading)


def test_a_thinking_model_reasons_freely_and_may_not_stop_before_its_answer(engine):
    """The constraint starts after </think> (which may come in pieces): until then any
    token but an end of generation (a stop inside the reasoning would leave no JSON); after
    it, only what the schema allows. The real vocabulary and llguidance; the token stream is
    scripted, since random weights never close a reasoning block."""
    constraint = parse_chat_request({"messages": [user("x")],
                                     "response_format": response_format("flat")},
                                    max_tokens_cap=100).params.constraint
    guide = engine.guides.new(constraint, after_thinking=True)
    n_vocab = guide.n_vocab
    logits = np.zeros(n_vocab, dtype=np.float32)
    pointer = logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    guide.restrict(pointer)
    enders = [t for t in range(n_vocab) if engine.ends_generation(t)]
    assert enders and np.isinf(logits[enders]).all()
    assert np.isfinite(logits).sum() == n_vocab - len(enders)   # the rest: free reasoning
    for piece in (b"hmm", b"</th", b"ink>"):
        assert guide.waiting
        guide.accept(0, piece)
    assert not guide.waiting   # the answer starts: held to the schema
    logits[:] = 0
    guide.restrict(pointer)
    allowed = {engine.piece(t) for t in np.flatnonzero(np.isfinite(logits))}
    assert allowed and all(p.startswith(b"{") for p in allowed), sorted(allowed)[:10]
    answer = b'{"name":"ab","count":7,"ok":true}'
    for token in engine.guides.tokenizer().tokenize_bytes(answer):
        assert not guide.complete
        guide.accept(token, engine.piece(token))
    assert guide.complete


def test_a_token_outside_the_grammar_fails_the_answer_instead_of_going_on_unchecked(engine):
    constraint = parse_chat_request({"messages": [user("x")],
                                     "response_format": {"type": "json_object"}},
                                    max_tokens_cap=100).params.constraint
    guide = engine.guides.new(constraint, after_thinking=False)
    [token] = engine.guides.tokenizer().tokenize_bytes(b"x")   # an object starts with {
    with pytest.raises(InternalError, match="left its response_format"):
        guide.accept(token, b"x")


def test_a_thinking_models_constrained_answer_through_the_server(tmp_path):
    """End to end with the generated Thinking model: its reasoning streams as
    reasoning_content; random weights never close it, so the answer is cut (`length`),
    never a `stop` without JSON."""
    model, mmproj = make_model(tmp_path, thinking=True)
    s = LiveServer((str(model), str(mmproj)), "--no-warmup", log_path=tmp_path / "s.log")
    try:
        r = ask(s, {"messages": [user("think, then answer")], "max_tokens": 40,
                    "temperature": 1, "response_format": response_format("flat")})
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "length" and choice["message"]["reasoning_content"]
        assert choice["message"]["content"] == ""
    finally:
        s.stop()
