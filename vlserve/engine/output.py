"""What generating an answer emits, for whoever waits on it: `Progress` (how far its prompt
is, before the first token; only when asked for), `Delta` (new text) and, once, `Finished`
(why it ended, token counts, timings)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """How far a request's prompt is: llama.cpp's `prompt_progress` (`total` prompt tokens,
    `cache` reused from the KV cache, `processed` in the KV so far, cache included, `time_ms`
    since the prompt began) and its images past the cache: how many, how many are in, the
    tokens of those not in yet, and whether one is being encoded now (sent before an encode
    starts: it cannot report midway)."""
    total: int
    cache: int
    processed: int
    time_ms: float
    images: int = 0
    images_done: int = 0
    image_tokens_left: int = 0
    encoding: bool = False

    def to_dict(self) -> dict:
        return {"total": self.total, "cache": self.cache, "processed": self.processed,
                "time_ms": round(self.time_ms, 2),
                "images": {"total": self.images, "done": self.images_done,
                           "tokens_left": self.image_tokens_left, "encoding": self.encoding}}


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
