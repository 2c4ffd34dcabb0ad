"""The API's OpenAPI 3.1 document, served at GET /openapi.json (open, like /health).

The chat request's schemas are rendered from the parser's own field declarations
(`chat.protocol.request_schemas`: each field's type, range, choices and default, as it
checks them); the chat answer's are written beside the functions that build it
(`chat.protocol.answer_schemas`); the key scopes are `ops.auth`'s. The other responses, the
paths and the security are written here. tests/test_openapi.py checks the document against
the routes and against real responses, and runs schemathesis with it against a live server.

The chat page's routes (/, /chat.html, /static/...) are not API and are left out.
"""

from __future__ import annotations

import copy
from functools import lru_cache

from flask import Blueprint, jsonify

from .. import __version__
from ..ops.auth import SCOPES
from ..chat.fields import object_schema
from ..chat.protocol import answer_schemas, request_schemas
from ..engine.prefills import PREFILL_ENDS

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
BEARER, API_KEY = "bearer", "apiKey"


@bp.get("/openapi.json")
def document():
    return jsonify(build_document())


def build_document() -> dict:
    """A fresh copy of the document (callers may change it)."""
    return copy.deepcopy(_document())


# ---- helpers -------------------------------------------------------------------------------

def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(name: str) -> dict:
    return {"$ref": f"#/components/responses/{name}"}


def _body(schema: dict, description: str, headers: dict | None = None, *,
          media_type: str = "application/json") -> dict:
    """A response with a body of `schema` (JSON unless `media_type` says otherwise)."""
    out = {"description": description, "content": {media_type: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _secured(scope: str) -> list[dict]:
    return [{BEARER: [scope]}, {API_KEY: [scope]}]


def _errors(*statuses: int) -> dict:
    return {str(s): _response(ERROR_RESPONSES[s][0]) for s in statuses}


def _operation(operation_id: str, tag: str, summary: str, scope: str | None, responses: dict,
               *errors: int, body: str | None = None, **more) -> dict:
    """An operation: `scope` None for an open one, `body` its JSON body's schema, `errors`
    the error statuses it answers besides `responses`."""
    out = {"operationId": operation_id, "tags": [tag], "summary": summary,
           "security": _secured(scope) if scope else [], **more}
    if body:
        out["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": _ref(body)}}}
    out["responses"] = {**responses, **_errors(*errors)}
    return out


INT = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
STRING = {"type": "string"}
BOOL = {"type": "boolean"}

# status -> (component name, description); every one has the OpenAI error body
ERROR_RESPONSES = {
    400: ("BadRequest", (
          "The request is invalid: a body that is not JSON, a field out of range or of the "
          "wrong type, an unsupported feature, an image that cannot be used, a conversation "
          "whose last message does not fit the context (code `context_length_exceeded`). "
          "`param` names the field.")),
    401: ("Unauthorized", "API keys are configured and none (or an unknown one) was sent."),
    403: ("Forbidden", (
          "The key is valid but lacks the scope this endpoint needs (code "
          "`insufficient_scope`); or a browser request from another web origin than this "
          "server's own or a `--cors-origin` (code `origin_not_allowed`); or a `Host` that "
          "is not a name of this server (code `host_not_allowed`: loopback names only on a "
          "loopback bind, plus `--allowed-host`).")),
    404: ("NotFound",
          "No such route, or the model named is not on this server (code `model_not_found`)."),
    413: ("PayloadTooLarge", (
          "The body exceeds the server's body limit (`--max-body-mb`), or an image exceeds "
          "the image size limit (code `payload_too_large`).")),
    415: ("UnsupportedMediaType", (
          "The body is not JSON: the API reads `application/json` (or `application/*+json`) "
          "only, never a form or `text/plain` (code `unsupported_media_type`). A POST "
          "without a body needs no Content-Type.")),
    429: ("TooManyRequests", (
          "Over the per-key (or per-client) rate limit (`--rate-limit`, code "
          "`rate_limit_exceeded`) or concurrent-request limit (`--max-streams`, code "
          "`too_many_concurrent_requests`); retry after Retry-After.")),
    500: ("InternalError", (
          "An internal error, or another model could not be loaded (code "
          "`model_load_failed`; the previous model serves again).")),
    502: ("BadGateway", (
          "Gateway mode: no upstream serving the model could be reached (code "
          "`upstream_unreachable`), one broke off (`upstream_disconnected`), ended an answer "
          "unfinished (`upstream_incomplete`, in-stream) or refused vlserve's key "
          "(`upstream_auth_failed`). The message names the upstreams.")),
    503: ("ServiceUnavailable", (
          "The queue is full (code `server_busy`), the model is not ready (code "
          "`model_not_ready`), or every upstream serving it is down (code "
          "`upstream_unavailable`); retry after Retry-After.")),
    504: ("GatewayTimeout", (
          "The request exceeded the server's request timeout (`--timeout`), queued or "
          "generating (code `request_timeout`), or an upstream did not answer within it "
          "(code `upstream_timeout`).")),
}

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer realm=\"vlserve\"`.",
                                         "schema": STRING}}
ERROR_HEADERS = {401: WWW_AUTHENTICATE, 429: RETRY_AFTER, 503: RETRY_AFTER}


# ---- schemas ------------------------------------------------------------------------------

def _schemas() -> dict:
    ms = {"type": "number", "minimum": 0}
    timing_counts = ("prompt_tokens_evaluated", "cached_tokens", "images_encoded",
                     "images_from_cache")
    timing_ms = ("prompt_ms", "image_encode_ms", "predicted_ms", "decode_tokens_per_s")
    timings = {
        "type": "object",
        "description": "Where the time went. `ttft_ms` (time to first token) is on the final "
                       "stream chunk only. Empty for an answer replayed from the response "
                       "cache (`X-Cache: hit`): nothing was computed.",
        "anyOf": [{"required": [*timing_ms, *timing_counts]}, {"maxProperties": 0}],
        "properties": {**{k: ms for k in timing_ms}, **{k: COUNT for k in timing_counts},
                       "ttft_ms": ms}}
    context = object_schema(
        {"dropped_images": COUNT, "dropped_messages": COUNT},
        description="Present when the conversation was fitted into the context: how many "
                    "images (replaced by text) and messages (oldest first) were dropped. "
                    "Also in the `X-Context-Dropped` header.")
    error = object_schema({"error": object_schema({
        "message": STRING,
        "type": {"type": "string",
                 "description": "invalid_request_error, authentication_error, "
                                "permission_error, not_found_error, rate_limit_error, "
                                "service_unavailable, timeout_error, server_error, "
                                "upstream_error (or an upstream's own type, passed on)"},
        "param": {"type": ["string", "null"],
                  "description": "The request field at fault, e.g. "
                                 "`messages[0].content[1].image_url`."},
        "code": {"type": ["string", "null"],
                 "description": "e.g. invalid_image, context_length_exceeded, "
                                "model_not_found, invalid_api_key, insufficient_scope, "
                                "payload_too_large, rate_limit_exceeded, "
                                "too_many_concurrent_requests, server_busy, model_not_ready, "
                                "request_timeout, model_load_failed, prefill_not_found, "
                                "upstream_unreachable, "
                                "upstream_unavailable, upstream_timeout"}})},
        description="Every error, OpenAI-shaped.")
    model = object_schema({
        "id": STRING, "object": {"const": "model"}, "created": INT, "owned_by": STRING,
        "backend": {"type": "string", "description": "`local`, or the name of the (first) "
                                                     "upstream serving it."},
        "backends": {"type": "array", "items": STRING,
                     "description": "Upstream models: every upstream serving it."},
        "replicas": {"type": "array", "items": object_schema(
            {"backend": STRING, "kind": STRING, "up": BOOL, "in_flight": COUNT})},
        "capabilities": object_schema(
            {"vision": BOOL, "completion": BOOL, "thinking": BOOL, "tools": {
                "type": "boolean", "description": "The loaded model's chat template shows it "
                "the tools (given for the loaded model only)."}},
            ["vision", "completion", "thinking"]),
        "loaded": {"type": "boolean", "description": "The model in memory."},
        "status": {"type": "string",
                   "description": "`available`, or for the loaded model the server's state "
                                  "(`loading`, `warming`, `ready`, `unloaded`, `failed`); "
                                  "upstream models: `available` or `down` (no replica "
                                  "answers)."},
        "files": object_schema({"model": STRING, "mmproj": STRING}),
        "size_bytes": {"type": ["integer", "null"], "minimum": 0},
        "catalog": {"type": "string", "description": "Its catalog entry, if any."},
        "meta": {"type": "object",
                 "description": "The loaded engine's facts (ready model only)."}},
        ["id", "object", "created", "owned_by", "backend", "loaded", "status"],
        description="A model of this server (`backend: local`: `capabilities`, `files` and "
                    "`size_bytes` too) or of an upstream (its own card's fields, plus "
                    "`backends` and `replicas`).")
    model_list = object_schema({"object": {"const": "list"},
                                "data": {"type": "array", "items": _ref("Model")}})
    upstream = object_schema({"up": BOOL, "kind": STRING,
                              "models": {"type": "array", "items": STRING},
                              "in_flight": COUNT, "error": {"type": ["string", "null"]}})
    health = object_schema({
        "status": {"enum": ["ok", "loading", "warming", "unloaded", "failed", "stopped",
                            "unavailable"]},
        "model": {"type": ["string", "null"]}, "queue_depth": COUNT, "busy": BOOL,
        "backend": {"const": "gateway",
                    "description": "Only on a pure gateway (no local model)."},
        "upstreams": {"type": "object", "additionalProperties": upstream,
                      "description": "With --upstream: each upstream by name (never its "
                                     "URL)."},
        "served": {"type": "object", "additionalProperties": COUNT,
                   "description": "Counters: finish reasons, tokens generated, loads."},
        "prefills": {"type": "object", "additionalProperties": COUNT,
                     "description": "Prefills (POST /v1/chat/prefill) `waiting` for a "
                                    "sequence and `running` now, and how many ended each "
                                    "way (the `state`s of `ChatPrefill`)."},
        "reason": {"type": ["string", "null"],
                   "description": "Why it is not ready (when not `ok`)."},
        "warmup_seconds": {"type": ["number", "null"]},
        "cache": {"type": "object",
                  "description": "KV tokens held (all sequences), `n_ctx` (per sequence), "
                                 "`sequences` (`parallel`, `busy`), image embeddings and "
                                 "their bytes."}},
        ["status", "model"],
        description="When `ok`, also the engine's facts (`architecture`, `n_ctx`, "
                    "`gpu_offload`, `n_gpu_layers`, ...).")
    load_request = object_schema({
        "model": {"type": "string", "minLength": 1,
                  "description": "A model on this server (see /v1/models)."},
        "wait": {"type": "boolean", "default": True,
                 "description": "false: answer 202 at once; follow /admin/models/events."}},
        ["model"])
    load_result = object_schema({"model": STRING, "status": STRING,
                                 "load_seconds": {"type": ["number", "null"]}},
                                ["model", "status"])
    prefill = object_schema({
        "id": STRING, "object": {"const": "chat.prefill"}, "model": STRING,
        "accepted": {"type": "boolean", "description": "On POST: false when the model is "
                     "not loaded or is an upstream's (`code`, `reason` say which)."},
        "code": {"enum": ["model_not_loaded", "upstream_model"]}, "reason": STRING,
        "state": {"enum": ["queued", "waiting", "running", *PREFILL_ENDS],
                  "description": "queued, waiting (for a sequence), running; then how it "
                                 "ended: `done` (the whole draft is in a sequence), "
                                 "`images_cached` (no sequence it could use: its images are "
                                 "in the embedding cache), `taken_over` (the request arrived "
                                 "and continued from it), `superseded` (by a newer prefill "
                                 "or a request of the same key or client), `cancelled`, "
                                 "`dropped` (the model changed), `failed`."},
        "prompt_tokens": COUNT, "prompt_tokens_evaluated": COUNT, "cached_tokens": COUNT,
        "images_encoded": COUNT, "images_from_cache": COUNT, "prompt_ms": ms,
        "image_encode_ms": ms},
        ["object", "model"],
        description="A background prefill: a draft conversation evaluated while it is "
                    "typed, so that sending it costs what a follow-up costs.")
    unload_result = object_schema({"model": {"type": ["string", "null"]}, "status": STRING})
    model_event = object_schema({
        "type": {"enum": ["state", "progress", "rolled_back"]},
        "state": {"enum": ["loading", "warming", "ready", "unloaded", "failed", "stopped",
                           "none"]},
        "reason": {"type": ["string", "null"]}, "model": {"type": ["string", "null"]},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "load_seconds": {"type": ["number", "null"]},
        "time": {"type": "number", "description": "Unix time of the event."}}, ["type"])
    return {
        **request_schemas(_ref),
        **answer_schemas(_ref),
        "ChatCompletionEvent": _sse_event(
            {"anyOf": [_ref("ChatCompletionChunk"), _ref("Error")]}, done=True,
            description="One server-sent event: a chunk, an error that happened after the "
                        "stream started, or the final `[DONE]`. `: keep-alive` comments "
                        "are sent while waiting."),
        "Timings": timings, "Context": context,
        "Error": error, "Model": model, "ModelList": model_list, "Health": health,
        "LoadRequest": load_request, "LoadResult": load_result,
        "UnloadResult": unload_result, "ModelEvent": model_event, "ChatPrefill": prefill,
        "ModelEventMessage": _sse_event(
            _ref("ModelEvent"), done=False,
            description="One server-sent event; `: keep-alive` comments every second."),
    }


def _sse_event(payload: dict, *, done: bool, description: str) -> dict:
    """An event as OpenAPI 3.1 tools read a text/event-stream: {data, event, id, retry},
    its `data` a JSON document (or the literal `[DONE]`)."""
    json_data = {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": payload}
    data = {"if": {"const": "[DONE]"}, "else": json_data} if done else json_data
    return {"type": "object", "required": ["data"], "description": description,
            "properties": {"data": data, "event": {"const": "message"}}}


# ---- paths ------------------------------------------------------------------------------------

def _prefill_id() -> dict:
    return {"name": "id", "in": "path", "required": True, "schema": STRING,
            "description": "The `id` the POST answered."}


def _paths() -> dict:
    def header(description: str, schema: dict = STRING) -> dict:
        return {"description": description, "schema": schema}

    answer = {
        "description": "The answer: one JSON object, or with `stream: true` server-sent "
                       "events. An error after the stream started arrives inside it, "
                       "followed by `[DONE]`.",
        "headers": {
            "X-Context-Dropped": header("`images=N, messages=M` when the conversation was "
                                        "fitted into the context."),
            "X-Cache": header("With `--response-cache-dir`, on deterministic requests "
                              "(temperature 0 or a seed): `hit` (replayed from disk) or "
                              "`miss`.", {"enum": ["hit", "miss"]}),
            "X-Vlserve-Backend": header("Who answered: `local` or the upstream's name."),
            "X-Vlserve-Upstream-Notes": header("Gateway mode: parameters mapped or dropped "
                                               "for the upstream.")},
        "content": {"application/json": {"schema": _ref("ChatCompletion")},
                    "text/event-stream": {"schema": _ref("ChatCompletionEvent")}}}
    return {
        "/v1/chat/completions": {"post": _operation(
            "createChatCompletion", "OpenAI",
            "Chat completion, text and images (streaming with `stream: true`)", "chat",
            {"200": answer}, 400, 401, 403, 404, 413, 415, 429, 500, 502, 503, 504,
            body="ChatCompletionRequest")},
        "/v1/chat/prefill": {"post": _operation(
            "createChatPrefill", "vlserve",
            "Evaluate a draft conversation in the background (prefill while typing)", "chat",
            {"202": _body(_ref("ChatPrefill"), "Accepted: the work runs in the background; "
                          "`Location` is its status.",
                          {"Location": header("/v1/chat/prefill/{id}")}),
             "200": _body(_ref("ChatPrefill"), "Not accepted (`accepted: false`): the "
                          "model is not loaded (a prefill never loads one) or is an "
                          "upstream's (never forwarded).")},
            400, 401, 403, 413, 415, 503, body="ChatCompletionRequest",
            description="The body is the chat request as it will be sent (earlier turns, "
                        "then the draft message with its images and the text typed so far), "
                        "checked as one: the same 4xx. Nothing is generated. The request "
                        "that follows continues from it: when it arrives while the prefill "
                        "runs, it takes over its sequence; after, prefix reuse finds it. One "
                        "prefill per API key (per client address without keys): a newer one "
                        "supersedes the older. Requests always come first: a prefill never "
                        "evicts another key's (client's) conversation used within "
                        "`--prefill-protect` seconds, and while requests run its images wait and its text uses "
                        "at most 15% of the engine's time.")},
        "/v1/chat/prefill/{id}": {
            "get": _operation(
                "getChatPrefill", "vlserve", "A prefill's state (only its own key or client)",
                "chat", {"200": _body(_ref("ChatPrefill"), "Its state.")}, 401, 403, 404,
                parameters=[_prefill_id(), {
                    "name": "wait", "in": "query", "required": False,
                    "description": "Seconds (at most 60) to wait for it to end first.",
                    "schema": {"type": "number", "minimum": 0}}]),
            "delete": _operation(
                "cancelChatPrefill", "vlserve", "Drop a prefill (its KV stays as cache)",
                "chat", {"200": _body(_ref("ChatPrefill"), "Its state; it ends at the "
                                                           "engine's next step.")},
                401, 403, 404, parameters=[_prefill_id()])},
        "/v1/models": {"get": _operation(
            "listModels", "OpenAI", "Every model on disk; `loaded: true` on the one in memory",
            "chat", {"200": _body(_ref("ModelList"), "The models.")}, 401, 403)},
        "/v1/models/{model}": {"get": _operation(
            "retrieveModel", "OpenAI", "One model by id, catalog name or file name", "chat",
            {"200": _body(_ref("Model"), "The model.")}, 401, 403, 404,
            parameters=[{"name": "model", "in": "path", "required": True,
                         "description": "The model's id (may contain `/`).",
                         "schema": STRING}])},
        "/health": {"get": _operation(
            "health", "Server", "Readiness (open even when API keys are set)", None,
            {"200": _body(_ref("Health"), "Ready (`ok`), or `unloaded`: idle, the next "
                                          "request loads the model."),
             "503": _body(_ref("Health"), "Loading, warming up or failed; `reason` says why.",
                          RETRY_AFTER)}, 403)},
        "/admin/models/load": {"post": _operation(
            "loadModel", "Admin",
            "Switch to another model on disk (after the queued requests)", "admin",
            {"200": _body(_ref("LoadResult"), "Loaded (or it already was)."),
             "202": _body(_ref("LoadResult"), "Queued (`wait: false`).")},
            400, 401, 403, 404, 415, 500, 503, 504, body="LoadRequest")},
        "/admin/models/unload": {"post": _operation(
            "unloadModel", "Admin",
            "Free the model's memory; the next chat request loads it again", "admin",
            {"200": _body(_ref("UnloadResult"), "Unloaded.")}, 401, 403, 415, 503, 504)},
        "/admin/models/events": {"get": _operation(
            "modelEvents", "Admin", "Server-sent events: the current state, then state "
                                    "changes and load progress (never ends)", "admin",
            {"200": _body(_ref("ModelEventMessage"), "The event stream.",
                          media_type="text/event-stream")}, 401, 403)},
        "/metrics": {"get": _operation(
            "metrics", "Server", "Prometheus metrics (only with `--metrics`; 404 otherwise)",
            "metrics", {"200": _body(STRING, "Prometheus text exposition format.",
                                     media_type="text/plain")}, 401, 403, 404,
            description="Served only when the server runs with `--metrics`; without it the "
                        "route does not exist and answers 404.",
            **{"x-vlserve-requires": "--metrics"})},
        "/openapi.json": {"get": _operation(
            "openapi", "Server", "This document (open even when API keys are set)", None,
            {"200": _body({"type": "object", "required": ["openapi", "paths"]},
                          "The OpenAPI 3.1 document.")}, 403)},
    }


@lru_cache(maxsize=1)
def _document() -> dict:
    responses = {
        name: _body(_ref("Error"), description, ERROR_HEADERS.get(status))
        for status, (name, description) in ERROR_RESPONSES.items()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "vlserve",
            "version": __version__,
            "summary": "Offline OpenAI-compatible server for Qwen3-VL vision-language models",
            "description": "Chat completions with images (base64 `data:` URLs) and SSE "
                           "streaming, the model list, model switching and health. Every "
                           "error is `{\"error\": {\"message\", \"type\", \"param\", "
                           "\"code\"}}`. API keys are required only when the server is "
                           "started with `--api-key` or `--api-key-file`; a key's scopes ("
                           + ", ".join(SCOPES) + ") decide which endpoints it may use. "
                           "CORS preflights (OPTIONS) are answered for the origins given "
                           "with `--cors-origin`. Request bodies are JSON only (415 "
                           "otherwise); a browser request from another web origin, or one "
                           "naming a host this server does not answer to, is refused (403).",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/", "description": "This server"}],
        "security": _secured("chat"),
        "tags": [{"name": "OpenAI", "description": "The OpenAI-compatible API."},
                 {"name": "vlserve", "description": "Beyond OpenAI's API (`chat` scope)."},
                 {"name": "Admin", "description": "Model management (`admin` scope)."},
                 {"name": "Server", "description": "Health, metrics and this document."}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": responses,
            "securitySchemes": {
                BEARER: {"type": "http", "scheme": "bearer",
                         "description": "`Authorization: Bearer KEY` (what the OpenAI SDK "
                                        "sends as `api_key`)."},
                API_KEY: {"type": "apiKey", "in": "header", "name": "x-api-key",
                          "description": "`x-api-key: KEY`."},
            },
        },
    }
