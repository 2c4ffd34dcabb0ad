"""OpenAI chat-completions request parsing and response shapes, and their JSON Schemas.

`parse_chat_request` turns an untrusted JSON body into frozen dataclasses or raises an
`InvalidRequestError` naming the offending field; nothing past this module sees raw JSON.
The request's top-level fields are declared once (with `fields`): the parser reads each
with its declaration, and `request_schemas` renders the same declarations for the OpenAPI
document; messages and their parts are parsed by code with their schemas beside it.
`answer_schemas` describes what `completion`, `chunk` and `usage_dict` build.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .constraint import Constraint, ResponseFormat
from .fields import (Choice, DefaultOnly, Flag, Number, Options, Text, Texts, bad, nullable,
                     object_schema, text)
from .tools import ToolCall, Tools, parse_tools, tool_schemas, tools_constraint

ROLES = {"system", "developer", "user", "assistant", "tool"}
IMAGE_ROLES = {"user", "tool"}   # a tool may return a screenshot
DETAILS = {"low", "auto", "high"}
MAX_STOP_STRINGS = 4
# Where a Thinking model's reasoning goes: its own field (the names llama.cpp's server
# accepts for that) or, with "none", left inline in `content` as <think>…</think>.
REASONING_FORMATS = {"auto": "parsed", "deepseek": "parsed", "parsed": "parsed",
                     "none": "inline"}
# Fields we do not implement: refusing them is more honest than silently ignoring them.
UNSUPPORTED = {"functions": "function calling (the deprecated form: use tools)",
               "function_call": "function calling (the deprecated form: use tool_choice)",
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
    tool_calls: tuple[ToolCall, ...] = ()   # an assistant's calls
    tool_call_id: str | None = None         # a tool message answers this call


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
    constraint: Constraint | None = None   # response_format or tools: the answer's grammar


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    return_progress: bool = False     # prompt_progress chunks before the first token
    reasoning_inline: bool = False    # reasoning_format "none": <think>…</think> in content
    tools: Tools | None = None

    @property
    def image_parts(self) -> list[ImagePart]:
        return [p for m in self.messages for p in m.parts if isinstance(p, ImagePart)]


# ---- the request's fields, declared once: parsed with them, documented from them ---------

MODEL = Text("model", description=(
    "A model on this server (an id from /v1/models, a catalog name or a GGUF file name) "
    "switches to it (unless the server runs with `--no-switch-on-request`); any other name "
    "is answered by the loaded model."))
STREAM = Flag("stream", description="Server-sent events: `data: {chunk}` ... `data: [DONE]`.")
STREAM_OPTIONS = Options("stream_options", {
    "include_usage": "A last chunk with `usage` and no choices."})
RETURN_PROGRESS = Flag("return_progress", description=(
    "With `stream`: before the first token, chunks with `prompt_progress` (llama.cpp's "
    "shape: `total`, `cache`, `processed`, `time_ms`; plus `images`: `total`, `done`, "
    "`tokens_left`, `encoding`) and empty `choices[0].delta`: one as the prompt starts, "
    "one before and after each image encoded, one per prompt slice, the last with "
    "`processed` = `total`. For local models; a non-streamed answer has nowhere to put "
    "them (llama.cpp's server ignores it there too)."))
MAX_TOKENS = Number("max_tokens", 1, None, integer=True, description=(
    "At most the server's `--max-tokens-cap` (default: the context size); above it 400. "
    "Default: what is left of the context."))
MAX_COMPLETION_TOKENS = Number("max_completion_tokens", 1, None, integer=True,
                               description="Same as max_tokens; wins when both are set.")
SAMPLING = (   # SamplingParams' fields by name, with its defaults
    Number("temperature", 0.0, 2.0, SamplingParams.temperature),
    Number("top_p", 0.0, 1.0, SamplingParams.top_p),
    Number("top_k", 0, 1_000_000, SamplingParams.top_k, integer=True, description="0 = off."),
    Number("min_p", 0.0, 1.0, SamplingParams.min_p),
    Number("presence_penalty", -2.0, 2.0, SamplingParams.presence_penalty),
    Number("frequency_penalty", -2.0, 2.0, SamplingParams.frequency_penalty),
    Number("repeat_penalty", 0.01, 10.0, SamplingParams.repeat_penalty),
    Number("seed", -2**63, 2**64 - 1, integer=True,
           description="Negative: random. Default: the server's `--seed`."),
    Texts("stop", MAX_STOP_STRINGS,
          description=f"Up to {MAX_STOP_STRINGS} non-empty stop strings."),
)
N = DefaultOnly("n", 1, 1_000_000, 1, integer=True,
                description="Only one choice is supported.")
REASONING_FORMAT = Choice("reasoning_format", REASONING_FORMATS, "auto", description=(
    "Thinking models: `none` keeps the reasoning inline in `content` as "
    "`<think>...</think>`; the others put it in `reasoning_content`."))
RESPONSE_FORMAT = ResponseFormat("response_format", description=(
    "`json_object` or `json_schema`: the answer is JSON (valid against the schema), enforced "
    "token by token; it ends when the JSON is complete (`finish_reason` `stop`), or is cut "
    "by max_tokens (`length`: then it is not complete). A Thinking model reasons freely "
    "first. Not combinable with `stop`."))
FIELDS = (MODEL, STREAM, STREAM_OPTIONS, RETURN_PROGRESS, MAX_TOKENS, MAX_COMPLETION_TOKENS,
          *SAMPLING, N, REASONING_FORMAT, RESPONSE_FORMAT)


def _parse_part(part: Any, param: str) -> TextPart | ImagePart:
    if not isinstance(part, dict):
        raise bad("each content part must be an object with a 'type'", param)
    kind = part.get("type")
    if kind == "text":
        value = part.get("text")
        if not isinstance(value, str):
            raise bad("a text part needs a string 'text'", f"{param}.text")
        return TextPart(text(value, f"{param}.text"))
    if kind == "image_url":
        image = part.get("image_url")
        if isinstance(image, str):
            return ImagePart(image)
        if isinstance(image, dict) and isinstance(image.get("url"), str):
            detail = image.get("detail") or "auto"
            if not isinstance(detail, str) or detail not in DETAILS:
                raise bad(f"image detail must be one of low, auto, high; got {detail!r}",
                          f"{param}.image_url.detail")
            return ImagePart(image["url"], detail)
        raise bad("'image_url' must be a URL string or an object with a string 'url'",
                  f"{param}.image_url")
    raise bad(f"unsupported content part type {kind!r} (expected 'text' or 'image_url')",
              f"{param}.type")


def _parse_message(msg: Any, i: int) -> Message:
    param = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise bad("each message must be an object with 'role' and 'content'", param)
    role = msg.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise bad(f"unknown role {role!r}; expected one of {', '.join(sorted(ROLES))}",
                  f"{param}.role")
    role = "system" if role == "developer" else role
    calls = _parse_tool_calls(msg.get("tool_calls"), f"{param}.tool_calls") \
        if role == "assistant" else ()
    call_id = None
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise bad("a tool message needs the 'tool_call_id' of the call it answers",
                      f"{param}.tool_call_id")
    content = msg.get("content")
    if content is None and role == "assistant":
        return Message(role, (), calls)
    if isinstance(content, str):
        return Message(role, (TextPart(text(content, f"{param}.content")),), calls, call_id)
    if not isinstance(content, list):
        raise bad("'content' must be a string or a list of content parts",
                  f"{param}.content")
    parts = tuple(_parse_part(p, f"{param}.content[{j}]") for j, p in enumerate(content))
    if role not in IMAGE_ROLES and any(isinstance(p, ImagePart) for p in parts):
        raise bad("images are only accepted in user and tool messages", f"{param}.content")
    return Message(role, parts, calls, call_id)


def _parse_tool_calls(calls: Any, param: str) -> tuple[ToolCall, ...]:
    """An assistant message's earlier calls, as OpenAI writes them."""
    if calls is None:
        return ()
    if not isinstance(calls, list):
        raise bad("tool_calls must be a list", param)
    out = []
    for j, call in enumerate(calls):
        where = f"{param}[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise bad("a tool call is {\"id\", \"type\": \"function\", \"function\": "
                      "{\"name\", \"arguments\"}}", where)
        if call.get("type", "function") != "function":
            raise bad(f"tool call type must be 'function'; got {call.get('type')!r}",
                      f"{where}.type")
        if not isinstance(call.get("id"), str):
            raise bad("a tool call needs a string 'id'", f"{where}.id")
        function = call["function"]
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise bad("a tool call needs a function 'name'", f"{where}.function.name")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            raise bad("a tool call's arguments must be a string of JSON",
                      f"{where}.function.arguments")
        out.append(ToolCall(call["id"], text(function["name"], f"{where}.function.name"),
                            text(arguments, f"{where}.function.arguments")))
    return tuple(out)


def parse_chat_request(body: Any, *, max_tokens_cap: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None)
    for key, what in UNSUPPORTED.items():
        if body.get(key) not in (None, False, [], {}):
            raise bad(f"{what} is not supported by this server", key)
    N.read(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    stream, options, model = STREAM.read(body), STREAM_OPTIONS.read(body), MODEL.read(body)
    reasoning = REASONING_FORMAT.read(body)
    parsed = tuple(_parse_message(m, i) for i, m in enumerate(messages))
    max_tokens = (MAX_COMPLETION_TOKENS if body.get("max_completion_tokens") is not None
                  else MAX_TOKENS)
    sampling = {f.name: f.read(body) for f in SAMPLING}
    constraint, tools = RESPONSE_FORMAT.read(body), parse_tools(body)
    if tools is not None:
        if constraint is None:
            constraint = tools_constraint(tools)
        elif tools.calls:   # (with none, the JSON grammar has no room for a call anyway)
            raise bad("response_format cannot be combined with tools unless tool_choice is "
                      "none", "response_format")
    if constraint is not None and constraint.grammar is not None and sampling["stop"]:
        raise bad("stop strings cannot be combined with a JSON response_format or tool "
                  "calls: they could cut the JSON short", "stop")
    return ChatRequest(
        messages=parsed,
        params=SamplingParams(max_tokens=max_tokens.read(body, hi=max_tokens_cap),
                              constraint=constraint, **sampling),
        model=model,
        stream=stream,
        include_usage=options["include_usage"],
        return_progress=RETURN_PROGRESS.read(body),
        reasoning_inline=reasoning == "inline",
        tools=tools,
    )


def request_schemas(ref: Callable[[str], dict]) -> dict:
    """The request's JSON Schemas by name (`ChatCompletionRequest`, `ChatMessage`,
    `TextPart`, `ImagePart`), for the OpenAPI document; `ref(name)` points at one of them."""
    string = {"type": "string"}
    text_part = object_schema({"type": {"const": "text"}, "text": string}, title="Text part")
    image_url = object_schema({"url": string, "detail": nullable({
        "type": "string", "enum": sorted(DETAILS),
        "description": "`low` caps the image at 512x512; `auto` and `high` use the server's "
                       "limits. Default `auto`."})}, ["url"])
    image_part = object_schema({"type": {"const": "image_url"}, "image_url": {
        "description": "The image as a base64 `data:` URL (`data:image/png;base64,...`; PNG, "
                       "JPEG, WebP, GIF (first frame), BMP), or an object with it. "
                       "`http(s)://` URLs are fetched only from hosts the operator allowed "
                       "(`--remote-image-host`); other URLs get 400.",
        "oneOf": [string, image_url]}}, title="Image part")
    texts = {"type": "array", "items": ref("TextPart")}
    any_parts = {"type": "array", "items": {"oneOf": [ref("TextPart"), ref("ImagePart")]}}

    def message(title: str, role: dict, content: list, required=None, **more) -> dict:
        return object_schema({"role": role, "content": {"oneOf": content}, **more}, required,
                             title=title)

    chat_message = {
        "description": "One turn. `developer` is a synonym of `system`. Images are accepted "
                       "in user and tool messages only.",
        "oneOf": [
            message("System message", {"enum": sorted(ROLES - {"user", "assistant", "tool"})},
                    [string, texts]),
            message("User message", {"const": "user"}, [string, any_parts]),
            message("Assistant message", {"const": "assistant"},
                    [string, texts, {"type": "null"}], ["role"],
                    tool_calls={"type": "array", "items": ref("ToolCall"),
                                "description": "The calls this turn made."}),
            message("Tool message", {"const": "tool"}, [string, any_parts],
                    ["role", "content", "tool_call_id"],
                    tool_call_id={"type": "string",
                                  "description": "The id of the call this answers."})]}
    refused = ", ".join(f"`{k}`" for k in UNSUPPORTED)
    request = object_schema(
        {"messages": {"type": "array", "minItems": 1, "items": ref("ChatMessage")},
         **{f.name: f.schema() for f in FIELDS}, **tool_schemas()},
        ["messages"],
        description="OpenAI's chat-completions request, the parts of it this server "
                    f"implements. {refused} are refused with 400 unless null, false or "
                    "empty; other unknown fields are ignored. Numbers that must be integers "
                    "must be written without a fraction (`8`, not `8.0`). A null field "
                    "means its default.")
    return {"ChatCompletionRequest": request, "ChatMessage": chat_message,
            "TextPart": text_part, "ImagePart": image_part, "ToolCall": tool_call_schema()}


def tool_call_schema() -> dict:
    """A tool call as OpenAI writes one, in an answer or in a conversation's history."""
    return object_schema({
        "id": {"type": "string"}, "type": {"const": "function"},
        "function": object_schema({"name": {"type": "string"}, "arguments": {
            "type": "string", "description": "The arguments, a JSON object as text."}})},
        title="Tool call")


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


def completion(cid: str, model: str, text: str | None, finish_reason: str, usage: dict,
               extra: dict | None = None, reasoning: str = "",
               tool_calls: list[dict] | None = None) -> dict:
    message = {"role": "assistant", "content": text}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": cid, "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                         "message": message}],
            "usage": usage, **(extra or {})}


def answer_schemas(ref: Callable[[str], dict]) -> dict:
    """The JSON Schemas of what `completion`, `chunk` and `usage_dict` build
    (`ChatCompletion`, `ChatCompletionChunk`, `Usage`), for the OpenAPI document; `ref(name)`
    points at a schema, `Timings` and `Context` included (the engine's and the web's)."""
    count, string = {"type": "integer", "minimum": 0}, {"type": "string"}

    def answer(kind: str, choices: dict) -> dict:
        return {"id": {"type": "string", "pattern": "^chatcmpl-"}, "object": {"const": kind},
                "created": {"type": "integer"}, "model": string, "choices": choices,
                "usage": ref("Usage"), "timings": ref("Timings"), "context": ref("Context")}

    always = ["id", "object", "created", "model", "choices"]
    reasons = ["stop", "length", "tool_calls"]
    message = object_schema({"role": {"const": "assistant"}, "content": {
                                 "type": ["string", "null"],
                                 "description": "Null when the answer is only tool calls."},
                             "reasoning_content": {
                                 "type": "string",
                                 "description": "A Thinking model's reasoning."},
                             "tool_calls": {"type": "array", "items": ref("ToolCall")}},
                            ["role", "content"])
    completion = object_schema(answer("chat.completion", {
        "type": "array", "minItems": 1, "maxItems": 1, "items": object_schema({
            "index": {"const": 0}, "finish_reason": {"enum": reasons, "description": (
                "`tool_calls`: the answer ended with its calls complete; `length`: cut by "
                "max_tokens (a call it cut keeps its arguments so far).")},
            "logprobs": {"type": "null"}, "message": message})}),
        [*always, "usage", "timings"])
    call_delta = object_schema({
        "index": {"type": "integer", "minimum": 0}, "id": string, "type": {"const": "function"},
        "function": {"type": "object", "properties": {"name": string, "arguments": string}}},
        ["index", "function"], description="A call's first delta has its id, type and name; "
                                           "the next ones carry pieces of its arguments.")
    delta = {"type": "object", "properties": {"role": {"const": "assistant"},
                                              "content": string, "reasoning_content": string,
                                              "tool_calls": {"type": "array",
                                                             "items": call_delta}}}
    progress = object_schema({
        "total": count, "cache": count, "processed": count,
        "time_ms": {"type": "number", "minimum": 0},
        "images": object_schema({"total": count, "done": count, "tokens_left": count,
                                 "encoding": {"type": "boolean",
                                              "description": "An image is being encoded now."}},
                                description="The images past the cache; `tokens_left`: "
                                            "the prompt tokens of those not in yet.")},
        description="How far the prompt is (`return_progress`): `processed` (cache "
                    "included) reaches `total` in the last one.")
    chunk = object_schema({**answer("chat.completion.chunk", {
        "type": "array", "maxItems": 1, "items": object_schema({
            "index": {"const": 0}, "delta": delta, "logprobs": {"type": "null"},
            "finish_reason": {"enum": [*reasons, None]}})}), "prompt_progress": progress},
        always,
        description="One stream event. The first carries the role (and `context` when the "
                    "conversation was fitted); with `return_progress`, chunks with "
                    "`prompt_progress` and an empty delta come before the first token; the "
                    "last with choices carries `finish_reason` and `timings`; with "
                    "`include_usage` one more carries `usage` and no choices.")
    usage = object_schema({
        "prompt_tokens": count, "completion_tokens": count, "total_tokens": count,
        "prompt_tokens_details": object_schema({"cached_tokens": count,
                                                "image_tokens": count})})
    return {"ChatCompletion": completion, "ChatCompletionChunk": chunk, "Usage": usage}
