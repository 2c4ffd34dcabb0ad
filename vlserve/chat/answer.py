"""Generated text turned into the answer a client asked for: the reasoning of a Thinking
model apart from its answer (or inline, for reasoning_format "none"), and the answer's tool
calls apart from its text (`tools.ToolCallReader`), as stream deltas (`Deltas`) or whole
(`shape_answer`: the same deltas, merged, so both forms always agree)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .reasoning import INLINE_PREFIX, ReasoningSplitter
from .tools import ToolCallReader


def finish_reason(engine_reason: str, calls_complete: bool) -> str:
    """`tool_calls` when the answer ended (not cut) with all its calls complete."""
    return "tool_calls" if engine_reason == "stop" and calls_complete else engine_reason


@dataclass
class Answer:
    """A whole answer: `content` is None when it is only tool calls."""
    reasoning: str = ""
    content: str | None = ""
    tool_calls: list[dict] = field(default_factory=list)
    calls_complete: bool = False


def shape_answer(raw: str, thinking: bool, inline: bool, calls: bool = False) -> Answer:
    """The whole answer, as the request asked to see it (`calls`: read tool calls)."""
    deltas = Deltas(lambda: thinking, inline, calls)
    return deltas.merged(deltas.feed(raw) + deltas.finish())


class Deltas:
    """Raw generated text -> the stream's delta objects: reasoning and answer apart, or
    the raw text with the template's opening <think> restored (reasoning_format "none");
    with `calls`, the answer's tool calls as OpenAI's tool-call deltas."""

    def __init__(self, thinking: Callable[[], bool], inline: bool, calls: bool = False):
        self._thinking, self._inline, self._splitter = thinking, inline, None
        self.reader = ToolCallReader() if calls else None

    def feed(self, text: str) -> list[dict]:
        if self._splitter is None:   # the job's prompt is known once its first token came
            thinking = self._thinking()
            if self._inline:
                self._splitter = False
                return self._content((INLINE_PREFIX if thinking else "") + text)
            self._splitter = ReasoningSplitter(thinking)
        if self._splitter is False:
            return self._content(text)
        return self._shape(self._splitter.feed(text))

    def finish(self) -> list[dict]:
        out = self._shape(self._splitter.finish()) if self._splitter else []
        return out + (self.reader.finish() if self.reader else [])

    def _shape(self, pieces) -> list[dict]:
        out: list[dict] = []
        for kind, text in pieces:
            out += [{"reasoning_content": text}] if kind == "reasoning" else self._content(text)
        return out

    def _content(self, text: str) -> list[dict]:
        return self.reader.feed(text) if self.reader else [{"content": text}]

    @property
    def calls_complete(self) -> bool:
        """The answer made tool calls, and all of them are complete."""
        return bool(self.reader and self.reader.calls
                    and self.reader.closed == len(self.reader.calls))

    def merged(self, deltas: list[dict]) -> Answer:
        """Deltas (all of an answer's) as one Answer."""
        answer = Answer(reasoning="".join(d.get("reasoning_content", "") for d in deltas),
                        content="".join(d.get("content", "") for d in deltas))
        if self.reader and self.reader.calls:
            answer.tool_calls = self.reader.calls
            answer.calls_complete = self.calls_complete
            answer.content = answer.content.strip() or None
        return answer
