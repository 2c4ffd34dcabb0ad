"""OpenAI chat-completions request parsing and response shapes.

`parse_chat_request` turns an untrusted JSON body into frozen dataclasses or raises an
`InvalidRequestError` naming the offending field; nothing past this module sees raw JSON.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError

ROLES = {"system", "developer", "user", "assistant"}
DETAILS = {"low", "auto", "high"}
MAX_STOP_STRINGS = 4
# Where a Thinking model's reasoning goes: its own field (the names llama.cpp's server
# accepts for that) or, with "none", left inline in `content` as <think>…</think>.
REASONING_FORMATS = {"auto": "parsed", "deepseek": "parsed", "parsed": "parsed",
                     "none": "inline"}
# Fields we do not implement: refusing them is more honest than silently ignoring them.
UNSUPPORTED = {"tools": "tool calling", "functions": "function calling",
               "logprobs": "logprobs", "top_logprobs": "logprobs",
               "logit_bias": "logit_bias", "audio": "audio output"}


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    url: str
    detail: str = "auto"


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[TextPart | ImagePart, ...]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    reasoning_inline: bool = False    # reasoning_format "none": <think>…</think> in content

    @property
    def image_parts(self) -> list[ImagePart]:
        return [p for m in self.messages for p in m.parts if isinstance(p, ImagePart)]


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _text(value: str, param: str) -> str:
    """JSON may carry lone UTF-16 surrogates (\\ud800) that no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad("the text is not valid Unicode (it has a lone surrogate)", param) from None
    return value


def _number(body: dict, name: str, lo: float, hi: float, default, *, integer=False):
    """A numeric field within [lo, hi]; bools are not numbers even though Python says so."""
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise _bad(f"'{name}' must be {kind}, got {type(value).__name__}", name)
    if not lo <= value <= hi:
        raise _bad(f"'{name}' must be between {lo} and {hi}, got {value}", name)
    return value


def _parse_part(part: Any, param: str) -> TextPart | ImagePart:
    if not isinstance(part, dict):
        raise _bad("each content part must be an object with a 'type'", param)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad("a text part needs a string 'text'", f"{param}.text")
        return TextPart(_text(text, f"{param}.text"))
    if kind == "image_url":
        image = part.get("image_url")
        if isinstance(image, str):
            return ImagePart(image)
        if isinstance(image, dict) and isinstance(image.get("url"), str):
            detail = image.get("detail") or "auto"
            if detail not in DETAILS:
                raise _bad(f"image detail must be one of low, auto, high; got {detail!r}",
                           f"{param}.image_url.detail")
            return ImagePart(image["url"], detail)
        raise _bad("'image_url' must be a URL string or an object with a string 'url'",
                   f"{param}.image_url")
    raise _bad(f"unsupported content part type {kind!r} (expected 'text' or 'image_url')",
               f"{param}.type")


def _parse_message(msg: Any, i: int) -> Message:
    param = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise _bad("each message must be an object with 'role' and 'content'", param)
    role = msg.get("role")
    if role not in ROLES:
        raise _bad(f"unknown role {role!r}; expected one of {', '.join(sorted(ROLES))}",
                   f"{param}.role")
    role = "system" if role == "developer" else role
    content = msg.get("content")
    if content is None and role == "assistant":
        return Message(role, ())
    if isinstance(content, str):
        return Message(role, (TextPart(_text(content, f"{param}.content")),))
    if not isinstance(content, list):
        raise _bad("'content' must be a string or a list of content parts",
                   f"{param}.content")
    parts = tuple(_parse_part(p, f"{param}.content[{j}]") for j, p in enumerate(content))
    if role != "user" and any(isinstance(p, ImagePart) for p in parts):
        raise _bad("images are only accepted in user messages", f"{param}.content")
    return Message(role, parts)


def _parse_stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stop)):
        raise _bad(f"'stop' must be a non-empty string or a list of up to "
                   f"{MAX_STOP_STRINGS} non-empty strings", "stop")
    return tuple(_text(s, "stop") for s in stop)


def _parse_params(body: dict, max_tokens_cap: int) -> SamplingParams:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    defaults = SamplingParams()
    return SamplingParams(
        max_tokens=_number(body, name, 1, max_tokens_cap, None, integer=True),
        temperature=_number(body, "temperature", 0.0, 2.0, defaults.temperature),
        top_p=_number(body, "top_p", 0.0, 1.0, defaults.top_p),
        top_k=_number(body, "top_k", 0, 1_000_000, defaults.top_k, integer=True),
        min_p=_number(body, "min_p", 0.0, 1.0, defaults.min_p),
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0, 0.0),
        repeat_penalty=_number(body, "repeat_penalty", 0.01, 10.0, 1.0),
        seed=_number(body, "seed", -2**63, 2**64 - 1, None, integer=True),
        stop=_parse_stop(body),
    )


def parse_chat_request(body: Any, *, max_tokens_cap: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None)
    for key, what in UNSUPPORTED.items():
        if body.get(key) not in (None, False, [], {}):
            raise _bad(f"{what} is not supported by this server", key)
    if _number(body, "n", 1, 1_000_000, 1, integer=True) != 1:
        raise _bad("only n=1 is supported", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("'model' must be a string", "model")
    if model is not None:
        _text(model, "model")
    reasoning = body.get("reasoning_format") or "auto"
    if reasoning not in REASONING_FORMATS:
        raise _bad(f"'reasoning_format' must be one of {', '.join(REASONING_FORMATS)}",
                   "reasoning_format")
    return ChatRequest(
        messages=tuple(_parse_message(m, i) for i, m in enumerate(messages)),
        params=_parse_params(body, max_tokens_cap),
        model=model,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        reasoning_inline=REASONING_FORMATS[reasoning] == "inline",
    )


# ---- response shapes -------------------------------------------------------------------

def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
               image_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens,
                                      "image_tokens": image_tokens}}


def chunk(cid: str, model: str, created: int, delta: dict, finish_reason: str | None = None,
          usage: dict | None = None, choices: bool = True) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                        "finish_reason": finish_reason}] if choices else []}
    if usage is not None:
        out["usage"] = usage
    return out


def completion(cid: str, model: str, text: str, finish_reason: str, usage: dict,
               extra: dict | None = None, reasoning: str = "") -> dict:
    message = {"role": "assistant", "content": text}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"id": cid, "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                         "message": message}],
            "usage": usage, **(extra or {})}
