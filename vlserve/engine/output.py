"""What generating an answer emits, for whoever waits on it: `Delta` (new text) and, once,
`Finished` (why it ended, token counts, timings)."""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str          # stop | length | cancelled (the worker tells timeouts apart)
    prompt_tokens: int
    completion_tokens: int
    timings: dict = field(default_factory=dict)
    cached_tokens: int = 0      # prompt tokens served from the KV cache
