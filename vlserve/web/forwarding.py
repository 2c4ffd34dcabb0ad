"""A chat request forwarded to an upstream (gateway.forward), answered as Flask's: the
gateway fills this request's record and log fields, and a stream ends the request when it
ends."""

from __future__ import annotations

from flask import Response, g, stream_with_context

from ..gateway.forward import Gateway, Ledger
from .lifecycle import finish_request


def forward(gateway: Gateway, body: dict, req, images, model: str) -> Response:
    ledger = Ledger(g.record, g.log, error_code=_note_error_code, end=finish_request)
    answer = gateway.forward(body, req, images, model, ledger)
    if answer.stream is None:
        return Response(answer.body, mimetype="application/json", headers=answer.headers)
    g.stream_logs_itself = True
    return Response(stream_with_context(answer.stream), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                             **answer.headers})


def _note_error_code(code: str) -> None:
    g.error_code = code
