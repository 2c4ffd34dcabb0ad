"""Separating a Thinking model's reasoning from its answer, streaming or not.

Qwen3-VL Thinking models write `reasoning</think>\n\nanswer`. Their chat template usually
ends the generation prompt with `<think>\n`, so the opening tag is not in the output; some
models or templates emit `<think>` themselves. The reasoning goes to `reasoning_content`
(the field llama.cpp's server, vLLM and DeepSeek use) and the answer to `content`.

Text arrives in arbitrary pieces and a tag can be split across them ("</th" + "ink>"), so
text that might still become part of a tag is held back until it is known not to. Only the
first reasoning block counts: after `</think>` everything is content, verbatim.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"

# What the streaming "inline" form puts before the raw text when the template opened the
# block itself, so the client sees a balanced <think>…</think>.
INLINE_PREFIX = OPEN + "\n"

Piece = tuple[str, str]  # ("reasoning" | "content", text)

# Splitter states, in the order the output goes through them.
_START = "start"          # not in reasoning yet: whitespace, then maybe <think>
_OPENED = "opened"        # the template opened <think>: whitespace, then maybe a repeated <think>
_LEAD = "lead"            # inside <think>: whitespace before the reasoning proper
_REASONING = "reasoning"  # reasoning text until </think>
_AFTER = "after"          # whitespace between </think> and the answer
_CONTENT = "content"      # the answer, verbatim


def template_opens_thinking(generation_prompt: str) -> bool:
    """Whether the rendered prompt (with the generation prompt) ends inside an opened
    <think>, i.e. the model's output starts in the middle of its reasoning."""
    return generation_prompt.rstrip().endswith(OPEN)


def _tag_prefix_tail(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Drop empty pieces and join neighbours of the same kind."""
    out: list[Piece] = []
    for kind, text in pieces:
        if not text:
            continue
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


class ReasoningSplitter:
    """Incremental splitter: feed() the generated text piece by piece, then finish().

    Reasoning is stripped of surrounding whitespace (the "\n" after <think>, the "\n"
    before </think>), and the whitespace between </think> and the answer is dropped, so
    `inline()` rebuilds the model's own layout.
    """

    def __init__(self, in_reasoning: bool):
        self._state = _OPENED if in_reasoning else _START
        self._held = ""

    def feed(self, text: str) -> list[Piece]:
        """Add generated text; return the pieces that are now certain, in order."""
        self._held += text
        return self._run(final=False)

    def finish(self) -> list[Piece]:
        """Release whatever was held back, once generation ended. An unterminated block
        stays reasoning: the model ran out of tokens while thinking."""
        return self._run(final=True)

    def _run(self, final: bool) -> list[Piece]:
        out: list[Piece] = []
        step = {_START: self._start, _OPENED: self._opened, _LEAD: self._lead,
                _REASONING: self._reasoning, _AFTER: self._after, _CONTENT: self._content}
        # Each step either moves to another state (go on with what is held) or waits.
        while step[self._state](out, final):
            pass
        return _merge(out)

    def _start(self, out: list[Piece], final: bool) -> bool:
        body = self._held.lstrip()
        if body.startswith(OPEN):
            self._held, self._state = body[len(OPEN):], _LEAD
            return True
        if not final and OPEN.startswith(body):  # empty, or "<th": could still be the tag
            return False
        self._state = _CONTENT  # no reasoning block: the output is the answer, as is
        return True

    def _opened(self, out: list[Piece], final: bool) -> bool:
        self._held = self._held.lstrip()
        if self._held.startswith(OPEN):  # the model repeated the template's tag
            self._held, self._state = self._held[len(OPEN):], _LEAD
            return True
        if not final and OPEN.startswith(self._held):
            return False
        self._state = _REASONING
        return True

    def _lead(self, out: list[Piece], final: bool) -> bool:
        return self._skip_space(then=_REASONING)

    def _reasoning(self, out: list[Piece], final: bool) -> bool:
        end = self._held.find(CLOSE)
        if end >= 0:
            out.append(("reasoning", self._held[:end].rstrip()))
            self._held, self._state = self._held[end + len(CLOSE):], _AFTER
            return True
        if final:
            out.append(("reasoning", self._held.rstrip()))
            self._held = ""
            return False
        # Hold a possible start of </think>, and the whitespace before it, which is
        # dropped if the tag follows.
        keep = _tag_prefix_tail(self._held, CLOSE)
        cut = len(self._held[:len(self._held) - keep].rstrip())
        out.append(("reasoning", self._held[:cut]))
        self._held = self._held[cut:]
        return False

    def _after(self, out: list[Piece], final: bool) -> bool:
        return self._skip_space(then=_CONTENT)

    def _skip_space(self, then: str) -> bool:
        """Drop whitespace; move on to `then` once something else arrives."""
        self._held = self._held.lstrip()
        if not self._held:
            return False
        self._state = then
        return True

    def _content(self, out: list[Piece], final: bool) -> bool:
        out.append(("content", self._held))
        self._held = ""
        return False


def split_reasoning(text: str, in_reasoning: bool) -> tuple[str, str]:
    """The whole output at once: (reasoning, content)."""
    splitter = ReasoningSplitter(in_reasoning)
    pieces = splitter.feed(text) + splitter.finish()
    return ("".join(t for k, t in pieces if k == "reasoning"),
            "".join(t for k, t in pieces if k == "content"))


def inline(reasoning: str, content: str, opened_by_template: bool) -> str:
    """The reasoning put back in the text, for clients that want it inline: the block is
    written whole (opening tag restored) whenever there was one, even if empty, as the
    streaming form (INLINE_PREFIX + raw output) would show it."""
    if reasoning or opened_by_template:
        return f"{OPEN}\n{reasoning}\n{CLOSE}\n\n{content}"
    return content
