"""CORS: off by default (no Access-Control-* header ever); with --cors-origin, an allowed
origin's preflight is approved without a key and its responses (errors and streams too) are
readable; any other origin is refused; credentials are never allowed."""

from __future__ import annotations

import logging

import pytest

from vlserve.ops import cors

CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SITE, OTHER = "https://intranet.example", "https://evil.example"
KEY = "browser-key-123"
# What the openai JS SDK asks for in a preflight (plus one header no page should send).
SDK_HEADERS = ("authorization, content-type, x-stainless-arch, x-stainless-lang, "
               "x-stainless-os, x-stainless-package-version, x-stainless-retry-count, "
               "x-stainless-runtime, x-stainless-runtime-version, openai-organization, "
               "openai-project, x-forwarded-for")


def preflight(client, path=CHAT, origin=SITE, method="POST", headers=SDK_HEADERS):
    return client.options(path, headers={"Origin": origin,
                                         "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": headers})


def cors_headers(r) -> dict:
    return {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def allow_headers(r) -> set[str]:
    return {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}


def vary(r) -> set[str]:
    return {v.strip().lower() for v in r.headers.get("Vary", "").split(",")}


def test_off_by_default(make_app):
    app = make_app()
    hooks = len(app.before_request_funcs[None]), len(app.after_request_funcs[None])
    cors.init_app(app, app.extensions["vlserve"]["settings"])
    assert (len(app.before_request_funcs[None]), len(app.after_request_funcs[None])) == hooks
    client = app.test_client()
    origin = {"Origin": SITE}
    for r in (client.get("/v1/models", headers=origin),
              client.post(CHAT, json=BODY, headers=origin),
              client.post(CHAT, json={}, headers=origin),
              preflight(client),
              preflight(client, "/v1/models", method="GET")):
        assert cors_headers(r) == {}, (r.status_code, r.headers)


def test_an_allowed_origins_preflight(make_app):
    r = preflight(make_app(cors_origins=(SITE,)).test_client())
    assert r.status_code == 204 and r.data == b""
    assert r.headers["Access-Control-Allow-Origin"] == SITE
    assert {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")} == {
        "GET", "POST", "DELETE", "OPTIONS"}
    allowed = allow_headers(r)
    assert {"authorization", "content-type", "x-api-key"} <= allowed
    assert {"x-stainless-os", "x-stainless-retry-count", "x-stainless-runtime-version",
            "openai-organization", "openai-project"} <= allowed
    assert "x-forwarded-for" not in allowed
    assert r.headers["Access-Control-Max-Age"] == "600"
    assert "origin" in vary(r)
    assert "access-control-allow-credentials" not in cors_headers(r)


def test_an_allowed_origin_reads_responses_and_streams(make_app):
    client = make_app(cors_origins=(SITE, "http://localhost:3000")).test_client()
    models = client.get("/v1/models", headers={"Origin": SITE})
    stream = client.post(CHAT, json=dict(BODY, stream=True), headers={"Origin": SITE})
    for r in (models, stream):
        assert r.status_code == 200
        assert r.headers["Access-Control-Allow-Origin"] == SITE
        assert "origin" in vary(r)
        exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"]
                   .split(",")}
        assert {"retry-after", "x-context-dropped"} <= exposed
        assert "access-control-allow-credentials" not in cors_headers(r)
    assert stream.mimetype == "text/event-stream"
    assert stream.get_data().rstrip().endswith(b"data: [DONE]")
    # errors are readable too
    bad = client.post(CHAT, json={}, headers={"Origin": "http://localhost:3000"})
    assert bad.status_code == 400
    assert bad.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_another_origin_is_refused(make_app):
    client = make_app(cors_origins=(SITE,)).test_client()
    for origin in (OTHER, "http://intranet.example", "https://intranet.example:8443",
                   "https://intranet.example.evil.example", "null"):
        r = preflight(client, origin=origin)
        assert r.status_code == 403, origin
        err = r.get_json()["error"]
        assert err["type"] == "permission_error" and err["code"] == "cors_origin_not_allowed"
        assert "access-control-allow-origin" not in cors_headers(r)
        actual = client.get("/v1/models", headers={"Origin": origin})
        assert actual.status_code == 403    # refused before it runs (vlserve/origin.py)…
        assert actual.get_json()["error"]["code"] == "origin_not_allowed"
        assert cors_headers(actual) == {}   # …and the page may not even read why
        assert "origin" in vary(actual)


def test_origins_match_as_browsers_send_them(make_app):
    client = make_app(cors_origins=("https://Intranet.Example/",)).test_client()
    r = client.get("/v1/models", headers={"Origin": SITE})
    assert r.headers["Access-Control-Allow-Origin"] == SITE


def test_preflight_needs_no_key_but_the_request_does(make_app):
    client = make_app(cors_origins=(SITE,), api_keys=(KEY,)).test_client()
    for path, method in ((CHAT, "POST"), ("/v1/models", "GET"),
                         ("/admin/models/load", "POST")):
        assert preflight(client, path, method=method).status_code == 204, path
    r = client.post(CHAT, json=BODY, headers={"Origin": SITE})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_api_key"
    assert r.headers["Access-Control-Allow-Origin"] == SITE   # the page can say why
    ok = client.post(CHAT, json=BODY, headers={"Origin": SITE, "Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == SITE


def test_a_429_tells_the_page_when_to_retry(make_app):
    client = make_app(cors_origins=(SITE,), rate_limit=1).test_client()
    assert client.post(CHAT, json=BODY, headers={"Origin": SITE}).status_code == 200
    r = client.post(CHAT, json=BODY, headers={"Origin": SITE})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.headers["Access-Control-Allow-Origin"] == SITE
    assert "retry-after" in r.headers["Access-Control-Expose-Headers"].lower()


def test_star_allows_any_origin_with_a_warning_and_never_credentials(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="vlserve"):
        client = make_app(cors_origins=("*",)).test_client()
    assert "every origin" in caplog.text
    r = preflight(client, origin=OTHER)
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == OTHER
    actual = client.get("/v1/models", headers={"Origin": OTHER})
    assert actual.headers["Access-Control-Allow-Origin"] == OTHER
    for resp in (r, actual):
        assert "access-control-allow-credentials" not in cors_headers(resp)


def test_the_page_and_non_preflight_requests_are_left_alone(make_app):
    client = make_app(cors_origins=(SITE,)).test_client()
    page = client.get("/", headers={"Origin": SITE})
    assert cors_headers(page) == {}
    # an OPTIONS without Access-Control-Request-Method is no preflight: Flask answers it
    r = client.options("/v1/models", headers={"Origin": SITE})
    assert r.status_code == 200 and "GET" in r.headers["Allow"]
    assert r.headers["Access-Control-Allow-Origin"] == SITE


def test_init_app_twice_registers_once(make_app):
    app = make_app(cors_origins=(SITE,))
    hooks = len(app.before_request_funcs[None]), len(app.after_request_funcs[None])
    cors.init_app(app, app.extensions["vlserve"]["settings"])
    assert (len(app.before_request_funcs[None]), len(app.after_request_funcs[None])) == hooks
    r = app.test_client().get("/v1/models", headers={"Origin": SITE})
    assert r.headers.getlist("Access-Control-Allow-Origin") == [SITE]


def test_an_origin_with_a_path_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="vlserve"):
        origins = cors.Origins(("https://intranet.example/app", SITE))
    assert "never matches" in caplog.text and "intranet.example/app" in caplog.text
    assert origins.allows(SITE) and not origins.allows(None) and not origins.allows("")


@pytest.mark.parametrize("requested, extra", [
    ("", set()),
    ("Content-Type", set()),
    ("X-Stainless-OS, x-stainless-timeout", {"x-stainless-os", "x-stainless-timeout"}),
    ("openai-beta, OpenAI-Organization", {"openai-beta", "openai-organization"}),
    ("x-forwarded-for, x-real-ip, cookie, host, openai-secret", set()),
    ("accept, x-requested-with, , ,", {"accept", "x-requested-with"}),
])
def test_allowed_headers(requested, extra):
    got = cors.allowed_headers(requested)
    assert got[:3] == list(cors.BASE_HEADERS)
    assert set(got[3:]) == extra and len(got) == len({h.lower() for h in got})
