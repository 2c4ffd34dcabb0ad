"""A conversation turned into a prompt for a model, in one direction: earlier reasoning
stripped, the conversation fitted to the model's context when it leaves too little room for
the answer (oldest images, then oldest turns go first), then rendered and tokenized by the
model (its template and tokenizer: `PromptModel`, which the engine implements)."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from .context import Fit, fit_messages, strip_thinking
from .images import PreparedImage
from .protocol import ChatRequest, ImagePart, Message
from .tools import Tools
from ..errors import ContextLengthError

# Room kept for the answer when fitting a request that sets no max_tokens.
DEFAULT_RESERVE = 1024


class PromptModel(Protocol):
    """What preparing a prompt needs of a model (engine.llama.LlamaEngine is one)."""
    n_ctx: int

    def prepare(self, request: ChatRequest, images: list[PreparedImage]) -> Any:
        """The request rendered by the model's template and tokenized (a `Prompt`)."""

    def count_tokens(self, messages: tuple[Message, ...],
                     images: dict[ImagePart, PreparedImage], tools: Tools | None = None) -> int:
        """How many tokens these messages (and tools) take once rendered."""


class Preparation:
    """Tokenizes one request for an engine: on the HTTP thread when its model is loaded,
    on the engine thread (again) when another model is loaded first. Remembers what the
    last preparation fitted away and how many image tokens it has."""

    def __init__(self, req: ChatRequest, images: dict[ImagePart, PreparedImage]):
        self.req, self.images = req, images
        self.fit: Fit | None = None
        self.image_tokens = 0

    def __call__(self, engine: PromptModel):
        prompt, self.fit = prepare(self.req, engine, self.images)
        self.image_tokens = prompt.image_tokens
        return prompt


def prepare(req: ChatRequest, engine: PromptModel, images) -> tuple[Any, Fit | None]:
    """(the prompt, what was fitted away or None). Old reasoning out, then tokenize. Only a
    conversation that leaves too little room for the answer is fitted (and tokenized
    again): the common case tokenizes once."""
    req = dataclasses.replace(req, messages=strip_thinking(req.messages))
    reserve = req.params.max_tokens or min(DEFAULT_RESERVE, engine.n_ctx // 4)
    try:
        prompt = engine.prepare(req, [images[p] for p in req.image_parts])
        if prompt.n_tokens + reserve <= engine.n_ctx:
            return prompt, None
        prompt.close()
    except ContextLengthError:
        pass  # too long even for its max_tokens: fitting decides what goes, or refuses
    fit = fit_to_context(req, engine, images, reserve)
    req = dataclasses.replace(req, messages=fit.messages)
    return engine.prepare(req, [images[p] for p in req.image_parts]), fit


def fit_to_context(req: ChatRequest, engine: PromptModel, images, reserve: int) -> Fit:
    """The conversation fitted into the context, leaving `reserve` tokens for the answer.
    A last message that cannot fit is refused here, before any image is encoded; so is a
    max_tokens that leaves the conversation no room (naming max_tokens, with what fits)."""
    def fit(budget: int) -> Fit:
        return fit_messages(req.messages, budget=budget,
                            count_tokens=lambda msgs: engine.count_tokens(msgs, images,
                                                                         req.tools))
    try:
        return fit(engine.n_ctx - reserve)
    except ContextLengthError as exc:
        refused = exc
    if req.params.max_tokens is not None:   # would a smaller max_tokens let it fit?
        try:
            room = engine.n_ctx - fit(engine.n_ctx - 1).prompt_tokens
        except ContextLengthError as exc:   # no: the conversation alone is too long
            if reserve >= engine.n_ctx:    # (said with a budget that is not negative)
                refused, reserve = exc, 1
        else:
            raise ContextLengthError(
                f"max_tokens is {req.params.max_tokens}, but the context is {engine.n_ctx} "
                f"tokens and this conversation needs {engine.n_ctx - room} of them: ask for "
                f"at most {room}", param="max_tokens")
    raise ContextLengthError(
        f"{refused.message}: the context is {engine.n_ctx} tokens and {reserve} of them are "
        "kept for the answer (max_tokens)", param=refused.param)
