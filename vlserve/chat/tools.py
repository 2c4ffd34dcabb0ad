"""Tool calls: the request's `tools`, `tool_choice` and `parallel_tool_calls` checked and
compiled into a `Constraint` on the calls, and the model's calls read out of its answer.

The call format is the one Qwen's chat templates teach (Hermes'): each call is
`<tool_call>\\n{"name": "<name>", "arguments": <JSON object>}\\n</tool_call>`, calls apart by a
newline. `<tool_call>` and `</tool_call>` are single tokens of Qwen's vocabulary.

The calls are constrained, not hoped for: the grammar spells that format with each tool's
name and its `parameters` schema (llguidance's `%json`, with the separators Qwen's template
writes, `", "` and `": "`). `required` or a named tool: the whole answer is calls from the
first token. `auto`: the model writes freely until it opens `<tool_call>` (a lazy trigger,
as llama.cpp does); from that token on, the grammar holds it. `none`: the tools are in the
prompt, and the `<tool_call>` token is never sampled.

`ToolCallReader` turns the answer's text into content and OpenAI tool calls, piece by piece
(stream deltas) or whole (the same reader, fed once), so both forms always agree.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import llguidance

from .constraint import Constraint, compile_schema
from .fields import bad

OPEN, CLOSE = "<tool_call>", "</tool_call>"
CHOICES = ("auto", "none", "required")
MAX_TOOLS = 128                                  # OpenAI's limit
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")      # OpenAI's rule for a function's name
# How Qwen's template writes JSON (HF's tojson: json.dumps' separators): a call in the same
# layout as the calls the model saw in its training and in the conversation.
QWEN_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
EMPTY_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ToolCall:
    """A call in an assistant message of the conversation (`arguments`: JSON text)."""
    id: str
    name: str
    arguments: str

    def template_dict(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Tools:
    """The request's tools as sent (what the chat template renders), the choice (`auto`,
    `none`, `required`, or `function`: the tool named `name` must be called), and whether
    several calls may come in one answer."""
    definitions: tuple[dict, ...]
    choice: str = "auto"
    name: str | None = None
    parallel: bool = True

    @property
    def calls(self) -> bool:
        """Whether the answer may hold calls (read out of it as tool_calls)."""
        return self.choice != "none"


def _function(tool: Any, i: int) -> dict:
    param = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise bad("each tool must be an object with 'type' and 'function'", param)
    if tool.get("type") != "function":
        raise bad(f"tool type must be 'function'; got {tool.get('type')!r}", f"{param}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise bad("a tool needs a 'function' object", f"{param}.function")
    name = function.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise bad("a function needs a 'name' of 1 to 64 letters, digits, '_' or '-'",
                  f"{param}.function.name")
    if not isinstance(function.get("description", ""), str):
        raise bad("a function's description must be a string", f"{param}.function.description")
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad("strict must be true or false", f"{param}.function.strict")
    parameters = function.get("parameters")
    if parameters is not None:   # checked now: a schema llguidance refuses is a 400 naming it
        compile_schema(parameters, strict=strict is True, name=name,
                       param=f"{param}.function.parameters")
    return function


def _choice(value: Any, names: set[str]) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in CHOICES:
            raise bad(f"tool_choice must be one of {', '.join(CHOICES)} or a named function; "
                      f"got {value!r}", "tool_choice")
        return value, None
    if not isinstance(value, dict) or value.get("type") != "function" \
            or not isinstance(value.get("function"), dict):
        raise bad("a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                  "tool_choice")
    name = value["function"].get("name")
    if name not in names:
        raise bad(f"tool_choice names {name!r}, which is not one of the tools",
                  "tool_choice.function.name")
    return "function", name


def parse_tools(body: dict) -> Tools | None:
    """The request's tools (None without any), checked: every error names its field."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad("parallel_tool_calls must be true or false", "parallel_tool_calls")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise bad("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise bad("tools must be a list of tools", "tools")
    if len(tools) > MAX_TOOLS:
        raise bad(f"at most {MAX_TOOLS} tools", "tools")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        name = _function(tool, i)["name"]
        if name in names:
            raise bad(f"two tools are named {name!r}", f"tools[{i}].function.name")
        names.add(name)
    kind, named = _choice(choice, names)
    return Tools(tuple(tools), kind, named, True if parallel is None else parallel)


def _lark_string(text: str) -> str:
    return json.dumps(text)   # a JSON string is a valid Lark string literal


def tools_constraint(tools: Tools) -> Constraint:
    """The calls' grammar: every call (or only the named one) with its arguments valid
    against its `parameters`, one call or (`parallel`) several."""
    if tools.choice == "none":
        return Constraint(None, "tools", param="tool_choice", start="never")
    rules, alternatives = [], []
    for i, tool in enumerate(tools.definitions):
        function = tool["function"]
        if tools.name is not None and function["name"] != tools.name:
            continue
        parameters = function.get("parameters")
        schema = dict(EMPTY_PARAMETERS if parameters is None else parameters)
        schema.setdefault("type", "object")   # the call's format needs an object
        schema["x-guidance"] = {**QWEN_JSON, "lenient": function.get("strict") is not True}
        head = _lark_string('\n{"name": "' + function["name"] + '", "arguments": ')
        rules.append(f'call_{i}: <tool_call> {head} args_{i} "}}\\n" </tool_call>')
        rules.append(f"args_{i}: %json {json.dumps(schema)}")
        alternatives.append(f"call_{i}")
    start = 'start: call ("\\n" call)*' if tools.parallel else "start: call"
    grammar = llguidance.LLMatcher.grammar_from_lark(
        "\n".join([start, "call: " + " | ".join(alternatives), *rules]))
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise bad(f"the tools cannot be enforced: {messages[0]}", "tools")
    return Constraint(grammar, "tools", param="tools",
                      start="now" if tools.choice in ("required", "function") else "trigger")


# ---- the answer: content and calls -------------------------------------------------------

# A call's head, exactly as the grammar writes it: the name is known once it is whole.
_NAME_START, _NAME_END = '\n{"name": "', '", "arguments": '
_HEAD = re.compile(re.escape(_NAME_START) + r"([a-zA-Z0-9_-]{1,64})" + re.escape(_NAME_END))


def _may_become_head(text: str) -> bool:
    """Whether `text` is the start of a call's head (more may make it whole)."""
    if len(text) <= len(_NAME_START):
        return _NAME_START.startswith(text)
    name = re.match(r"[a-zA-Z0-9_-]*", text[len(_NAME_START):]).end()
    return text.startswith(_NAME_START) and _NAME_END.startswith(
        text[len(_NAME_START) + name:])


def _holdback(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that could still begin `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ToolCallReader:
    """The answer's content text -> stream deltas: `{"content"}` for text, `{"tool_calls"}`
    for calls (the first delta of a call has its index, id, type and name; the rest carry
    pieces of its arguments). Text between or after calls that is only whitespace is
    dropped; without calls the content is the text as written."""

    def __init__(self):
        self.calls: list[dict] = []   # OpenAI tool_calls, arguments as they grew
        self.closed = 0               # how many calls were complete
        self._state, self._held, self._args_sent = "text", "", 0

    def feed(self, text: str) -> list[dict]:
        self._held += text
        out: list[dict] = []
        while getattr(self, "_" + self._state)(out):
            pass
        return out

    def finish(self) -> list[dict]:
        """What was held back, once the answer ended. A call cut by max_tokens keeps what it
        had: its name and arguments so far; cut before its name was complete, it is not
        reported (`finish_reason: length` says the answer was cut)."""
        out: list[dict] = []
        if self._state == "text":
            if self._held.strip() or not self.calls:
                out.append({"content": self._held})
        elif self._state == "args":
            self._send_args(self._held, out)
        self._held = ""
        return [d for d in out if d.get("content") != ""]

    def _text(self, out: list[dict]) -> bool:
        start = self._held.find(OPEN)
        if start >= 0:
            before = self._held[:start]
            if before.strip():
                out.append({"content": before})
            self._held, self._state = self._held[start + len(OPEN):], "head"
            return True
        keep = _holdback(self._held, OPEN)
        ready = self._held[:len(self._held) - keep]
        if ready.strip():   # whitespace waits: it is dropped if a call follows
            out.append({"content": ready})
            self._held = self._held[len(ready):]
        return False

    def _head(self, out: list[dict]) -> bool:
        match = _HEAD.match(self._held)
        if match is None:
            if _may_become_head(self._held):
                return False
            # "<tool_call>" written out as text (not the grammar's token): it stays text
            out.append({"content": OPEN})
            self._state = "text"
            return True
        call = {"id": "call_" + secrets.token_hex(12), "type": "function",
                "function": {"name": match.group(1), "arguments": ""}}
        self.calls.append(call)
        out.append({"tool_calls": [{"index": len(self.calls) - 1, **call,
                                    "function": dict(call["function"])}]})
        self._held, self._state, self._args_sent = self._held[match.end():], "args", 0
        return True

    def _args(self, out: list[dict]) -> bool:
        end = self._held.find(CLOSE)
        if end >= 0:   # the call's text ends with its own "}" before the newline
            self._send_args(self._held[:end].rstrip()[:-1].rstrip(), out)
            self._held, self._state = self._held[end + len(CLOSE):], "text"
            self.closed += 1
            return True
        brace = self._held.rfind("}")   # the last "}" may be the call's own: it waits
        tail = self._held[brace + 1:].lstrip() if brace >= 0 else None
        if tail is not None and CLOSE.startswith(tail):
            self._send_args(self._held[:brace], out)
        else:
            self._send_args(self._held, out)
        return False

    def _send_args(self, args: str, out: list[dict]) -> None:
        """Arguments written so far are `args` (from the start of the call's): send the new
        part."""
        piece = args[self._args_sent:]
        if piece:
            self._args_sent = len(args)
            self.calls[-1]["function"]["arguments"] += piece
            out.append({"tool_calls": [{"index": len(self.calls) - 1,
                                        "function": {"arguments": piece}}]})


def tool_schemas() -> dict:
    """The JSON Schemas of the request's three tool fields, for the OpenAPI document."""
    string = {"type": "string"}
    function = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "pattern": NAME.pattern},
        "description": string,
        "parameters": {"type": "object", "description": "A JSON Schema of the arguments "
                       "(an object). Omitted: no arguments."},
        "strict": {"type": ["boolean", "null"], "description": "True: a schema keyword "
                   "that cannot be enforced is a 400. False (default): it is ignored."}}}
    return {
        "tools": {"type": ["array", "null"], "maxItems": MAX_TOOLS, "description": (
            "Functions the model may call, rendered by the model's chat template. Calls come "
            "back in `message.tool_calls` (`finish_reason` `tool_calls`), their arguments "
            "valid against the function's `parameters`, enforced token by token."),
            "items": {"type": "object", "required": ["type", "function"], "properties": {
                "type": {"const": "function"}, "function": function}}},
        "tool_choice": {"description": (
            "`auto` (default): text or calls; the arguments are held to the schema once the "
            "model opens a call. `none`: no call. `required`: only calls. A named function: "
            "only calls to it."),
            "oneOf": [{"enum": list(CHOICES)}, {"type": "null"},
                      {"type": "object", "required": ["type", "function"], "properties": {
                          "type": {"const": "function"},
                          "function": {"type": "object", "required": ["name"],
                                       "properties": {"name": string}}}}]},
        "parallel_tool_calls": {"type": ["boolean", "null"], "description": (
            "True (default): an answer may hold several calls. False: at most one.")},
    }
