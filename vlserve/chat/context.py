"""Fitting a conversation into the model's context: pure functions, token counter passed in.

The server is stateless: every turn the client resends the whole conversation and the fit
is recomputed from scratch. Dropping "just enough" would change the prompt's prefix on
every turn and throw away the KV cache each time, so we drop in blocks (a fraction of the
budget): the decision only moves when the conversation has grown by about a block.

Order of sacrifice: images (oldest first, each replaced in place by a short placeholder),
then whole turns of the history (oldest first). The leading system messages and the last
user message with whatever follows it are never dropped; of those, only the images before
the last message may be replaced: an agent's loop (one question, then calls and tool results
with a screenshot each) keeps its newest screenshots, not its oldest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import ContextLengthError
from .protocol import ImagePart, Message, TextPart

PLACEHOLDER = "[image omitted to fit the context]"

Messages = tuple[Message, ...]
Counter = Callable[[Messages], int]

# A closed <think>…</think> block, or a leading '…</think>' whose <think> the template
# itself opened (Qwen3 Thinking models), so the text never contained it.
_THINK = re.compile(r"\A(?:(?!<think>).)*?</think>|<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class Fit:
    messages: Messages       # what to send to the model
    prompt_tokens: int       # count_tokens(messages) of the result
    dropped_images: int      # images replaced by PLACEHOLDER
    dropped_messages: int    # whole messages removed

    @property
    def changed(self) -> bool:
        return bool(self.dropped_images or self.dropped_messages)


def _last_user(messages: Messages) -> int:
    return max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)


def strip_thinking(messages: Messages) -> Messages:
    """Drop reasoning from assistant messages before the last user message (the model
    never needs its old thoughts, and they eat context); the same tuple if nothing changed."""
    out, changed = list(messages), False
    for i in range(_last_user(messages)):
        m = messages[i]
        if m.role != "assistant":
            continue
        parts = tuple(TextPart(_THINK.sub("", p.text).lstrip())
                      if isinstance(p, TextPart) and "</think>" in p.text else p
                      for p in m.parts)
        if parts != m.parts:
            out[i], changed = replace(m, parts=parts), True
    return tuple(out) if changed else messages


@dataclass(frozen=True)
class _Layout:
    head: Messages                      # leading system messages: protected
    body: Messages                      # the history (what may be dropped), then the tail
    n_history: int                      # (the tail: the last user message and after)
    images: tuple[tuple[int, int], ...]  # (body message, part) of each replaceable image,
                                         # oldest first: all but the last message's
    turns: tuple[int, ...]              # history index where each turn starts

    @classmethod
    def of(cls, messages: Messages) -> _Layout:
        n_sys = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
        last = max(_last_user(messages), n_sys)  # no user message: nothing is droppable
        body = messages[n_sys:]
        images = tuple((i, j) for i, m in enumerate(body[:-1])
                       for j, p in enumerate(m.parts) if isinstance(p, ImagePart))
        # A turn starts at each user message; an orphan assistant at the start is its own.
        turns = tuple(i for i, m in enumerate(body[:last - n_sys]) if i == 0 or m.role == "user")
        return cls(messages[:n_sys], body, last - n_sys, images, turns)

    def build(self, n_images: int, n_turns: int) -> Messages:
        """The conversation with the oldest n_images replaced and the oldest n_turns removed."""
        body = list(self.body)
        for i, j in self.images[:n_images]:
            parts = list(body[i].parts)
            parts[j] = TextPart(PLACEHOLDER)
            body[i] = replace(body[i], parts=tuple(parts))
        start = self.turns[n_turns] if n_turns < len(self.turns) else self.n_history
        return self.head + tuple(body[start:])


def _smallest(n: int, tokens: Callable[[int], int], target: float) -> int:
    """Smallest k in 1..n with tokens(k) <= target (tokens falls as k grows), else n."""
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if tokens(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _rounded_target(total: int, budget: int, block: float) -> float:
    """The token count to get down to: the excess rounded UP to whole blocks, so that the
    target (and with it the drop decision) only moves once per block of growth."""
    size = max(block * budget, 1.0)
    return total - math.ceil((total - budget) / size) * size


def fit_messages(messages: Messages, *, budget: int, count_tokens: Counter,
                 block: float = 0.25) -> Fit:
    total = count_tokens(messages)
    if total <= budget:
        return Fit(messages, total, 0, 0)

    layout = _Layout.of(messages)
    counts: dict[tuple[int, int], int] = {}

    def tokens(n_images: int, n_turns: int) -> int:
        if (n_images, n_turns) not in counts:
            counts[n_images, n_turns] = count_tokens(layout.build(n_images, n_turns))
        return counts[n_images, n_turns]

    n_img, n_turns = len(layout.images), len(layout.turns)
    counts[0, 0] = total
    # Checked before anything else so that a hopeless request fails before any image work.
    protected = tokens(n_img, n_turns)
    if protected > budget:
        raise ContextLengthError(
            f"the last message (with the system prompt) needs {protected} tokens but only "
            f"{budget} fit", param="messages")

    no_images = tokens(n_img, 0)
    if no_images <= budget:
        # Images alone suffice: replace the fewest oldest ones that reach the block target.
        k = _smallest(n_img, lambda k: tokens(k, 0), _rounded_target(total, budget, block))
        j = 0
    else:
        # Turns must go too. Blocks are counted from the image-free conversation, which
        # grows steadily, rather than from `total`: each new turn's image adds savings,
        # and counting those would let dropped turns come back and move the prefix.
        k = n_img
        j = _smallest(n_turns, lambda j: tokens(n_img, j),
                      _rounded_target(no_images, budget, block))
    fitted = layout.build(k, j)
    return Fit(fitted, tokens(k, j), k, len(messages) - len(fitted))
