"""What every request shares, whichever route serves it: its JSON body read (`json_body`), an
error as its OpenAI-style answer (`error_response`), a stream's events (`sse_data`), and its
end (`finish_request`: the access-log line, then every observer with the request's record,
then what frees what it held). Routes, the app's hooks and the gateway's glue import this; it imports no route."""

from __future__ import annotations

import json
import logging
import time

from flask import Response, current_app, g, jsonify, request
from werkzeug.exceptions import BadRequest

from ..errors import APIError, InvalidRequestError

log = logging.getLogger("vlserve.access")


def json_body(*, must_be_object: bool = False):
    """The request's JSON body, or a 400 that says why: not JSON, nested deeper than the
    parser's recursion allows (a 100,000-deep array is not a traceback), or not an object."""
    try:   # JSON only (origin.py answers other types 415); no body at all is no JSON
        body = request.get_json() if request.get_data(cache=True) else None
    except BadRequest:
        raise InvalidRequestError("the request body is not valid JSON") from None
    except RecursionError:   # json's decoder recurses once per nesting level
        raise InvalidRequestError("the request body is nested too deeply") from None
    if must_be_object and not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return body


def error_response(exc: APIError) -> Response:
    response = jsonify(exc.to_dict())
    response.status_code = exc.status
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    response.headers.update(getattr(exc, "headers", {}))
    return response


def finish_request(status: int) -> None:
    """The end of a request: its log line, then every observer with its record, then the
    callbacks that free what the request held. Observers never fail a request."""
    fields = " ".join(f"{k}={v}" for k, v in getattr(g, "log", {}).items())
    ms = (time.monotonic() - getattr(g, "t0", time.monotonic())) * 1000
    log.info("%s %s %s %.0fms %s", request.method, request.path, status, ms, fields)
    record = {"time": round(time.time(), 3), "method": request.method,
              "route": request.url_rule.rule if request.url_rule else None,
              "path": request.path, "status": status, "duration_ms": round(ms, 1),
              "client": request.remote_addr, "key": getattr(g, "key_name", None),
              **getattr(g, "record", {})}
    state = current_app.extensions.get("vlserve", {})
    for call in [*state.get("observers", ()), *getattr(g, "on_finish", ())]:
        try:
            call(record)
        except Exception:
            log.exception("a request observer failed")


def sse_data(obj: dict) -> str:
    """One server-sent event carrying `obj` as compact JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
