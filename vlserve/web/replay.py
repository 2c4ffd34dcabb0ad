"""A kept answer (the response cache's hit) sent again, in the shape this request asked for:
streamed or whole, reasoning apart or inline."""

from __future__ import annotations

import time

from flask import Response, g, jsonify

from .answer import record_content
from .lifecycle import sse_data
from ..chat.answer import shape_answer
from ..chat.protocol import ChatRequest, chunk, completion, new_completion_id
from ..gateway.upstream import LOCAL


def replay(hit: dict, req: ChatRequest, images) -> Response:
    """A kept answer, in the shape this request asked for (stream or not)."""
    cid = new_completion_id()
    reasoning, content = shape_answer(hit["raw"], hit["thinking"], req.reasoning_inline)
    record_content(req, images, content, reasoning)
    extra = {"timings": {}, **({"context": hit["context"]} if hit["context"] else {})}
    g.record.update(model=hit["model"], finish_reason=hit["finish_reason"],
                    prompt_tokens=hit["usage"]["prompt_tokens"], completion_tokens=0)
    if not req.stream:
        response = jsonify(completion(cid, hit["model"], content, hit["finish_reason"],
                                      hit["usage"], extra, reasoning))
    else:
        created, name = int(time.time()), hit["model"]
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"reasoning_content": reasoning}] if reasoning else []
        deltas += [{"content": content}] if content else []
        events = [chunk(cid, name, created, d) for d in deltas]
        events.append({**chunk(cid, name, created, {}, hit["finish_reason"]), **extra})
        if req.include_usage:
            events.append(chunk(cid, name, created, {}, choices=False, usage=hit["usage"]))
        body = "".join(sse_data(e) for e in events) + "data: [DONE]\n\n"
        response = Response(body, mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache"})
    response.headers.update({"X-Cache": "hit", "X-Vlserve-Backend": LOCAL})
    return response
