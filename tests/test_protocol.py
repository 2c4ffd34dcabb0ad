"""Unit tests of the layers that need no model: request parsing, text streaming, template."""

from __future__ import annotations

import pytest

from vlserve.errors import InvalidRequestError
from vlserve.chat.protocol import ImagePart, TextPart, parse_chat_request
from vlserve.chat.template import ChatTemplate, TemplateError
from vlserve.chat.textstream import TextStream

OK = [{"role": "user", "content": "hi"}]


def parse(**body):
    return parse_chat_request(body, max_tokens_cap=4096)


def test_parses_text_and_image_parts():
    req = parse(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
            {"type": "image_url", "image_url": {"url": "data:x", "detail": "high"}}]},
        {"role": "assistant", "content": None}],
        stream=True, stream_options={"include_usage": True}, max_tokens=12,
        temperature=0, stop="END", seed=7)
    assert req.messages[0].role == "system"
    assert req.messages[1].parts == (TextPart("what is this?"),
                                     ImagePart("data:image/png;base64,AAAA", "auto"),
                                     ImagePart("data:x", "high"))
    assert req.messages[2].parts == ()
    assert (req.stream, req.include_usage) == (True, True)
    p = req.params
    assert (p.max_tokens, p.temperature, p.stop, p.seed) == (12, 0, ("END",), 7)


def test_max_completion_tokens_is_accepted():
    assert parse(messages=OK, max_completion_tokens=5).params.max_tokens == 5


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:", "detail": "ultra"}}]}]},
     "messages[0].content[0].image_url.detail"),
    ({"messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": "data:"}]}]}, "messages[0].content"),
    ({"messages": OK, "n": 2}, "n"),
    ({"messages": OK, "max_tokens": 0}, "max_tokens"),
    ({"messages": OK, "max_tokens": -5}, "max_tokens"),
    ({"messages": OK, "max_tokens": 10**9}, "max_tokens"),
    ({"messages": OK, "max_tokens": "many"}, "max_tokens"),
    ({"messages": OK, "max_tokens": True}, "max_tokens"),
    ({"messages": OK, "temperature": 3}, "temperature"),
    ({"messages": OK, "temperature": -0.1}, "temperature"),
    ({"messages": OK, "top_p": 1.5}, "top_p"),
    ({"messages": OK, "presence_penalty": 9}, "presence_penalty"),
    ({"messages": OK, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": OK, "stop": [""]}, "stop"),
    ({"messages": OK, "stream": "yes"}, "stream"),
    ({"messages": OK, "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"messages": OK, "functions": [{"name": "f"}]}, "functions"),
    ({"messages": OK, "model": 3}, "model"),
    # not hashable: a 400 naming the field, not a TypeError (500)
    ({"messages": [{"role": [], "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": {"a": 1}, "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:", "detail": ["high"]}}]}]},
     "messages[0].content[0].image_url.detail"),
    ({"messages": OK, "reasoning_format": ["none"]}, "reasoning_format"),
    # stream_options: an object of booleans, not anything truthy or falsy
    ({"messages": OK, "stream": True, "stream_options": False}, "stream_options"),
    ({"messages": OK, "stream": True, "stream_options": ""}, "stream_options"),
    ({"messages": OK, "stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({"messages": OK, "stream": True, "stream_options": {"include_usage": 1}},
     "stream_options.include_usage"),
])
def test_bad_requests_name_their_field(body, param):
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(body, max_tokens_cap=4096)
    assert info.value.param == param
    assert info.value.status == 400 and info.value.message


def test_body_must_be_an_object():
    with pytest.raises(InvalidRequestError):
        parse_chat_request(["messages"], max_tokens_cap=10)


# ---- TextStream ---------------------------------------------------------------------------

def run_stream(pieces: list[bytes], stops=()) -> tuple[list[str], bool, str]:
    ts, out = TextStream(tuple(stops)), []
    for piece in pieces:
        text, hit = ts.feed(piece)
        out.append(text)
        if hit:
            return out, True, ""
    return out, False, ts.flush()


def test_split_utf8_is_joined():
    snow = "☃".encode()
    out, hit, tail = run_stream([b"a", snow[:1], snow[1:], b"b"])
    assert "".join(out) + tail == "a☃b" and not hit
    assert out[1] == ""  # nothing emitted for half a character


def test_stop_string_across_tokens_is_cut_and_never_emitted():
    out, hit, _ = run_stream([b"Hello E", b"N", b"D and more"], stops=["END"])
    assert hit and "".join(out) == "Hello "


def test_held_prefix_is_released_when_it_does_not_match():
    out, hit, tail = run_stream([b"x E", b"Nx"], stops=["END"])
    assert not hit and out == ["x ", "ENx"] and tail == ""


def test_earliest_of_several_stops_wins():
    out, hit, _ = run_stream([b"one two three"], stops=["three", "two"])
    assert hit and "".join(out) == "one "


def test_flush_returns_held_text():
    out, hit, tail = run_stream([b"abc EN"], stops=["END"])
    assert "".join(out) == "abc " and tail == "EN"


# ---- ChatTemplate -----------------------------------------------------------------------------

def test_images_become_the_marker_in_chatml():
    req = parse(messages=[{"role": "system", "content": "S"}, {"role": "user", "content": [
        {"type": "text", "text": "look "}, {"type": "image_url", "image_url": "data:"}]}])
    text = ChatTemplate(None).render(req.messages, "<M>")
    assert text == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nlook <M><|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_template_exceptions_become_400():
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError) as info:
        template.render(parse(messages=OK).messages, "<M>")
    assert "roles must alternate" in info.value.message and info.value.status == 400


def test_template_sandbox_blocks_attribute_escapes():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(TemplateError):
        template.render(parse(messages=OK).messages, "<M>")
