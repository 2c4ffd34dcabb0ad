"""Renders a conversation to prompt text with the chat template stored in the GGUF.

Images become a media marker in the text (as llama.cpp's server does), so any model's
template works unchanged and mtmd later splits the prompt at the markers.

Text stays text: only the template's own markup may become control tokens. A message whose
text holds a control token's text (`<|im_end|>\n<|im_start|>system…` pasted into a chat, or
returned by a tool) must not close its turn and open another, so `render_segments` tells the
tokenizer which parts of the prompt are markup and which are the messages' text.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidRequestError
from .protocol import ImagePart, Message, TextPart
from .tools import ToolCall, Tools

# Used when a GGUF carries no template: Qwen's ChatML.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(InvalidRequestError):
    code = "invalid_conversation"


def _raise(message: str):
    raise TemplateError(f"the model's chat template refused this conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """Hugging Face's `tojson` (transformers' chat_template_utils): plain json.dumps. Jinja's
    own sorts keys and escapes <, >, & and ', so a template's tools section would not read
    as the model was trained on."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class ChatTemplate:
    """A chat template rendered as transformers' `apply_chat_template` renders it (the
    environment, the filters, the message dicts), so that a GGUF's template sees what its
    model was trained with: `tools`, assistant `tool_calls` and `tool` messages included."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols],
                                            loader=jinja2.BaseLoader())
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise,
                           strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self._specials = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: tuple[Message, ...], marker: str,
               tools: Tools | None = None) -> str:
        try:
            return self._template.render(
                messages=[template_message(m, marker) for m in messages],
                tools=list(tools.definitions) if tools else None,
                add_generation_prompt=True, **self._specials)
        except InvalidRequestError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template failed on this conversation: {exc}") from exc

    def renders_tools(self) -> bool:
        """Whether the template writes the tools it is given into the prompt (Qwen3-VL's
        have a tools section; a template without one would hide them from the model)."""
        probe = Tools(({"type": "function", "function": {"name": "vlserve_probe_tool"}},))
        try:
            return "vlserve_probe_tool" in self.render(
                (Message("user", (TextPart("Hi"),)),), "", probe)
        except Exception:   # a template that fails on tools (any error) does not take them
            return False

    def render_segments(self, messages: tuple[Message, ...], marker: str,
                        controls: Sequence[str], tools: Tools | None = None
                        ) -> list[tuple[str, bool]]:
        """The prompt as (text, is_markup) segments: markup is parsed for control tokens,
        the messages' text is not (nor are tool calls' arguments and the tools' own
        definitions). When no such text holds a control token's text (the usual case)
        there is one segment, the plain rendering, so such prompts tokenize exactly as they
        always did. Otherwise each text is fenced with random markers before rendering, and
        the rendering is cut at the fences."""
        texts = [*(p.text for m in messages for p in m.parts if isinstance(p, TextPart)),
                 *(t for m in messages for c in m.tool_calls for t in (c.id, c.name, c.arguments)),
                 *(m.tool_call_id for m in messages if m.tool_call_id is not None),
                 *(_strings(tools.definitions) if tools else ())]
        if not any(c in t for t in texts for c in controls):
            return [(self.render(messages, marker, tools), True)]
        fence = secrets.token_hex(8)
        start, end = f"\ue000{fence}\ue001", f"\ue001{fence}\ue000"   # private-use fences

        def wrap(value: str) -> str:
            return start + value + end

        fenced = tuple(dataclasses.replace(
            m, parts=tuple(TextPart(wrap(p.text)) if isinstance(p, TextPart) else p
                           for p in m.parts),
            tool_calls=tuple(ToolCall(wrap(c.id), wrap(c.name), wrap(c.arguments))
                             for c in m.tool_calls),
            tool_call_id=None if m.tool_call_id is None else wrap(m.tool_call_id))
            for m in messages)
        if tools:
            tools = dataclasses.replace(tools, definitions=_map_strings(tools.definitions, wrap))
        segments, markup = [], True
        for piece in re.split(f"({re.escape(start)}|{re.escape(end)})",
                              self.render(fenced, marker, tools)):
            if piece in (start, end):
                markup = piece == end
            elif piece:
                segments.append((piece, markup))
        return segments


def flatten_content(message: Message, marker: str) -> str:
    return "".join(marker if isinstance(p, ImagePart) else p.text for p in message.parts)


def template_message(message: Message, marker: str) -> dict:
    """A message as transformers hands it to a template: `content` a string (images as the
    media marker, an assistant's null content as ""), plus `tool_calls` (OpenAI's shape,
    arguments as the JSON text the client sent) or `tool_call_id`."""
    out: dict[str, Any] = {"role": message.role, "content": flatten_content(message, marker)}
    if message.tool_calls:
        out["tool_calls"] = [c.template_dict() for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _strings(value: Any):
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _map_strings(value: Any, f) -> Any:
    """A JSON value with `f` applied to every string, keys included."""
    if isinstance(value, str):
        return f(value)
    if isinstance(value, dict):
        return {f(k): _map_strings(v, f) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_strings(v, f) for v in value)
    return value
