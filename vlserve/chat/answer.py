"""Generated text turned into the answer a client asked for: the reasoning of a Thinking
model apart from its answer (or inline, for reasoning_format "none"), whole (`shape_answer`)
or as stream deltas (`Deltas`)."""

from __future__ import annotations

from typing import Callable

from .reasoning import INLINE_PREFIX, ReasoningSplitter, split_reasoning


def shape_answer(raw: str, thinking: bool, inline: bool) -> tuple[str, str]:
    """(reasoning, content) of a whole answer, as the request asked to see them."""
    if inline:
        return "", (INLINE_PREFIX if thinking else "") + raw
    return split_reasoning(raw, thinking)


class Deltas:
    """Raw generated text -> the stream's delta objects: reasoning and answer apart, or
    the raw text with the template's opening <think> restored (reasoning_format "none")."""

    def __init__(self, thinking: Callable[[], bool], inline: bool):
        self._thinking, self._inline, self._splitter = thinking, inline, None

    def feed(self, text: str) -> list[dict]:
        if self._splitter is None:   # the job's prompt is known once its first token came
            thinking = self._thinking()
            if self._inline:
                self._splitter = False
                return [{"content": (INLINE_PREFIX if thinking else "") + text}]
            self._splitter = ReasoningSplitter(thinking)
        if self._splitter is False:
            return [{"content": text}]
        return self._shape(self._splitter.feed(text))

    def finish(self) -> list[dict]:
        return self._shape(self._splitter.finish()) if self._splitter else []

    @staticmethod
    def _shape(pieces) -> list[dict]:
        return [{"reasoning_content" if kind == "reasoning" else "content": text}
                for kind, text in pieces]
