"""The API's OpenAPI 3.1 document, served at GET /openapi.json (open, like /health).

The chat request's schemas are the parser's own declarations (`chat.protocol.
request_schemas`: each field's type, range, choices and default, as it checks them), and
the key scopes are `ops.auth`'s, so neither can drift from the server silently. The
responses, paths and security are written here; tests/test_openapi.py checks them against
the routes and against real responses, and runs schemathesis with the document against a
live server.

The chat page's routes (/, /chat.html, /static/...) are not API and are left out.
"""

from __future__ import annotations

import copy
from functools import lru_cache

from flask import Blueprint, jsonify

from .. import __version__
from ..ops.auth import SCOPES
from ..chat.protocol import request_schemas

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


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    out = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _secured(scope: str) -> list[dict]:
    return [{BEARER: [scope]}, {API_KEY: [scope]}]


def _errors(*statuses: int) -> dict:
    return {str(s): _response(ERROR_RESPONSES[s][0]) for s in statuses}


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
    prompt_details = {
        "type": "object", "required": ["cached_tokens", "image_tokens"],
        "properties": {"cached_tokens": COUNT, "image_tokens": COUNT}}
    usage = {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens",
                     "prompt_tokens_details"],
        "properties": {"prompt_tokens": COUNT, "completion_tokens": COUNT,
                       "total_tokens": COUNT, "prompt_tokens_details": prompt_details}}
    timing_counts = ("prompt_tokens_evaluated", "cached_tokens", "images_encoded",
                     "images_from_cache")
    timing_ms = ("prompt_ms", "image_encode_ms", "predicted_ms", "decode_tokens_per_s")
    timings = {
        "type": "object",
        "description": "Where the time went. `ttft_ms` (time to first token) is on the final "
                       "stream chunk only. Empty for an answer replayed from the response "
                       "cache (`X-Cache: hit`): nothing was computed.",
        "anyOf": [{"required": [*timing_ms, *timing_counts]}, {"maxProperties": 0}],
        "properties": {**{k: {"type": "number", "minimum": 0} for k in timing_ms},
                       **{k: COUNT for k in timing_counts},
                       "ttft_ms": {"type": "number", "minimum": 0}}}
    context = {
        "type": "object", "required": ["dropped_images", "dropped_messages"],
        "description": "Present when the conversation was fitted into the context: how many "
                       "images (replaced by text) and messages (oldest first) were dropped. "
                       "Also in the `X-Context-Dropped` header.",
        "properties": {"dropped_images": COUNT, "dropped_messages": COUNT}}
    completion = {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage", "timings"],
        "properties": {
            "id": {"type": "string", "pattern": "^chatcmpl-"},
            "object": {"const": "chat.completion"},
            "created": INT, "model": STRING,
            "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object",
                "required": ["index", "finish_reason", "logprobs", "message"],
                "properties": {
                    "index": {"const": 0},
                    "finish_reason": {"enum": ["stop", "length"]},
                    "logprobs": {"type": "null"},
                    "message": {
                        "type": "object", "required": ["role", "content"],
                        "properties": {"role": {"const": "assistant"}, "content": STRING,
                                       "reasoning_content": {
                                           "type": "string",
                                           "description": "A Thinking model's reasoning."}}},
                }}},
            "usage": _ref("Usage"), "timings": _ref("Timings"), "context": _ref("Context"),
        }}
    chunk = {
        "type": "object", "required": ["id", "object", "created", "model", "choices"],
        "description": "One stream event. The first carries the role (and `context` when the "
                       "conversation was fitted); the last with choices carries "
                       "`finish_reason` and `timings`; with `include_usage` one more carries "
                       "`usage` and no choices.",
        "properties": {
            "id": {"type": "string", "pattern": "^chatcmpl-"},
            "object": {"const": "chat.completion.chunk"},
            "created": INT, "model": STRING,
            "choices": {"type": "array", "maxItems": 1, "items": {
                "type": "object", "required": ["index", "delta", "logprobs", "finish_reason"],
                "properties": {
                    "index": {"const": 0},
                    "delta": {"type": "object", "properties": {
                        "role": {"const": "assistant"}, "content": STRING,
                        "reasoning_content": STRING}},
                    "logprobs": {"type": "null"},
                    "finish_reason": {"enum": ["stop", "length", None]}}}},
            "usage": _ref("Usage"), "timings": _ref("Timings"), "context": _ref("Context"),
        }}
    error = {
        "type": "object", "required": ["error"],
        "description": "Every error, OpenAI-shaped.",
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {
                "message": STRING,
                "type": {"type": "string",
                         "description": "invalid_request_error, authentication_error, "
                                        "permission_error, not_found_error, "
                                        "rate_limit_error, service_unavailable, "
                                        "timeout_error, server_error, upstream_error (or "
                                        "an upstream's own type, passed on)"},
                "param": {"type": ["string", "null"],
                          "description": "The request field at fault, e.g. "
                                         "`messages[0].content[1].image_url`."},
                "code": {"type": ["string", "null"],
                         "description": "e.g. invalid_image, context_length_exceeded, "
                                        "model_not_found, invalid_api_key, "
                                        "insufficient_scope, payload_too_large, "
                                        "rate_limit_exceeded, too_many_concurrent_requests, "
                                        "server_busy, model_not_ready, request_timeout, "
                                        "model_load_failed, upstream_unreachable, "
                                        "upstream_unavailable, upstream_timeout"},
            }}}}
    model = {
        "type": "object",
        "required": ["id", "object", "created", "owned_by", "backend", "loaded", "status"],
        "description": "A model of this server (`backend: local`: `capabilities`, `files` "
                       "and `size_bytes` too) or of an upstream (its own card's fields, "
                       "plus `backends` and `replicas`).",
        "properties": {
            "id": STRING, "object": {"const": "model"}, "created": INT,
            "owned_by": STRING,
            "backend": {"type": "string",
                        "description": "`local`, or the name of the (first) upstream "
                                       "serving it."},
            "backends": {"type": "array", "items": STRING,
                         "description": "Upstream models: every upstream serving it."},
            "replicas": {"type": "array", "items": {
                "type": "object", "required": ["backend", "kind", "up", "in_flight"],
                "properties": {"backend": STRING, "kind": STRING, "up": BOOL,
                               "in_flight": COUNT}}},
            "capabilities": {"type": "object",
                             "required": ["vision", "completion", "thinking"],
                             "properties": {"vision": BOOL, "completion": BOOL,
                                            "thinking": BOOL}},
            "loaded": {"type": "boolean", "description": "The model in memory."},
            "status": {"type": "string",
                       "description": "`available`, or for the loaded model the server's "
                                      "state (`loading`, `warming`, `ready`, `unloaded`, "
                                      "`failed`); upstream models: `available` or `down` "
                                      "(no replica answers)."},
            "files": {"type": "object", "required": ["model", "mmproj"],
                      "properties": {"model": STRING, "mmproj": STRING}},
            "size_bytes": {"type": ["integer", "null"], "minimum": 0},
            "catalog": {"type": "string", "description": "Its catalog entry, if any."},
            "meta": {"type": "object",
                     "description": "The loaded engine's facts (ready model only)."},
        }}
    model_list = {
        "type": "object", "required": ["object", "data"],
        "properties": {"object": {"const": "list"},
                       "data": {"type": "array", "items": _ref("Model")}}}
    upstream = {"type": "object", "required": ["up", "kind", "models", "in_flight", "error"],
                "properties": {"up": BOOL, "kind": STRING,
                               "models": {"type": "array", "items": STRING},
                               "in_flight": COUNT, "error": {"type": ["string", "null"]}}}
    health = {
        "type": "object", "required": ["status", "model"],
        "properties": {
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
            "reason": {"type": ["string", "null"],
                       "description": "Why it is not ready (when not `ok`)."},
            "warmup_seconds": {"type": ["number", "null"]},
            "cache": {"type": "object",
                      "description": "KV tokens held (all sequences), `n_ctx` (per "
                                     "sequence), `sequences` (`parallel`, `busy`), image "
                                     "embeddings and their bytes."},
        },
        "description": "When `ok`, also the engine's facts (`architecture`, `n_ctx`, "
                       "`gpu_offload`, `n_gpu_layers`, ...)."}
    load_request = {
        "type": "object", "required": ["model"],
        "properties": {
            "model": {"type": "string", "minLength": 1,
                      "description": "A model on this server (see /v1/models)."},
            "wait": {"type": "boolean", "default": True,
                     "description": "false: answer 202 at once; follow "
                                    "/admin/models/events."}}}
    load_result = {
        "type": "object", "required": ["model", "status"],
        "properties": {"model": STRING, "status": STRING,
                       "load_seconds": {"type": ["number", "null"]}}}
    unload_result = {
        "type": "object", "required": ["model", "status"],
        "properties": {"model": {"type": ["string", "null"]}, "status": STRING}}
    model_event = {
        "type": "object", "required": ["type"],
        "properties": {
            "type": {"enum": ["state", "progress", "rolled_back"]},
            "state": {"enum": ["loading", "warming", "ready", "unloaded", "failed",
                               "stopped", "none"]},
            "reason": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "load_seconds": {"type": ["number", "null"]},
            "time": {"type": "number", "description": "Unix time of the event."}}}
    return {
        **request_schemas(_ref),
        "ChatCompletion": completion, "ChatCompletionChunk": chunk,
        "ChatCompletionEvent": _sse_event(
            {"anyOf": [_ref("ChatCompletionChunk"), _ref("Error")]}, done=True,
            description="One server-sent event: a chunk, an error that happened after the "
                        "stream started, or the final `[DONE]`. `: keep-alive` comments "
                        "are sent while waiting."),
        "Usage": usage, "Timings": timings, "Context": context,
        "Error": error, "Model": model, "ModelList": model_list, "Health": health,
        "LoadRequest": load_request, "LoadResult": load_result,
        "UnloadResult": unload_result, "ModelEvent": model_event,
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

def _paths() -> dict:
    chat_errors = _errors(400, 401, 403, 404, 413, 415, 429, 500, 502, 503, 504)
    return {
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion", "tags": ["OpenAI"],
            "summary": "Chat completion, text and images (streaming with `stream: true`)",
            "security": _secured("chat"),
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("ChatCompletionRequest")}}},
            "responses": {
                "200": {
                    "description": "The answer: one JSON object, or with `stream: true` "
                                   "server-sent events. An error after the stream started "
                                   "arrives inside it, followed by `[DONE]`.",
                    "headers": {
                        "X-Context-Dropped": {
                            "description": "`images=N, messages=M` when the conversation was "
                                           "fitted into the context.", "schema": STRING},
                        "X-Cache": {
                            "description": "With `--response-cache-dir`, on deterministic "
                                           "requests (temperature 0 or a seed): `hit` "
                                           "(replayed from disk) or `miss`.",
                            "schema": {"enum": ["hit", "miss"]}},
                        "X-Vlserve-Backend": {
                            "description": "Who answered: `local` or the upstream's name.",
                            "schema": STRING},
                        "X-Vlserve-Upstream-Notes": {
                            "description": "Gateway mode: parameters mapped or dropped for "
                                           "the upstream.", "schema": STRING}},
                    "content": {
                        "application/json": {"schema": _ref("ChatCompletion")},
                        "text/event-stream": {"schema": _ref("ChatCompletionEvent")}}},
                **chat_errors}}},
        "/v1/models": {"get": {
            "operationId": "listModels", "tags": ["OpenAI"],
            "summary": "Every model on disk; `loaded: true` on the one in memory",
            "security": _secured("chat"),
            "responses": {"200": _json(_ref("ModelList"), "The models."),
                          **_errors(401, 403)}}},
        "/v1/models/{model}": {"get": {
            "operationId": "retrieveModel", "tags": ["OpenAI"],
            "summary": "One model by id, catalog name or file name",
            "security": _secured("chat"),
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "description": "The model's id (may contain `/`).",
                            "schema": STRING}],
            "responses": {"200": _json(_ref("Model"), "The model."),
                          **_errors(401, 403, 404)}}},
        "/health": {"get": {
            "operationId": "health", "tags": ["Server"], "security": [],
            "summary": "Readiness (open even when API keys are set)",
            "responses": {
                "200": _json(_ref("Health"), "Ready (`ok`), or `unloaded`: idle, the next "
                                             "request loads the model."),
                "503": _json(_ref("Health"), "Loading, warming up or failed; `reason` says "
                                             "why.", RETRY_AFTER),
                **_errors(403)}}},
        "/admin/models/load": {"post": {
            "operationId": "loadModel", "tags": ["Admin"],
            "summary": "Switch to another model on disk (after the queued requests)",
            "security": _secured("admin"),
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("LoadRequest")}}},
            "responses": {
                "200": _json(_ref("LoadResult"), "Loaded (or it already was)."),
                "202": _json(_ref("LoadResult"), "Queued (`wait: false`)."),
                **_errors(400, 401, 403, 404, 415, 500, 503, 504)}}},
        "/admin/models/unload": {"post": {
            "operationId": "unloadModel", "tags": ["Admin"],
            "summary": "Free the model's memory; the next chat request loads it again",
            "security": _secured("admin"),
            "responses": {"200": _json(_ref("UnloadResult"), "Unloaded."),
                          **_errors(401, 403, 415, 503, 504)}}},
        "/admin/models/events": {"get": {
            "operationId": "modelEvents", "tags": ["Admin"],
            "summary": "Server-sent events: the current state, then state changes and load "
                       "progress (never ends)",
            "security": _secured("admin"),
            "responses": {
                "200": {"description": "The event stream.", "content": {
                    "text/event-stream": {"schema": _ref("ModelEventMessage")}}},
                **_errors(401, 403)}}},
        "/metrics": {"get": {
            "operationId": "metrics", "tags": ["Server"],
            "summary": "Prometheus metrics (only with `--metrics`; 404 otherwise)",
            "description": "Served only when the server runs with `--metrics`; without it "
                           "the route does not exist and answers 404.",
            "x-vlserve-requires": "--metrics",
            "security": _secured("metrics"),
            "responses": {
                "200": {"description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": STRING}}},
                **_errors(401, 403, 404)}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "tags": ["Server"], "security": [],
            "summary": "This document (open even when API keys are set)",
            "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]},
                                       "The OpenAPI 3.1 document."),
                          **_errors(403)}}},
    }


@lru_cache(maxsize=1)
def _document() -> dict:
    responses = {
        name: _json(_ref("Error"), description, ERROR_HEADERS.get(status))
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
