"""Renders a conversation to prompt text with the chat template stored in the GGUF.

Images become a media marker in the text (as llama.cpp's server does), so any model's
template works unchanged and mtmd later splits the prompt at the markers.
"""

from __future__ import annotations

from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidRequestError
from .protocol import ImagePart, Message

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


def flatten_content(message: Message, marker: str) -> str:
    return "".join(marker if isinstance(p, ImagePart) else p.text for p in message.parts)
