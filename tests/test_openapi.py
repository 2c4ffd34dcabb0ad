"""The OpenAPI document (/openapi.json) is true: it lists exactly the app's routes, it is a
valid OpenAPI 3.1 document, real responses (test client, tiny model) match the schemas it
documents, errors included, and schemathesis finds no 5xx nor any undocumented status,
content type or body against a live gunicorn server.
"""

from __future__ import annotations

import copy
import json
import os
import re

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

import vlserve
from vlserve.ops import auth
from vlserve.web import openapi
from vlserve.web.app import create_app

from conftest import LiveServer, data_url, user

DOC = openapi.build_document()
IGNORED_METHODS = {"HEAD", "OPTIONS"}   # Flask adds them to every rule
PAGE_BLUEPRINTS = {"webui"}             # the chat page: not API, left out of the document
OPEN_PATHS = {"/health", "/openapi.json"}
SSE = "text/event-stream"


@pytest.fixture
def open_document(monkeypatch):
    """/openapi.json is open like /health (auth.OPEN_ENDPOINTS) even before integration."""
    if "openapi.document" not in auth.OPEN_ENDPOINTS:
        monkeypatch.setattr(auth, "OPEN_ENDPOINTS", auth.OPEN_ENDPOINTS | {"openapi.document"})


# ---- schema helpers -------------------------------------------------------------------------

def resolve(node):
    """Follow local $refs (#/components/...) until a concrete object."""
    while isinstance(node, dict) and "$ref" in node:
        target = DOC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def validator(schema: dict) -> jsonschema_rs.Validator:
    """A Draft 2020-12 validator for `schema` whose #/components/... refs resolve."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": DOC["components"]},
                                              validate_formats=True)


def operation(path: str, method: str) -> dict:
    return DOC["paths"][path][method.lower()]


def documented_schema(path: str, method: str, status: int, media_type: str) -> dict:
    responses = operation(path, method)["responses"]
    assert str(status) in responses, f"{method} {path}: status {status} is not documented"
    response = resolve(responses[str(status)])
    content = response.get("content", {})
    assert media_type in content, (f"{method} {path} {status}: {media_type} not documented "
                                   f"(documented: {sorted(content)})")
    return content[media_type]["schema"]


def errors_of(v: jsonschema_rs.Validator, instance) -> list[str]:
    return [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in v.iter_errors(instance)]


def sse_events(text: str) -> list[dict]:
    """Events as OpenAPI tools read a stream: {data, event}; comments are skipped."""
    events = []
    for block in re.split(r"\r?\n\r?\n", text):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        data = [line.partition(":")[2].removeprefix(" ") for line in lines
                if line.startswith("data:")]
        if data:
            events.append({"data": "\n".join(data), "event": "message"})
    return events


def check_response(path: str, method: str, response, *, expect: int | None = None) -> None:
    """The response's status, content type and body are what the document says."""
    status = response.status_code
    if expect is not None:
        assert status == expect, response.get_data(as_text=True)[:500]
    media_type = response.mimetype
    schema = documented_schema(path, method, status, media_type)
    if media_type == "application/json":
        body = json.loads(response.get_data(as_text=True))
        problems = errors_of(validator(schema), body)
        assert not problems, f"{method} {path} {status}: {problems}\n{body}"
    elif media_type == SSE:
        check_events(schema, sse_events(response.get_data(as_text=True)))
    else:
        assert isinstance(response.get_data(as_text=True), str)


def check_events(event_schema: dict, events: list[dict]) -> None:
    """Each event matches the event schema; each JSON `data` its documented contentSchema."""
    assert events
    event_validator = validator(event_schema)
    data_schema = resolve(event_schema)["properties"]["data"]
    data_schema = data_schema.get("else", data_schema)
    payload_validator = validator(data_schema["contentSchema"])
    for event in events:
        assert not errors_of(event_validator, event), event
        if event["data"] == "[DONE]" and "else" in resolve(event_schema)["properties"]["data"]:
            continue
        payload = json.loads(event["data"])
        problems = errors_of(payload_validator, payload)
        assert not problems, f"{problems}\n{payload}"


# ---- 1. the document lists exactly the app's routes ----------------------------------------

def _app_operations(app) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.rpartition(".")[0]
        if blueprint in PAGE_BLUEPRINTS or rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^<>:]+:)?[^<>]+>", "{}", rule.rule)
        ops |= {(path, m) for m in rule.methods - IGNORED_METHODS}
    return ops


def _documented_operations(*, include_optional: bool = True) -> set[tuple[str, str]]:
    return {(re.sub(r"\{[^}]+\}", "{}", path), method.upper())
            for path, item in DOC["paths"].items() for method, op in item.items()
            if include_optional or "x-vlserve-requires" not in op}


def test_every_route_is_documented_and_every_documented_route_exists(make_app):
    app = make_app(metrics=True)
    routes, documented = _app_operations(app), _documented_operations()
    assert routes - documented == set(), "routes missing from vlserve/openapi.py"
    # a documented route may be absent only if it exists behind an option (/metrics)
    missing = documented - routes
    optional = documented - _documented_operations(include_optional=False)
    assert missing <= optional, f"documented but not served: {missing - optional}"


def test_optional_routes_are_absent_or_documented_without_their_option(make_app):
    """Without --metrics the app may not route /metrics (documented as 404 then)."""
    app = make_app(metrics=False)
    assert _app_operations(app) <= _documented_operations()


def test_openapi_blueprint_is_integrated(engine, settings):
    """create_app registers the blueprint and auth.py leaves its endpoint open."""
    app = create_app(settings, engine=engine, start=False)
    assert "openapi.document" in auth.OPEN_ENDPOINTS
    assert any(r.endpoint == "openapi.document" and r.rule == "/openapi.json"
               for r in app.url_map.iter_rules())


# ---- 2. a valid OpenAPI 3.1 document --------------------------------------------------------

def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1")
    OPENAPI_31_VALIDATOR.validate(DOC)
    loaded = schemathesis.openapi.from_dict(copy.deepcopy(DOC))
    loaded.validate()
    assert [r.ok() for r in loaded.get_all_operations()]  # every operation parses


def test_the_validator_rejects_a_broken_document():
    """A control: the 3.1 meta-schema validator does reject what is invalid."""
    broken = copy.deepcopy(DOC)
    del broken["paths"]["/health"]["get"]["responses"]["200"]["description"]
    with pytest.raises(jsonschema_rs.ValidationError):
        OPENAPI_31_VALIDATOR.validate(broken)


def test_every_schema_is_valid_json_schema_and_every_ref_resolves():
    for schema in DOC["components"]["schemas"].values():
        jsonschema_rs.meta.validate({"$schema": "https://json-schema.org/draft/2020-12/schema",
                                     **schema})
        validator(schema)  # compiles, with its $refs
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(DOC))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        assert resolve({"$ref": ref}) is not None


def test_document_metadata_and_security():
    assert DOC["info"]["version"] == vlserve.__version__
    assert DOC["servers"] == [{"url": "/", "description": "This server"}]
    schemes = DOC["components"]["securitySchemes"]
    assert schemes[openapi.BEARER] == {**schemes[openapi.BEARER], "type": "http",
                                       "scheme": "bearer"}
    assert schemes[openapi.API_KEY]["name"] == "x-api-key"
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if path in OPEN_PATHS:
                assert op["security"] == [], (method, path)
            else:
                assert op["security"] and all(set(req) <= set(schemes)
                                              for req in op["security"]), (method, path)
                assert {"401", "403"} <= set(op["responses"]), (method, path)
            for status, response in op["responses"].items():
                assert "content" in resolve(response), (method, path, status)


def test_request_schema_follows_the_parser():
    """The limits in the request schema are the ones protocol.py enforces."""
    from vlserve.chat import protocol
    request = DOC["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert request["stop"]["oneOf"][1]["maxItems"] == protocol.MAX_STOP_STRINGS
    assert set(request["reasoning_format"]["enum"]) - {None} == set(protocol.REASONING_FORMATS)
    roles = set()
    for variant in DOC["components"]["schemas"]["ChatMessage"]["oneOf"]:
        role = variant["properties"]["role"]
        roles |= set(role.get("enum", [role.get("const")]))
    assert roles == protocol.ROLES


# ---- 3. real responses match the document ---------------------------------------------------

@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def api(app):
    return app.test_client()


def chat(api, body: dict, **kwargs):
    return api.post("/v1/chat/completions", json=body, **kwargs)


def test_openapi_json_is_served(api):
    response = api.get("/openapi.json")
    check_response("/openapi.json", "GET", response, expect=200)
    assert response.get_json() == DOC


def test_health_and_models_match(api):
    check_response("/health", "GET", api.get("/health"), expect=200)
    check_response("/v1/models", "GET", api.get("/v1/models"), expect=200)
    check_response("/v1/models/{model}", "GET", api.get("/v1/models/tiny"), expect=200)
    response = api.get("/v1/models/no-such-model")
    check_response("/v1/models/{model}", "GET", response, expect=404)
    assert response.get_json()["error"]["code"] == "model_not_found"


def test_health_503_and_chat_503_while_loading(engine, settings):
    """A worker that has not loaded its model yet: /health 503 with a reason, chat 503."""
    app = create_app(settings, engine=engine, start=False)
    api = app.test_client()
    response = api.get("/health")
    check_response("/health", "GET", response, expect=503)
    assert response.headers["Retry-After"]
    response = chat(api, {"messages": [user("hi")], "max_tokens": 2})
    check_response("/v1/chat/completions", "POST", response, expect=503)
    assert response.get_json()["error"]["code"] == "model_not_ready"


def test_chat_completion_matches(api):
    response = chat(api, {"messages": [{"role": "system", "content": "Be brief."},
                                       user("What is this?", ("img", data_url()))],
                          "max_tokens": 4, "temperature": 0, "seed": 1, "stop": ["\n\n"]})
    check_response("/v1/chat/completions", "POST", response, expect=200)
    body = response.get_json()
    assert body["usage"]["prompt_tokens_details"]["image_tokens"] > 0


def test_chat_stream_matches(api):
    response = chat(api, {"messages": [user("hi", ("img", data_url(fmt="JPEG")))],
                          "stream": True, "stream_options": {"include_usage": True},
                          "max_tokens": 4})
    check_response("/v1/chat/completions", "POST", response, expect=200)
    events = sse_events(response.get_data(as_text=True))
    assert events[-1]["data"] == "[DONE]"
    assert "usage" in json.loads(events[-2]["data"])
    assert "ttft_ms" in json.loads(events[-3]["data"])["timings"]


TOOL = {"type": "function", "function": {"name": "count", "parameters": {
    "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["n"], "additionalProperties": False}}}


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_and_its_round_trip_match(api, stream):
    """Calls (whole and as deltas), then a conversation with them and a tool result."""
    body = {"messages": [user("Count.")], "tools": [TOOL], "tool_choice": "required",
            "parallel_tool_calls": False, "max_tokens": 60, "temperature": 0}
    response = chat(api, {**body, "stream": stream})
    check_response("/v1/chat/completions", "POST", response, expect=200)
    message = chat(api, body).get_json()["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"]
    follow = [*body["messages"], message, {"role": "tool", "content": "3",
                                           "tool_call_id": message["tool_calls"][0]["id"]}]
    response = chat(api, {"messages": follow, "tools": [TOOL], "max_tokens": 4})
    check_response("/v1/chat/completions", "POST", response, expect=200)


def test_chat_fitted_into_the_context_reports_what_was_dropped(api):
    """A history longer than the context: `context` in the body, X-Context-Dropped."""
    from conftest import N_CTX
    turn = "lorem ipsum dolor sit amet " * (N_CTX // 40)
    history = []
    for i in range(8):
        history += [user(f"{i} {turn}"), {"role": "assistant", "content": turn}]
    response = chat(api, {"messages": [*history, user("and now?")], "max_tokens": 2})
    check_response("/v1/chat/completions", "POST", response, expect=200)
    assert response.get_json()["context"]["dropped_messages"] > 0
    assert response.headers["X-Context-Dropped"]


@pytest.mark.parametrize("body, param", [
    (None, None),                                                   # not JSON
    ({"messages": []}, "messages"),
    ({"messages": [user("hi")], "temperature": 5}, "temperature"),
    ({"messages": [user("hi")], "n": 2}, "n"),
    ({"messages": [user("hi")], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [user("hi")], "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"messages": [user("hi")], "tools": [{"type": "function", "function": {"name": "a b"}}]},
     "tools[0].function.name"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [user(("img", "data:image/png;base64,AAAA"))]}, "messages"),
    ({"messages": [user(("img", "https://example.com/cat.png"))]}, "messages"),
    ({"messages": [user("x " * 5000)], "max_tokens": 2}, "messages"),  # over the context
])
def test_chat_400s_match(api, body, param):
    if body is None:
        response = api.post("/v1/chat/completions", data=b"{not json",
                            content_type="application/json")
    else:
        response = chat(api, body)
    check_response("/v1/chat/completions", "POST", response, expect=400)
    assert response.get_json()["error"]["param"] == param


def test_chat_max_tokens_over_the_cap_is_400(make_app):
    api = make_app(max_tokens_cap=8).test_client()
    response = chat(api, {"messages": [user("hi")], "max_tokens": 9})
    check_response("/v1/chat/completions", "POST", response, expect=400)


def test_413_body_and_image_too_large(make_app):
    from vlserve.chat.images import ImageLimits
    api = make_app(max_body_bytes=2000,
                                images=ImageLimits(max_bytes=64)).test_client()
    response = chat(api, {"messages": [user("x" * 5000)]})
    check_response("/v1/chat/completions", "POST", response, expect=413)
    response = chat(api, {"messages": [user(("img", data_url(64, 64)))], "max_tokens": 2})
    check_response("/v1/chat/completions", "POST", response, expect=413)
    assert response.get_json()["error"]["param"] == "messages"


def test_503_busy_and_504_timeout(make_app):
    api = make_app(queue_size=0).test_client()
    response = chat(api, {"messages": [user("hi")], "max_tokens": 2})
    check_response("/v1/chat/completions", "POST", response, expect=503)
    assert response.headers["Retry-After"]
    api = make_app(request_timeout=0.0001).test_client()
    response = chat(api, {"messages": [user("hi")], "max_tokens": 64})
    check_response("/v1/chat/completions", "POST", response, expect=504)


def test_response_cache_replays_match(make_app, tmp_path):
    """A deterministic request asked again is answered from disk (X-Cache: hit), streamed
    or not, with empty timings: the document allows that."""
    api = make_app(response_cache_dir=str(tmp_path / "answers")).test_client()
    body = {"messages": [user("cache me")], "max_tokens": 3, "temperature": 0}
    for stream in (False, True):
        request = {**body, "stream": stream, "stream_options": {"include_usage": True}}
        for expected in ("miss", "hit") if not stream else ("hit",):
            response = chat(api, request)
            check_response("/v1/chat/completions", "POST", response, expect=200)
            assert response.headers["X-Cache"] == expected


def test_429_rate_and_concurrency_limits_match(make_app):
    api = make_app(rate_limit=1).test_client()
    body = {"messages": [user("hi")], "max_tokens": 1}
    check_response("/v1/chat/completions", "POST", chat(api, body), expect=200)
    response = chat(api, body)
    check_response("/v1/chat/completions", "POST", response, expect=429)
    assert response.get_json()["error"]["code"] == "rate_limit_exceeded"
    assert response.headers["Retry-After"]
    # a stream holds its slot until it is read to the end
    api = make_app(max_streams=1).test_client()
    held = chat(api, {**body, "stream": True, "max_tokens": 2}, buffered=False)
    try:
        response = chat(api, body)
        check_response("/v1/chat/completions", "POST", response, expect=429)
        assert response.get_json()["error"]["code"] == "too_many_concurrent_requests"
    finally:
        held.close()


def test_admin_routes_match(api):
    # loading the model that is loaded is a no-op: the session's shared engine stays up
    check_response("/admin/models/load", "POST",
                   api.post("/admin/models/load", json={"model": "tiny"}), expect=200)
    check_response("/admin/models/load", "POST",
                   api.post("/admin/models/load", json={"model": "tiny", "wait": False}),
                   expect=202)
    check_response("/admin/models/load", "POST",
                   api.post("/admin/models/load", json={"model": "nope"}), expect=404)
    check_response("/admin/models/load", "POST",
                   api.post("/admin/models/load", data=b"[]", content_type="application/json"),
                   expect=400)
    check_response("/admin/models/load", "POST",
                   api.post("/admin/models/load", json={"model": 3}), expect=400)


def test_prefill_routes_match(api):
    draft = {"messages": [user(("img", data_url()), "how many")]}
    response = api.post("/v1/chat/prefill", json=draft)
    check_response("/v1/chat/prefill", "POST", response, expect=202)
    path = response.headers["Location"]
    check_response("/v1/chat/prefill/{id}", "GET", api.get(path + "?wait=30"), expect=200)
    check_response("/v1/chat/prefill/{id}", "DELETE", api.delete(path), expect=200)
    check_response("/v1/chat/prefill/{id}", "GET", api.get("/v1/chat/prefill/x"), expect=404)
    check_response("/v1/chat/prefill", "POST",
                   api.post("/v1/chat/prefill", json={"messages": []}), expect=400)
    check_response("/health", "GET", api.get("/health"), expect=200)


def test_admin_events_match(api):
    response = api.get("/admin/models/events", buffered=False)
    try:
        assert response.status_code == 200 and response.mimetype == SSE
        first = next(iter(response.response))
        first = first.decode() if isinstance(first, bytes) else first
    finally:
        response.close()
    schema = documented_schema("/admin/models/events", "GET", 200, SSE)
    check_events(schema, sse_events(first))


def test_metrics_matches_on_or_off(make_app):
    for enabled in (True, False):
        api = make_app(metrics=enabled).test_client()
        response = api.get("/metrics")
        assert response.status_code in ((200, 404) if enabled else (404,))
        check_response("/metrics", "GET", response)


def test_browser_guard_refusals_match(api):
    """vlserve/origin.py: a form body (415), another site's page and a foreign Host (403)."""
    body = json.dumps({"messages": [user("hi")], "max_tokens": 2})
    for path, data in (("/v1/chat/completions", body), ("/admin/models/load", '{"model": 1}'),
                       ("/admin/models/unload", "")):
        check_response(path, "POST", api.post(path, data=data, content_type="text/plain"),
                       expect=415)
        check_response(path, "POST", api.post(path, data=data, content_type="application/json",
                                              headers={"Origin": "https://evil.example"}),
                       expect=403)
    for path in ("/health", "/openapi.json", "/v1/models"):
        check_response(path, "GET", api.get(path, headers={"Host": "evil.example"}),
                       expect=403)


KEY_FILE = "chatter:chat-key-0123:chat\nops:admin-key-0123:admin\n"


def test_401_and_403_match_and_open_routes_stay_open(make_app, tmp_path, open_document):
    keys = tmp_path / "keys"
    keys.write_text(KEY_FILE)
    api = make_app(api_key_file=str(keys)).test_client()
    chat_key = {"Authorization": "Bearer chat-key-0123"}
    admin_key = {"x-api-key": "admin-key-0123"}
    for path, method, call in [
            ("/v1/models", "GET", lambda h: api.get("/v1/models", headers=h)),
            ("/v1/models/{model}", "GET", lambda h: api.get("/v1/models/tiny", headers=h)),
            ("/v1/chat/completions", "POST",
             lambda h: chat(api, {"messages": [user("hi")], "max_tokens": 2}, headers=h)),
    ]:
        check_response(path, method, call({}), expect=401)
        check_response(path, method, call({"Authorization": "Bearer wrong-key-000"}),
                       expect=401)
        check_response(path, method, call(admin_key), expect=403)
        check_response(path, method, call(chat_key), expect=200)
    for path, call in [
            ("/admin/models/load",
             lambda h: api.post("/admin/models/load", json={"model": "tiny"}, headers=h)),
            ("/admin/models/unload", lambda h: api.post("/admin/models/unload", headers=h))]:
        check_response(path, "POST", call({}), expect=401)
        check_response(path, "POST", call(chat_key), expect=403)
    check_response("/admin/models/load", "POST",
                   api.post("/admin/models/load", json={"model": "tiny"}, headers=admin_key),
                   expect=200)
    check_response("/admin/models/events", "GET", api.get("/admin/models/events"),
                   expect=401)
    response = api.get("/metrics", headers=chat_key)   # 403 when served, 404 when not
    check_response("/metrics", "GET", response)
    assert response.status_code in (403, 404)
    check_response("/health", "GET", api.get("/health"), expect=200)
    check_response("/openapi.json", "GET", api.get("/openapi.json"), expect=200)


# Found by fuzzing; each is a 500 where the document (and the parser's contract) says 4xx.
# See the report in the change that added this file.
@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions",   # a lone surrogate in a message's text (tokenizer encode)
     '{"messages":[{"role":"user","content":"\\ud800"}],"max_tokens":2}'),
    ("/v1/chat/completions",   # ... in an image URL (ImageCache hashes url.encode())
     ('{"messages":[{"role":"user","content":[{"type":"image_url","image_url":"\\ud800"}]}],'
      '"max_tokens":2}')),
    ("/v1/chat/completions",   # a model name with a NUL byte ending .gguf (Path.resolve)
     '{"model":"\\u0000.gguf","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'),
    ("/admin/models/load", '{"model":"\\u0000.gguf"}'),
])
def test_hostile_strings_are_4xx(api, path, body):
    response = api.post(path, data=body, content_type="application/json")
    assert response.status_code < 500, response.get_json()
    check_response(path, "POST", response)


def test_hostile_model_id_in_path_is_404(api):
    response = api.get("/v1/models/%00.gguf")
    assert response.status_code == 404, response.get_json()
    check_response("/v1/models/{model}", "GET", response)


# ---- 4. schemathesis against a live server --------------------------------------------------

# Larger runs locally: VLSERVE_FUZZ_EXAMPLES=200 pytest tests/test_openapi.py -k live
LIVE_EXAMPLES = int(os.environ.get("VLSERVE_FUZZ_EXAMPLES", "0")) or 25
LIVE_ARGS = ("--max-tokens-cap", "8",   # a larger max_tokens is a (documented) 400
             # bounds requests that set no max_tokens (they generate what is left of the
             # context): ~0.2 s each on an idle machine, seconds on a busy one
             "--ctx-size", "256",
             "--threads", "1",           # llama.cpp's spinning threads crawl on a busy 2-core box
             "--queue-size", "8", "--metrics",
             "--timeout", "20")          # a documented 504 before the client's 30 s timeout
CLIENT_TIMEOUT = 30
@pytest.fixture(scope="module")
def openapi_server(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("openapi-live")
    server = LiveServer(tiny_model, *LIVE_ARGS,   # later flags win over LiveServer's
                               # deterministic requests (temperature 0, a seed) are replayed
                               "--response-cache-dir", str(folder / "answers"),
                               log_path=folder / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_schema(openapi_server):
    config = schemathesis.Config.from_dict({
        "request-timeout": CLIENT_TIMEOUT,
        # /admin/models/events never ends: read its first event (the current state) and
        # hang up. Chat streams end by themselves (max_tokens <= 8 or a 256-token context).
        "operations": [{"include-path": "/admin/models/events", "max-stream-events": 1}],
        "generation": {"database": "none"},
    })
    return schemathesis.openapi.from_url(openapi_server.url + "/openapi.json", config=config)


# (operation, mode): valid and invalid requests for each operation; operations with nothing
# to get wrong (no parameters, body or credentials) have no invalid requests to make.
LIVE_CASES = [
    pytest.param(f"{method.upper()} {path}", mode, id=f"{method.upper()} {path}-{mode.value}")
    for path, item in DOC["paths"].items() for method, op in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE
    or op.get("parameters") or op.get("requestBody") or op.get("security")]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.mark.parametrize("label, mode", LIVE_CASES)
def test_live_api_conforms(live_schema, label, mode):
    """Generated requests, valid and invalid, for each documented operation of the live
    server's own document: no 5xx, and the status, content type and body are documented.

    Every operation is in, unload and load included: unloading the tiny model and loading
    it again on the next chat request takes well under a second. Streams: chat streams end
    by themselves (max_tokens <= 8 or a 256-token context) and /admin/models/events is cut
    after its first event (max-stream-events 1 in the config). Schemathesis' coverage phase
    (every boundary value of every field: hundreds of chat requests) is not run, to stay
    near a minute on two cores; VLSERVE_FUZZ_EXAMPLES raises the example count.

    Schemathesis' own pytest integration (`schemathesis.pytest.from_fixture` +
    `@schema.parametrize()`) is not used: with pytest 9.2 it fails with "'Function' object
    has no attribute '_nodeid'" (schemathesis 4.32.5). `operation.as_strategy()` with
    Hypothesis' `@given` is its documented alternative.
    """
    method, path = label.split(" ", 1)
    op = live_schema[path][method]

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=LIVE_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(checks=CHECKS, timeout=CLIENT_TIMEOUT)

    run()


def test_live_checks_catch_a_wrong_document(openapi_server):
    """A control: the same checks fail a real response against a document that is wrong
    about it (a JSON body and a stream event)."""
    wrong = copy.deepcopy(DOC)
    schemas = wrong["components"]["schemas"]
    schemas["ChatCompletion"]["properties"]["object"] = {"const": "not.this"}
    schemas["ChatCompletionChunk"]["properties"]["object"] = {"const": "not.this"}
    op = schemathesis.openapi.from_dict(wrong)["/v1/chat/completions"]["POST"]
    for stream in (False, True):
        case = op.Case(body={"messages": [user("hi")], "max_tokens": 2, "stream": stream},
                       media_type="application/json")
        with pytest.raises(FailureGroup, match="violates schema"):
            case.call_and_validate(base_url=openapi_server.url, checks=CHECKS,
                                   timeout=CLIENT_TIMEOUT)


def test_live_server_serves_the_document(openapi_server):
    response = requests.get(openapi_server.url + "/openapi.json", timeout=5)
    assert response.status_code == 200 and response.json() == DOC
