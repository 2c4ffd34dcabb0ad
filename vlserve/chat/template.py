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
import re
import secrets
from collections.abc import Sequence
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidRequestError
from .protocol import ImagePart, Message, TextPart

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


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            loader=jinja2.BaseLoader())
        env.globals.update(raise_exception=_raise,
                           strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self._specials = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: tuple[Message, ...], marker: str) -> str:
        flat = [{"role": m.role, "content": flatten_content(m, marker)} for m in messages]
        try:
            return self._template.render(messages=flat, add_generation_prompt=True,
                                         **self._specials)
        except InvalidRequestError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template failed on this conversation: {exc}") from exc

    def render_segments(self, messages: tuple[Message, ...], marker: str,
                        controls: Sequence[str]) -> list[tuple[str, bool]]:
        """The prompt as (text, is_markup) segments: markup is parsed for control tokens,
        the messages' text is not. When no message text holds a control token's text (the
        usual case) there is one segment, the plain rendering, so such prompts tokenize
        exactly as they always did. Otherwise each text part is fenced with random
        markers before rendering, and the rendering is cut at the fences."""
        texts = (p.text for m in messages for p in m.parts if isinstance(p, TextPart))
        if not any(c in t for t in texts for c in controls):
            return [(self.render(messages, marker), True)]
        fence = secrets.token_hex(8)
        start, end = f"\ue000{fence}\ue001", f"\ue001{fence}\ue000"   # private-use fences
        fenced = tuple(dataclasses.replace(m, parts=tuple(
            TextPart(start + p.text + end) if isinstance(p, TextPart) else p for p in m.parts))
            for m in messages)
        segments, markup = [], True
        for piece in re.split(f"({re.escape(start)}|{re.escape(end)})",
                              self.render(fenced, marker)):
            if piece in (start, end):
                markup = piece == end
            elif piece:
                segments.append((piece, markup))
        return segments


def flatten_content(message: Message, marker: str) -> str:
    return "".join(marker if isinstance(p, ImagePart) else p.text for p in message.parts)
