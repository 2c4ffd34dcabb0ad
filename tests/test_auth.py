"""API keys and scopes: every route but the page and /health needs a key, a key may do only
what its scopes allow, keys are never kept or logged in clear, bad key files stop the start."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from conftest import ROOT, LiveServer, data_url, user
from vlserve.ops.auth import KeyFileError, load_keys, parse_key_file

CHAT_KEY, ADMIN_KEY, METRICS_KEY, ALL_KEY = ("chat-secret-1", "admin-secret-2",
                                             "metrics-secret-3", "everything-4")
OPEN = {"/health", "/", "/chat.html", "/static/<path:name>", "/openapi.json", "/docs"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# who may do what\n\nfrontdesk:{CHAT_KEY}\n"
                    f"ops:{ADMIN_KEY}:admin\nprometheus:{METRICS_KEY}:metrics\n")
    return str(path)


@pytest.fixture
def client(make_app, key_file):
    return make_app(api_keys=(ALL_KEY,), api_key_file=key_file).test_client()


def routes(app):
    """(method, concrete path) for every route of the app, open ones excluded."""
    for rule in app.url_map.iter_rules():
        if rule.rule in OPEN:
            continue
        path = rule.rule.replace("<path:name>", "tiny")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, path


def test_every_route_but_the_page_and_health_needs_a_key(client):
    checked = 0
    for method, path in routes(client.application):
        r = client.open(path, method=method, json={})
        assert r.status_code == 401, (method, path, r.status_code)
        err = r.get_json()["error"]
        assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        checked += 1
    assert checked >= 6   # chat, models, model, load, unload, events
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer nope-nope-nope"},
                                     {"x-api-key": "nope-nope-nope"},
                                     {"Authorization": f"Basic {CHAT_KEY}"}])
def test_a_wrong_key_or_scheme_is_refused(client, headers):
    r = client.get("/v1/models", headers=headers)
    assert r.status_code == 401


@pytest.mark.parametrize("key, path, method, status", [
    (CHAT_KEY, "/v1/models", "GET", 200),
    (CHAT_KEY, "/admin/models/unload", "POST", 403),
    (ADMIN_KEY, "/v1/models", "GET", 403),
    (METRICS_KEY, "/v1/models", "GET", 403),
    (ALL_KEY, "/v1/models", "GET", 200),
])
def test_scopes(client, key, path, method, status):
    r = client.open(path, method=method, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == status
    if status == 403:
        err = r.get_json()["error"]
        assert err["type"] == "permission_error" and err["code"] == "insufficient_scope"
        assert "scope" in err["message"]


def test_chat_with_a_chat_key_through_either_header(client):
    body = {"messages": [user(("img", data_url()), "hi")], "max_tokens": 2}
    for headers in ({"Authorization": f"Bearer {CHAT_KEY}"}, {"x-api-key": CHAT_KEY}):
        r = client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200, r.get_json()


def test_keys_are_kept_hashed_and_never_logged(client, key_file, caplog):
    ring = load_keys((ALL_KEY,), key_file)
    dump = repr(vars(ring)) + repr(ring._keys)
    for secret in (CHAT_KEY, ADMIN_KEY, METRICS_KEY, ALL_KEY):
        assert secret not in dump
    with caplog.at_level(logging.INFO, logger="vlserve.access"):
        client.get("/v1/models", headers={"Authorization": f"Bearer {CHAT_KEY}"})
        client.get("/v1/models", headers={"Authorization": "Bearer wrong-key-xyz"})
    assert "key=frontdesk" in caplog.text
    assert CHAT_KEY not in caplog.text and "wrong-key-xyz" not in caplog.text


def test_no_keys_configured_means_open(make_app):
    assert make_app().test_client().get("/v1/models").status_code == 200


@pytest.mark.parametrize("text, message", [
    ("justaname\n", "expected NAME:KEY"),
    ("a:short\n", "shorter than 8"),
    ("a:longenough:chat,root\n", r"unknown scopes \['root'\]"),
    ("a:longenough1\na:longenough2\n", "used twice"),
])
def test_bad_key_files_name_the_line_not_the_key(tmp_path, text, message):
    path = tmp_path / "keys"
    path.write_text("# comment\n" + text)
    with pytest.raises(KeyFileError, match=message) as info:
        parse_key_file(path)
    assert f"{path}:" in str(info.value) and "longenough" not in str(info.value)


def test_serve_refuses_a_bad_key_file_before_loading(tmp_path):
    path = tmp_path / "keys"
    path.write_text("ops:secret-secret:root\n")
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "serve", "--demo",
                        "--api-key-file", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "unknown scopes" in r.stderr and "secret-secret" not in r.stderr


def test_openai_client_with_a_key_against_the_live_server(tiny_model, tmp_path):
    from openai import AuthenticationError, OpenAI
    server = LiveServer(tiny_model, "--no-warmup", "--api-key", ALL_KEY,
                        log_path=tmp_path / "server.log")
    try:
        good = OpenAI(base_url=server.url + "/v1", api_key=ALL_KEY)
        out = good.chat.completions.create(model="tiny", max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=server.url + "/v1", api_key="wrong-key").models.list()
        assert ALL_KEY not in server.log()
    finally:
        server.stop()


def test_binding_to_the_lan_without_a_key_warns_loudly(caplog, monkeypatch):
    from vlserve.server import run as serving
    from vlserve.config import Settings
    monkeypatch.setattr(serving, "_Gunicorn", lambda s: type("G", (), {"run": lambda self: None})())
    with caplog.at_level(logging.WARNING, logger="vlserve"):
        serving.run(Settings(host="0.0.0.0"))
    assert "WITHOUT an API key" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlserve"):
        serving.run(Settings(host="0.0.0.0", api_keys=("k" * 12,)))
    assert "WITHOUT" not in caplog.text


def test_the_api_document_is_public(client):
    assert client.get("/openapi.json").status_code == 200


def test_switching_the_model_by_naming_it_needs_the_admin_scope(tiny_model, tmp_path):
    """A chat key that names another model on disk would switch it for everyone: 403 naming
    the scope, and nothing changes; naming the loaded model (or a name not on disk) is fine;
    a key with the admin scope switches."""
    import requests

    from conftest import make_model
    make_model(tmp_path / "models" / "small", "small")
    keys = tmp_path / "keys.txt"
    keys.write_text(f"frontdesk:{CHAT_KEY}\nops:{ADMIN_KEY}:chat,admin\n")
    server = LiveServer(tiny_model, "--no-warmup", "--api-key-file", str(keys),
                        log_path=tmp_path / "server.log")

    def ask(key, model):
        return requests.post(server.url + "/v1/chat/completions", timeout=60,
                             headers={"Authorization": f"Bearer {key}"},
                             json={"model": model, "max_tokens": 2, "messages": [user("hi")]})

    def loaded():
        return requests.get(server.url + "/health", timeout=5).json()["model"]
    try:
        refused = ask(CHAT_KEY, "qwen3vl-small-f32")
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["code"] == "model_switch_forbidden" and error["param"] == "model"
        assert "'admin' scope" in error["message"] and CHAT_KEY not in error["message"]
        assert loaded() == "tiny"
        assert ask(CHAT_KEY, "tiny").status_code == 200
        assert ask(CHAT_KEY, "gpt-4o").status_code == 200    # not on disk: the loaded model
        switched = ask(ADMIN_KEY, "qwen3vl-small-f32")
        assert switched.status_code == 200 and switched.json()["model"] == "qwen3vl-small-f32"
        assert loaded() == "qwen3vl-small-f32"
        assert ask(CHAT_KEY, "qwen3vl-small-f32").status_code == 200   # now the loaded one
        assert ask(CHAT_KEY, "tiny").status_code == 403
    finally:
        server.stop()
