"""Tool calls end to end, on the real engine, through the real server.

The model is the tiny one with Qwen3-VL's own chat template, made to open `<tool_call>` by
itself now and then (conftest's `real_model`): its weights are random, so whatever it writes
inside a call is noise unless the grammar holds it. Every call it makes with tools must then
name a tool and carry arguments valid against that tool's schema (jsonschema); the same model
without the constraint writes calls that are not (so these tests can fail)."""

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

from conftest import ask_ok as ask, data_url, user
from vlserve.chat.tools import ToolCallReader

CHAT = "/v1/chat/completions"
WORD = {"type": "string", "maxLength": 8}


def function(name: str, properties: dict, **more) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": f"{name} (test tool)", "parameters": {
            "type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False, **more}}}


TOOLS = [
    function("get_weather", {"city": WORD, "unit": {"enum": ["c", "f"]}}),
    function("read_meter", {"meter": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                            "value": {"type": "integer", "minimum": 0, "maximum": 99999}}),
    function("add_labels", {"labels": {"type": "array", "minItems": 1, "maxItems": 3,
                                       "items": {"enum": ["bolt", "nut", "gear"]}}}),
    function("click", {"at": {"$ref": "#/$defs/point"}},
             **{"$defs": {"point": {"type": "object", "additionalProperties": False,
                                    "required": ["x", "y"], "properties": {
                                        "x": {"type": "integer", "minimum": 0, "maximum": 999},
                                        "y": {"type": "integer", "minimum": 0,
                                              "maximum": 999}}}}}),
    {"type": "function", "function": {"name": "now", "description": "The time."}},
]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {
    "type": "object", "properties": {}, "additionalProperties": False}) for t in TOOLS}
NAMED = {"type": "function", "function": {"name": "read_meter"}}


def check_calls(calls: list[dict], only: str | None = None) -> None:
    """Each call: an id, a tool's name, arguments (a JSON string) valid for that tool."""
    for call in calls:
        assert call["id"].startswith("call_") and call["type"] == "function"
        name = call["function"]["name"]
        assert name in SCHEMAS and (only is None or name == only), name
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


def collect(response: requests.Response, stream: bool) -> tuple[dict, str]:
    """(message, finish_reason) of a whole answer, or of a stream's deltas assembled as
    OpenAI's clients assemble them (a call's first delta has its id and name, the rest
    carry pieces of its arguments, by index)."""
    if not stream:
        choice = response.json()["choices"][0]
        return choice["message"], choice["finish_reason"]
    message, calls, reason = {"content": ""}, {}, None
    for line in response.iter_lines():
        if not line.startswith(b"data: {"):
            continue
        choices = json.loads(line[6:])["choices"]
        if not choices:
            continue
        delta, reason = choices[0]["delta"], choices[0]["finish_reason"] or reason
        message["content"] += delta.get("content") or ""
        for piece in delta.get("tool_calls") or []:
            if piece["index"] not in calls:
                assert piece["id"] and piece["function"]["name"], piece   # first: whole head
                calls[piece["index"]] = {"id": piece["id"], "type": piece["type"],
                                         "function": {"name": piece["function"]["name"],
                                                      "arguments": ""}}
            calls[piece["index"]]["function"]["arguments"] += piece["function"].get(
                "arguments", "")
    assert sorted(calls) == list(range(len(calls)))
    message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, reason


@pytest.fixture(scope="module")
def server(real_server):
    return real_server


def test_every_call_is_valid_required_named_or_auto_streamed_or_not_batched_with_images(
        server):
    """required, a named tool and auto x temperature 0 and 1 x streamed or not x text or
    image x 4 seeds, 4 at a time: 96 answers, every call valid; required and named always
    call (named: only that tool); parallel_tool_calls false: at most one call. (With
    parallel calls this model, which opens a call whenever it can, calls until max_tokens
    cuts it: then every call but the cut last one is complete and valid.)"""
    cases = list(enumerate(itertools.product(
        ("required", NAMED, "auto"), (0, 1), (False, True), (False, True), range(4))))
    photo = data_url(48, 32)

    def one(i_case):
        i, (choice, temperature, stream, image, seed) = i_case
        content = [{"type": "text", "text": f"Look at part {i} and call a tool."}]
        if image:
            content.insert(0, {"type": "image_url", "image_url": {"url": photo}})
        body = {"messages": [{"role": "user", "content": content}], "tools": TOOLS,
                "tool_choice": choice, "parallel_tool_calls": seed % 2 == 0,
                "max_tokens": 300, "temperature": temperature, "seed": seed, "stream": stream}
        return choice, seed, *collect(ask(server, body), stream)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, cases))
    counts = {"calls": 0, "auto_calls": 0, "auto_text_first": 0}
    for choice, seed, message, reason in answers:
        calls = message.get("tool_calls") or []
        assert reason in ("tool_calls", "length"), reason
        if seed % 2:   # one call at most: it always ends
            assert len(calls) <= 1 and (reason == "tool_calls" or choice == "auto"), message
        check_calls(calls if reason == "tool_calls" else calls[:-1],
                    only="read_meter" if choice == NAMED else None)
        if choice != "auto":
            assert calls and not (message["content"] or "").startswith(("<", "{")), message
        elif calls:
            counts["auto_calls"] += 1
            counts["auto_text_first"] += bool(message["content"])
        else:
            assert reason == "length"   # the model's free text: noise until max_tokens
        counts["calls"] += len(calls)
    # auto both calls and writes text first (the lazy trigger) in this run
    assert counts["auto_calls"] and counts["auto_text_first"], counts


def test_without_tools_the_same_model_writes_calls_that_are_not_valid(server):
    """The proof can fail: the model opens <tool_call> by itself (in nearly every answer:
    its sampling is random, so not necessarily in all), and what follows is noise."""
    opened = invalid = 0
    for seed in range(8):
        r = ask(server, {"messages": [user("Call a tool.")], "max_tokens": 120,
                         "temperature": 1, "seed": seed})
        text = r.json()["choices"][0]["message"]["content"]
        if "<tool_call>" not in text:
            continue
        opened += 1
        reader = ToolCallReader()
        reader.feed(text)
        reader.finish()
        try:
            check_calls(reader.calls)
            assert reader.calls and reader.closed == len(reader.calls)
        except (AssertionError, ValueError, jsonschema.ValidationError):
            invalid += 1
    assert opened >= 6 and invalid == opened, (opened, invalid)


def test_tool_choice_none_never_calls(server):
    """The same model opens <tool_call> at almost every answer; with none it cannot."""
    for seed in range(8):
        r = ask(server, {"messages": [user("Call a tool.")], "tools": TOOLS,
                         "tool_choice": "none", "max_tokens": 60, "temperature": 1,
                         "seed": seed})
        choice = r.json()["choices"][0]
        assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "length"
        assert "<tool_call>" not in choice["message"]["content"]


def test_streamed_and_whole_answers_agree(server):
    """The same tokens give the same answer: the stream's assembled calls are the whole
    answer's (ids apart). Two runs of one prompt do not always get the same tokens: the
    second continues from the first's KV cache, and a prompt continued from the cache and
    one evaluated whole differ in the last bits of their logits (another summation order),
    which flips a near-tie now and then (about one run of this module in six). So a pair that
    disagrees is run again: float noise does not repeat, a bug in assembling the stream
    would, every time."""
    for choice in ("auto", "required"):
        for question in ("Weather?", "What is the weather in Oslo?", "Read meter 7."):
            body = {"messages": [user(question)], "tools": TOOLS, "tool_choice": choice,
                    "max_tokens": 200, "temperature": 0}
            pairs = []
            for _ in range(3):
                whole, r1 = collect(ask(server, body), False)
                streamed, r2 = collect(ask(server, {**body, "stream": True}), True)
                calls = [c["function"] for c in whole.get("tool_calls") or []]
                pairs.append((r1, calls, (whole["content"] or "").strip(),
                              r2, [c["function"] for c in streamed["tool_calls"]],
                              streamed["content"].strip()))
                if pairs[-1][:3] == pairs[-1][3:]:
                    break
            else:
                raise AssertionError(f"{choice} {question!r}: the stream disagreed with the "
                                     f"whole answer three times: {pairs}")


def test_a_cut_call_says_length(server):
    r = ask(server, {"messages": [user("x")], "tools": TOOLS, "tool_choice": NAMED,
                     "max_tokens": 45, "temperature": 0})
    message, reason = collect(r, False)
    assert reason == "length" and message["content"] is None, (message, r.json()["usage"])
    calls = message["tool_calls"]   # what it had: the name, and arguments cut short
    assert calls[0]["function"]["name"] == "read_meter"
    with pytest.raises(ValueError):
        json.loads(calls[0]["function"]["arguments"])


def test_a_round_trip_with_a_screenshot_as_the_tool_result_keeps_the_prefix_cache(server):
    """Call, run the tool (here: a screenshot), send the result back: the follow-up reuses
    the whole first turn from the KV cache, the generated call included (the template writes
    the call exactly as the grammar made the model write it)."""
    tools = [TOOLS[3]]   # click
    first = [user("Click the OK button.")]
    r1 = ask(server, {"messages": first, "tools": tools, "tool_choice": "required",
                      "parallel_tool_calls": False, "max_tokens": 100, "temperature": 0}).json()
    message = r1["choices"][0]["message"]
    [call] = message["tool_calls"]
    result = {"role": "tool", "tool_call_id": call["id"], "content": [
        {"type": "text", "text": "Clicked. The screen now:"},
        {"type": "image_url", "image_url": {"url": data_url(64, 48)}}]}
    r2 = ask(server, {"messages": [*first, message, result], "tools": tools,
                      "max_tokens": 8, "temperature": 0}).json()
    usage = r2["usage"]
    assert usage["prompt_tokens_details"]["image_tokens"] > 0
    assert usage["prompt_tokens_details"]["cached_tokens"] >= (
        r1["usage"]["prompt_tokens"] + r1["usage"]["completion_tokens"] - 1), (r1, usage)


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "unevaluatedProperties": False}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]},
     "tools[0].function.name"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
    ({"tools": [TOOLS[0]], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": [TOOLS[0]], "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": {"get_weather": {}}}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [TOOLS[0]], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": [TOOLS[0]], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [TOOLS[0]], "stop": ["}"]}, "stop"),
    ({"messages": [user("x"), {"role": "tool", "content": "18 C"}]}, "messages[1].tool_call_id"),
    ({"messages": [user("x"), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [user("x"), {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages[1].tool_calls[0].id"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "messages[0].content"),
])
def test_bad_tool_requests_are_400s_naming_the_field(client, body, param):
    r = client.post(CHAT, json={"messages": [user("x")], **body})
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


class Reading(pydantic.BaseModel):
    """Record a meter reading."""
    meter: str = pydantic.Field(pattern="^[A-Z]{2}[0-9]{3}$")
    value: int = pydantic.Field(ge=0, le=99999)
    unit: Literal["kWh", "m3"]


def test_openai_sdk_pydantic_function_tool_streamed_through_its_helper(server):
    """The SDK's strict function tool from a Pydantic model, streamed: its helper assembles
    the deltas and parses the arguments into the model. (One call per answer: this model
    would call until max_tokens cut it, which the helper refuses to parse.)"""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    tool = openai.pydantic_function_tool(Reading)
    for seed in range(3):
        with client.chat.completions.stream(
                model="tiny", seed=seed, max_tokens=200, tools=[tool], tool_choice="required",
                parallel_tool_calls=False,
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": data_url()}},
                    {"type": "text", "text": "Read the meter."}]}]) as stream:
            for _ in stream:
                pass
            done = stream.get_final_completion()
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            assert call.function.name == "Reading"
            assert isinstance(call.function.parsed_arguments, Reading)
    whole = client.chat.completions.parse(model="tiny", max_tokens=200, tools=[tool],
                                          tool_choice="required", parallel_tool_calls=False,
                                          messages=[{"role": "user", "content": "Read it."}])
    assert all(isinstance(c.function.parsed_arguments, Reading)
               for c in whole.choices[0].message.tool_calls)


def test_langchain_bind_tools(server):
    from langchain_core.messages import ToolMessage
    from langchain_openai import ChatOpenAI
    for seed in range(6):
        llm = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="tiny",
                         max_tokens=200, temperature=1, seed=seed, max_retries=0)
        # strict: additionalProperties false (without it the schema allows any extra key,
        # and this model's noise fills one until max_tokens)
        bound = llm.bind_tools([Reading], tool_choice="required", parallel_tool_calls=False,
                               strict=True)
        question = [("user", "Read the meter.")]
        ai = bound.invoke(question)
        assert ai.tool_calls and not ai.invalid_tool_calls, ai
        assert all(isinstance(Reading(**c["args"]), Reading) for c in ai.tool_calls)
        # the results go back as tool messages; the model answers (noise, but an answer)
        results = [ToolMessage("recorded", tool_call_id=c["id"]) for c in ai.tool_calls]
        follow = llm.bind_tools([Reading]).invoke([*question, ai, *results], max_tokens=5)
        assert follow.response_metadata["finish_reason"] in ("length", "tool_calls"), follow


def test_the_log_counts_tools_and_never_names_them(server):
    ask(server, {"messages": [user("x")], "tools": TOOLS, "tool_choice": "required",
                 "max_tokens": 100, "temperature": 0})
    log = server.log()
    assert f"tools={len(TOOLS)} tool_choice=required" in log
    assert "get_weather" not in log and "read_meter" not in log


# ---- the parts, alone ------------------------------------------------------------------------

ANSWER = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "P}a\\"r"}}'
          '\n</tool_call>\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>')


def test_the_reader_gives_the_same_calls_however_the_text_is_cut():
    from vlserve.chat.answer import shape_answer
    whole = shape_answer(ANSWER, thinking=False, inline=False, calls=True)
    assert whole.content == "Let me look." and whole.calls_complete
    assert [c["function"] for c in whole.tool_calls] == [
        {"name": "get_weather", "arguments": '{"city": "P}a\\"r"}'},
        {"name": "now", "arguments": "{}"}]
    for i, j in itertools.combinations(range(1, len(ANSWER)), 2):
        reader = ToolCallReader()
        deltas = [d for piece in (ANSWER[:i], ANSWER[i:j], ANSWER[j:])
                  for d in reader.feed(piece)] + reader.finish()
        assert [c["function"] for c in reader.calls] == [c["function"] for c in whole.tool_calls]
        assert "".join(d.get("content", "") for d in deltas).strip() == "Let me look."
        assert all(d["tool_calls"][0]["function"].get("arguments", "x")
                   for d in deltas if "tool_calls" in d and "id" not in d["tool_calls"][0])


def test_text_without_calls_is_the_content_as_written():
    from vlserve.chat.answer import shape_answer
    for text in ("", "  plain  \n", "a <tool_cal", "x < y and <b>", "<tool_call> not a call"):
        shaped = shape_answer(text, thinking=False, inline=False, calls=True)
        assert shaped.content == text and not shaped.tool_calls, text


def test_a_thinking_models_calls_come_after_its_reasoning():
    from vlserve.chat.answer import shape_answer
    shaped = shape_answer("hmm, weather.</think>\n\n" + ANSWER, thinking=True, inline=False,
                          calls=True)
    assert shaped.reasoning == "hmm, weather." and len(shaped.tool_calls) == 2


def guide_for(engine, body: dict):
    from vlserve.chat.protocol import parse_chat_request
    req = parse_chat_request({"messages": [user("x")], **body}, max_tokens_cap=100)
    return engine.guides.new(req.params.constraint, after_thinking=False)


def masked(guide, n_vocab: int) -> np.ndarray:
    logits = np.zeros(n_vocab, dtype=np.float32)
    guide.restrict(logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    return np.flatnonzero(np.isinf(logits))


def test_auto_is_free_until_the_trigger_then_held_and_none_bans_the_trigger(engine):
    """On the tiny model's vocabulary (`<tool_call>` one token, as in Qwen's): auto masks
    nothing until the model samples <tool_call>; then only what the grammar allows. none
    masks exactly that one token."""
    [trigger] = engine.guides.tokenizer().tokenize_bytes(b"<tool_call>")
    n_vocab = engine.guides.n_vocab
    auto = guide_for(engine, {"tools": TOOLS})
    assert len(masked(auto, n_vocab)) == 0
    for token in engine.guides.tokenizer().tokenize_bytes(b"Let me see. "):
        auto.accept(token, engine.piece(token))
        assert auto.waiting
    auto.accept(trigger, b"<tool_call>")
    assert not auto.waiting
    allowed = set(range(n_vocab)) - set(masked(auto, n_vocab))
    assert {engine.piece(t) for t in allowed} == {b"\n"}
    none = guide_for(engine, {"tools": TOOLS, "tool_choice": "none"})
    assert list(masked(none, n_vocab)) == [trigger]
    required = guide_for(engine, {"tools": TOOLS, "tool_choice": "required"})
    assert set(range(n_vocab)) - set(masked(required, n_vocab)) == {trigger}


def test_a_template_without_a_tools_section_is_told_not_hidden(settings, tmp_path):
    """A GGUF whose template never writes the tools (plain ChatML) would leave the model
    blind to them: tools are then a 400 naming `tools` (none passes); /v1/models says so."""
    from vlserve.chat.protocol import parse_chat_request
    from vlserve.chat.template import CHATML
    from vlserve.engine.llama import LlamaEngine
    from vlserve.errors import InvalidRequestError
    from vlserve.library.tinymodel import make_model
    model, mmproj = make_model(tmp_path, template=CHATML, name="plain-chatml")
    engine = LlamaEngine(settings.replace(model=str(model), mmproj=str(mmproj)))
    try:
        assert engine.info["tools"] is False
        for choice, fails in (("auto", True), ("required", True), ("none", False)):
            req = parse_chat_request({"messages": [user("x")], "tools": TOOLS,
                                      "tool_choice": choice}, max_tokens_cap=100)
            if fails:
                with pytest.raises(InvalidRequestError, match="no tools section") as err:
                    engine.prepare(req, [])
                assert err.value.param == "tools"
            else:
                engine.prepare(req, []).close()
    finally:
        engine.close()


def test_the_model_card_says_it_takes_tools(server):
    [card] = [c for c in requests.get(server.url + "/v1/models", timeout=10).json()["data"]
              if c["loaded"]]
    assert card["capabilities"]["tools"] is True
