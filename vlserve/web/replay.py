"""A kept answer (the response cache's hit) sent again, in the shape this request asked for:
streamed or whole, reasoning apart or inline."""

from __future__ import annotations

import time

from flask import Response, g, jsonify

from .answer import record_content
from .lifecycle import sse_data
from ..chat.answer import finish_reason, shape_answer
from ..chat.protocol import ChatRequest, chunk, completion, new_completion_id
from ..gateway.upstream import LOCAL


def replay(hit: dict, req: ChatRequest, images) -> Response:
    """A kept answer, in the shape this request asked for (stream or not)."""
    cid = new_completion_id()
    shaped = shape_answer(hit["raw"], hit["thinking"], req.reasoning_inline,
                          bool(req.tools and req.tools.calls))
    reason = finish_reason(hit["finish_reason"], shaped.calls_complete)
    record_content(req, images, shaped)
    extra = {"timings": {}, **({"context": hit["context"]} if hit["context"] else {})}
    g.record.update(model=hit["model"], finish_reason=reason,
                    prompt_tokens=hit["usage"]["prompt_tokens"], completion_tokens=0)
    if not req.stream:
        response = jsonify(completion(cid, hit["model"], shaped.content, reason, hit["usage"],
                                      extra, shaped.reasoning, shaped.tool_calls))
    else:
        created, name = int(time.time()), hit["model"]
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"reasoning_content": shaped.reasoning}] if shaped.reasoning else []
        deltas += [{"content": shaped.content}] if shaped.content else []
        deltas += [{"tool_calls": [{"index": i, **call}]}
                   for i, call in enumerate(shaped.tool_calls)]
        events = [chunk(cid, name, created, d) for d in deltas]
        events.append({**chunk(cid, name, created, {}, reason), **extra})
        if req.include_usage:
            events.append(chunk(cid, name, created, {}, choices=False, usage=hit["usage"]))
        body = "".join(sse_data(e) for e in events) + "data: [DONE]\n\n"
        response = Response(body, mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache"})
    response.headers.update({"X-Cache": "hit", "X-Vlserve-Backend": LOCAL})
    return response
