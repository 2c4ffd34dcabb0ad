"""The warm-up: a first text and image request through the real path, before users come."""

from __future__ import annotations

import io

from PIL import Image

from .llama import Engine
from ..chat.images import ImageLimits, PreparedImage, prepare_image
from ..chat.protocol import ChatRequest, ImagePart, Message, SamplingParams, TextPart


def warm_up(engine: Engine) -> None:
    """One text and one small image request through the real path, so the first user
    request does not pay for lazy allocations and kernel selection; and the vocabulary as
    the response_format grammars see it (about a second for a large one), for the same
    reason."""
    engine.guides.tokenizer()
    image = _warmup_image()
    for parts in ((TextPart("Hello"),), (ImagePart("warmup"), TextPart("Describe."))):
        request = ChatRequest(messages=(Message("user", parts),),
                              params=SamplingParams(max_tokens=2, temperature=0))
        images = [image] if any(isinstance(p, ImagePart) for p in parts) else []
        prompt = engine.prepare(request, images)
        try:
            for _ in engine.generate(prompt, request.params, lambda: False):
                pass
        finally:
            prompt.close()


def _warmup_image() -> PreparedImage:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((64, 64)).convert("RGB").save(buf, "PNG")
    return prepare_image(buf.getvalue(), ImageLimits())
