"""The browser guard (vlserve/origin.py): what a page on another site can make a visitor's
browser do to a server with no key. Cross-origin posts (text/plain, forms), `Origin: null`
and cross-site GETs are refused before anything happens; non-JSON bodies get 415; a foreign
Host (DNS rebinding) gets 403 on a loopback bind; the page on its own origin, the openai SDK
and curl-style clients are unaffected; --cors-origin and --allowed-host let named sites in.

Through Flask's test client on the real app and engine, then on a real server (gunicorn on
a real port) with raw sockets, requests, the openai SDK and, when one is installed, a real
Chromium attacked from another origin and through a re-pointed host name."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from browser import CHROMIUM_ARGS, chromium_path, launch, need_browser
from conftest import LiveServer, make_model, user, wait_for
from vlserve.ops import origin
from vlserve.config import Settings

CHAT, LOAD, UNLOAD = "/v1/chat/completions", "/admin/models/load", "/admin/models/unload"
SMALL = "qwen3vl-small-f32"   # the second model on disk: loading it would switch
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
EVIL, APP = "https://evil.example", "https://app.example"
ERROR_FIELDS = {"message", "type", "param", "code"}


def body_for(path: str) -> dict:
    return {LOAD: {"model": SMALL}, UNLOAD: {}, CHAT: BODY}[path]


def browser_posts(path: str) -> dict[str, dict]:
    """What a page on another site can send without a preflight, as test-client kwargs:
    a fetch with a text/plain body, an HTML form, a multipart form (a file upload)."""
    body = body_for(path)
    return {
        "text/plain": {"data": json.dumps(body), "content_type": "text/plain;charset=UTF-8"},
        # <form enctype="text/plain"><input name='{"model":"…","x":"' value='"}'>
        "form text/plain": {"data": json.dumps({**body, "x": "="}),
                            "content_type": "text/plain"},
        "urlencoded": {"data": {k: json.dumps(v) for k, v in body.items()} or {"a": "1"}},
        "multipart": {"data": {"model": SMALL, "f": (io.BytesIO(b"{}"), "f.json")},
                      "content_type": "multipart/form-data"},
    }


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)
                                     if hasattr(r, "get_data") else r.text)
    err = r.get_json()["error"] if hasattr(r, "get_json") else r.json()["error"]
    assert set(err) == ERROR_FIELDS and err["code"] == code, err
    assert err["type"] == ("invalid_request_error" if status == 415 else "permission_error")
    return err


def cors_headers(r) -> dict:
    return {k.lower(): v for k, v in r.headers.items()
            if k.lower().startswith("access-control-")}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A second model on disk, so that a load that got through would switch models."""
    root = tmp_path_factory.mktemp("origin-models")
    make_model(root / "small", "small")
    return str(root)


@pytest.fixture
def app(make_app, models_dir):
    return make_app(models_dir=models_dir)


def snapshot(app) -> tuple:
    worker = app.extensions["vlserve"]["worker"]
    return worker.model, worker.state, worker.engine, dict(worker.stats)


# ---- through the test client -------------------------------------------------------------

@pytest.mark.parametrize("path", [LOAD, UNLOAD, CHAT])
def test_cross_origin_browser_posts_are_refused_and_change_nothing(app, path):
    client, before = app.test_client(), snapshot(app)
    assert client.get("/v1/models").get_json()["data"][0]["loaded"]
    for kind in browser_posts(path):
        for who in (EVIL, "null", "http://localhost:3000", "http://127.0.0.1:7860"):
            r = client.post(path, headers={"Origin": who}, **browser_posts(path)[kind])
            err = assert_error(r, 403, "origin_not_allowed")
            assert cors_headers(r) == {}, kind
            assert ("opaque origin" in err["message"]) == (who == "null")
        # the same body from a client that is no browser: not JSON, so refused all the same
        assert_error(client.post(path, **browser_posts(path)[kind]), 415,
                     "unsupported_media_type")
    # a JSON body with a foreign Origin is a browser's (after a preflight nobody approved)
    assert_error(client.post(path, json=body_for(path), headers={"Origin": EVIL}), 403,
                 "origin_not_allowed")
    assert snapshot(app) == before


def test_form_bodies_that_are_valid_json_are_not_read(app):
    """What get_json(force=True) used to accept: a text/plain body holding JSON."""
    client = app.test_client()
    before = snapshot(app)
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  "application/jsonx", "text/json", "application/json-patch"):
        err = assert_error(client.post(LOAD, data=json.dumps({"model": SMALL}),
                                       content_type=ctype), 415, "unsupported_media_type")
        assert "application/json" in err["message"]
    err = assert_error(client.post(CHAT, data=json.dumps(BODY)), 415, "unsupported_media_type")
    assert "none was sent" in err["message"]
    assert snapshot(app) == before


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8",
                                   "Application/JSON;charset=UTF-8", "application/vnd.api+json"])
def test_json_bodies_are_read(client, ctype):
    r = client.post(CHAT, data=json.dumps(BODY), content_type=ctype)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["usage"]["completion_tokens"] == 2
    assert client.post(LOAD, data=b'{"model": "tiny"}', content_type=ctype).status_code == 200


def test_a_post_without_a_body_needs_no_content_type(client):
    # reaches the route, whose own check answers: the guard let it through
    r = client.post(LOAD)
    assert r.status_code == 400
    assert r.get_json()["error"]["message"] == "the request body must be a JSON object"
    assert_error(client.post(LOAD, content_type="text/plain"), 415, "unsupported_media_type")
    assert_error(client.post(LOAD, content_type="application/x-www-form-urlencoded"), 415,
                 "unsupported_media_type")   # an empty form


def test_the_page_on_its_own_origin_is_unaffected(make_app):
    client = make_app().test_client()
    for host, own in (("localhost", "http://localhost"),
                      ("localhost:7860", "http://localhost:7860"),
                      ("127.0.0.1:7860", "http://127.0.0.1:7860"),
                      ("[::1]:7860", "http://[::1]:7860"),
                      ("app.localhost:7860", "http://app.localhost:7860")):
        headers = {"Host": host, "Origin": own, "Sec-Fetch-Site": "same-origin"}
        page = client.get("/", headers={"Host": host, "Sec-Fetch-Site": "none"})
        assert page.status_code == 200 and page.mimetype == "text/html", host
        assert client.get("/static/js/api.js", headers={"Host": host}).status_code == 200
        r = client.post(CHAT, json=BODY, headers=headers)
        assert r.status_code == 200 and cors_headers(r) == {}, (host, r.get_json())
        for path in ("/v1/models", "/admin/models/events", "/health"):
            r = client.get(path, headers=headers)
            assert r.status_code == 200, (host, path)
            r.close()
    # another port of the same machine is another origin
    r = client.post(CHAT, json=BODY, headers={"Host": "127.0.0.1:7860",
                                              "Origin": "http://127.0.0.1:8080"})
    assert_error(r, 403, "origin_not_allowed")
    r = client.post(CHAT, json=BODY, headers={"Host": "127.0.0.1:7860",
                                              "Origin": "http://localhost:7860"})
    assert_error(r, 403, "origin_not_allowed")


def test_cross_site_gets_are_refused_but_health_and_the_page_stay_open(make_app):
    client = make_app(metrics=True).test_client()
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"}):
        for path in ("/v1/models", "/v1/models/tiny", "/admin/models/events", "/metrics"):
            assert_error(client.get(path, headers=headers), 403, "origin_not_allowed")
        health = client.get("/health", headers=headers)
        assert health.status_code == 200 and cors_headers(health) == {}
        assert client.get("/", headers=headers).status_code == 200
        assert client.get("/openapi.json", headers=headers).status_code == 200
    # what a user typing the address (none) or the page itself (same-origin) sends
    for site in ("none", "same-origin"):
        assert client.get("/v1/models", headers={"Sec-Fetch-Site": site}).status_code == 200


def test_refused_before_keys_and_limits_and_logged_without_the_origin(make_app, caplog):
    key = "origin-test-key-1"
    app = make_app(api_keys=(key,), rate_limit=1)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}
    with caplog.at_level(logging.INFO, logger="vlserve.access"):
        for _ in range(3):
            # no key and a foreign origin: the origin answers, not the key check
            assert_error(client.post(CHAT, json=BODY, headers={"Origin": EVIL}), 403,
                         "origin_not_allowed")
            assert_error(client.post(CHAT, json=BODY, headers={**auth, "Origin": EVIL}), 403,
                         "origin_not_allowed")
            assert_error(client.post(CHAT, data="x", content_type="text/plain", headers=auth),
                         415, "unsupported_media_type")
            assert_error(client.get("/health", headers={"Host": "evil.example"}), 403,
                         "host_not_allowed")
    # the rate limit (1 a minute) was not spent by any of them
    assert client.post(CHAT, json=BODY, headers=auth).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "vlserve.access"]
    assert any("refused=origin_not_allowed" in line for line in lines)
    assert any("refused=host_not_allowed" in line for line in lines)
    assert any("refused=unsupported_media_type" in line for line in lines)
    assert not any("evil" in line for line in lines)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7860", "192.168.1.20:7860",
                                  "localhost.evil.example", "127.0.0.1.evil.example", "[::1",
                                  "a b", "user@localhost"])
def test_a_foreign_host_is_refused_on_a_loopback_bind(app, host):
    client, before = app.test_client(), snapshot(app)
    for r in (client.get("/", headers={"Host": host}),
              client.get("/health", headers={"Host": host}),
              client.get("/v1/models", headers={"Host": host}),
              client.post(LOAD, json={"model": SMALL}, headers={"Host": host}),
              client.post(UNLOAD, headers={"Host": host}),
              # what a rebinding page sends: its own (same-)origin
              client.post(CHAT, json=BODY, headers={"Host": host,
                                                    "Origin": f"http://{host}"})):
        err = assert_error(r, 403, "host_not_allowed")
        assert "--allowed-host" in err["message"] and "loopback" in err["message"]
    assert snapshot(app) == before


def test_loopback_names_are_answered_on_any_port(make_app):
    client = make_app().test_client()
    for host in ("localhost", "LOCALHOST:1", "localhost.", "chat.localhost:7860",
                 "127.0.0.1", "127.0.0.1:65535", "127.1.2.3:80", "[::1]", "[::1]:7860",
                 "[::ffff:127.0.0.1]:7860"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host


def test_allowed_host_admits_names(make_app):
    client = make_app(allowed_hosts=("mybox.lan", "*.corp.example")).test_client()
    for host in ("mybox.lan", "MyBox.lan:7860", "gpu.corp.example:443", "localhost:7860"):
        r = client.post(CHAT, json=BODY, headers={"Host": host, "Origin": f"http://{host}"})
        assert r.status_code == 200, (host, r.get_json())
    for host in ("corp.example", "mybox.lan.evil.example", "192.168.1.20"):
        assert_error(client.get("/v1/models", headers={"Host": host}), 403, "host_not_allowed")
    open_ = make_app(allowed_hosts=("*",)).test_client()
    assert open_.get("/v1/models", headers={"Host": "anything.example"}).status_code == 200


def test_a_lan_bind_answers_any_host_unless_names_are_given(make_app):
    client = make_app(host="0.0.0.0").test_client()
    for host in ("vlserve.lan:7860", "192.168.1.20:7860", "evil.example"):
        assert client.get("/v1/models", headers={"Host": host}).status_code == 200
    # the origin check still holds there: a foreign page is refused whatever the Host
    assert_error(client.post(CHAT, json=BODY, headers={"Host": "vlserve.lan",
                                                       "Origin": EVIL}),
                 403, "origin_not_allowed")
    named = make_app(host="0.0.0.0", allowed_hosts=("vlserve.lan",)).test_client()
    for host in ("vlserve.lan:7860", "192.168.1.20:7860", "[fd00::5]:7860", "localhost"):
        assert named.get("/v1/models", headers={"Host": host}).status_code == 200, host
    err = assert_error(named.get("/v1/models", headers={"Host": "evil.example"}), 403,
                       "host_not_allowed")
    assert "loopback" not in err["message"]


def test_cors_origin_lets_that_site_in_and_no_other(make_app):
    client = make_app(cors_origins=(APP,)).test_client()
    pre = client.options(CHAT, headers={"Origin": APP, "Access-Control-Request-Method": "POST",
                                        "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == APP
    r = client.post(CHAT, json=BODY, headers={"Origin": APP, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == APP
    # even the allowed site cannot post a form: its page must send JSON (with a preflight)
    r = client.post(LOAD, data="{}", content_type="text/plain", headers={"Origin": APP})
    assert_error(r, 415, "unsupported_media_type")
    assert r.headers["Access-Control-Allow-Origin"] == APP   # …and may read why
    for other in (EVIL, "http://app.example", "null"):
        r = client.post(CHAT, json=BODY, headers={"Origin": other})
        assert_error(r, 403, "origin_not_allowed")
        assert "access-control-allow-origin" not in cors_headers(r)
        pre = client.options(CHAT, headers={"Origin": other,
                                            "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 403


def test_null_is_refused_even_with_star(make_app):
    client = make_app(cors_origins=("*",)).test_client()
    assert client.post(CHAT, json=BODY, headers={"Origin": EVIL}).status_code == 200
    assert_error(client.post(CHAT, json=BODY, headers={"Origin": "null"}), 403,
                 "origin_not_allowed")
    pre = client.options(CHAT, headers={"Origin": "null", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403


def test_host_policy_and_own_origin_units():
    assert origin.is_loopback_bind("127.0.0.1") and origin.is_loopback_bind("::1")
    assert origin.is_loopback_bind("localhost") and origin.is_loopback_bind("127.0.0.2")
    assert not origin.is_loopback_bind("0.0.0.0") and not origin.is_loopback_bind("::")
    assert not origin.is_loopback_bind("192.168.1.20")
    assert origin.own_origin("https://chat.example", "chat.example")       # proxy on 443
    assert origin.own_origin("https://chat.example", "chat.example:443")
    assert origin.own_origin("http://[::1]:7860", "[::1]:7860")
    assert not origin.own_origin("http://chat.example", "chat.example:443")
    assert not origin.own_origin("http://localhost:7860/", "localhost:7860")   # not an origin
    assert not origin.own_origin("chrome-extension://abc", "abc")
    assert not origin.own_origin("http://localhost:7860", None)
    assert not origin.HostPolicy("127.0.0.1", ("*",)).active
    for bad in ("mybox.lan:7860", "http://mybox.lan", "a*b.lan", "x y", "*.1.2.3.4"):
        with pytest.raises(ValueError):
            origin.HostPolicy("127.0.0.1", (bad,))


def test_allowed_host_option_and_its_environment_variable(monkeypatch):
    from click.testing import CliRunner
    from vlserve import cli
    seen = []
    monkeypatch.setattr("vlserve.server.run.run", seen.append)
    monkeypatch.setattr(cli, "_chosen_model", lambda opts: {"model": "m.gguf",
                                                             "mmproj": "p.gguf"})
    result = CliRunner().invoke(cli.main, ["serve", "--allowed-host", "mybox.lan",
                                           "--allowed-host", "*.corp.example"])
    assert result.exit_code == 0, result.output
    assert seen[-1].allowed_hosts == ("mybox.lan", "*.corp.example")
    result = CliRunner().invoke(cli.main, ["serve"],
                                env={"VLSERVE_ALLOWED_HOST": "a.lan b.lan"})
    assert result.exit_code == 0 and seen[-1].allowed_hosts == ("a.lan", "b.lan")
    result = CliRunner().invoke(cli.main, ["serve", "--allowed-host", "mybox.lan:7860"])
    assert result.exit_code == 2 and "--allowed-host" in result.output
    help_text = CliRunner().invoke(cli.main, ["serve", "--help"]).output
    assert "--allowed-host" in help_text and "VLSERVE_ALLOWED_HOST" in help_text
    assert Settings().allowed_hosts == ()


# ---- a real server -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("origin-live")
    make_model(root / "models" / "small", "small")   # LiveServer's --models-dir
    server = LiveServer(tiny_model, "--no-warmup", "--cors-origin", APP,
                        "--allowed-host", "mybox.lan", log_path=root / "server.log")
    yield server
    server.stop()


def raw(server, request: bytes) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 exchange over a plain socket: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def raw_post(server, path: str, body: bytes, ctype: str | None, host: str | None = None,
             origin_: str | None = None) -> tuple[int, dict, bytes]:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{server.port}'}",
             f"Content-Length: {len(body)}", "Connection: close"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    if origin_:
        lines += [f"Origin: {origin_}", "Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: no-cors"]
    return raw(server, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def loaded(server) -> tuple[str, str, list[str]]:
    """(/health's status, its model, the models /v1/models lists as loaded)."""
    health = requests.get(server.url + "/health", timeout=10).json()
    cards = requests.get(server.url + "/v1/models", timeout=10).json()["data"]
    on = [c["id"] for c in cards if c["loaded"]]
    return health["status"], health["model"], on


def test_live_cross_origin_posts_and_forms_change_nothing(live):
    before = loaded(live)
    assert before == ("ok", "tiny", ["tiny"])
    form = b"model=" + SMALL.encode()
    boundary = "----vlserve"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
                 f"{SMALL}\r\n--{boundary}--\r\n").encode()
    for path, body in ((LOAD, json.dumps({"model": SMALL}).encode()), (UNLOAD, b""),
                       (CHAT, json.dumps({"messages": [user("hi")], "max_tokens": 2}).encode())):
        for ctype, payload in (("text/plain;charset=UTF-8", body),
                               ("application/x-www-form-urlencoded", form),
                               (f"multipart/form-data; boundary={boundary}", multipart)):
            status, headers, answer = raw_post(live, path, payload, ctype, origin_=EVIL)
            assert status == 403, (path, ctype, answer)
            assert json.loads(answer)["error"]["code"] == "origin_not_allowed"
            assert "access-control-allow-origin" not in headers
            status, _, answer = raw_post(live, path, payload, ctype, origin_="null")
            assert status == 403, (path, ctype, answer)
            status, _, answer = raw_post(live, path, payload, ctype)   # no browser: 415
            assert status == 415 and json.loads(answer)["error"]["code"] == \
                "unsupported_media_type", (path, ctype, answer)
    assert loaded(live) == before


def test_live_foreign_host_is_refused(live):
    for host in (f"evil.example:{live.port}", "evil.example", "192.168.1.20"):
        status, _, body = raw(live, (f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\n"
                                     "Connection: close\r\n\r\n").encode())
        assert status == 403 and json.loads(body)["error"]["code"] == "host_not_allowed"
        r = requests.post(live.url + LOAD, json={"model": SMALL}, timeout=10,
                          headers={"Host": host, "Origin": f"http://{host}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
        r = requests.get(live.url + "/", headers={"Host": host}, timeout=10)
        assert r.status_code == 403
    assert loaded(live) == ("ok", "tiny", ["tiny"])
    # --allowed-host mybox.lan, and the loopback names, on any port
    for host in ("mybox.lan", f"mybox.lan:{live.port}", f"localhost:{live.port}",
                 f"[::1]:{live.port}", f"127.0.0.1:{live.port}"):
        status, _, body = raw(live, (f"GET / HTTP/1.1\r\nHost: {host}\r\n"
                                     "Connection: close\r\n\r\n").encode())
        assert status == 200 and b"<html" in body.lower(), host
        r = requests.post(live.url + CHAT, timeout=30,
                          json={"messages": [user("hi")], "max_tokens": 2},
                          headers={"Host": host, "Origin": f"http://{host}"})
        assert r.status_code == 200, (host, r.text)


def test_live_sdk_curl_and_cors_origin(live):
    from openai import OpenAI
    sdk = OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    answer = sdk.chat.completions.create(model="tiny", max_tokens=3,
                                         messages=[user("hello")])
    assert answer.usage.completion_tokens == 3
    assert [m.id for m in sdk.models.list()].count("tiny") == 1
    # curl -X POST … -H 'Content-Type: application/json' -d '{…}'
    r = requests.post(live.url + LOAD, json={"model": "tiny"}, timeout=30)
    assert r.status_code == 200 and r.json()["model"] == "tiny"
    # --cors-origin https://app.example: its preflight, then its request, readable
    pre = requests.options(live.url + CHAT, timeout=10, headers={
        "Origin": APP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == APP
    r = requests.post(live.url + CHAT, json={"messages": [user("hi")], "max_tokens": 2},
                      headers={"Origin": APP, "Sec-Fetch-Site": "cross-site"}, timeout=30)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == APP
    r = requests.post(live.url + CHAT, json={"messages": [user("hi")], "max_tokens": 2},
                      headers={"Origin": "https://other.example"}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in r.headers
    assert loaded(live) == ("ok", "tiny", ["tiny"])


# ---- a real browser ------------------------------------------------------------------------

class _AttackerPage(BaseHTTPRequestHandler):
    """Serves one page on another origin: it tries what a hostile site would."""
    html = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.html)))
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    need_browser()   # CI fails without one; elsewhere the checks above ran without it
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def attacker():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_browser_attacks_from_another_origin_change_nothing(live, browser, attacker):
    """A real Chromium on a page of another origin: no-cors fetches, a text/plain form and
    a urlencoded form aimed at load/unload/chat, and a read of /v1/models."""
    target = live.url
    _AttackerPage.html = f"""<!doctype html><html><body>
<form id=f1 method=post enctype=text/plain action="{target}{LOAD}" target=sink1>
<input name='{{"model":"{SMALL}","x":"' value='"}}'></form>
<form id=f2 method=post action="{target}{UNLOAD}" target=sink2><input name=a value=1></form>
<iframe name=sink1></iframe><iframe name=sink2></iframe></body></html>""".encode()
    page = browser.new_page()
    seen = len(live.log())
    try:
        page.goto(f"http://localhost:{attacker.server_port}/")
        results = page.evaluate("""async ([target, small]) => {
            const out = {};
            const send = (path, body, type) => fetch(target + path, {
                method: "POST", mode: "no-cors", body,
                headers: type ? {"Content-Type": type} : {}}).then(r => r.type, e => "error");
            out.load = await send("/admin/models/load", JSON.stringify({model: small}),
                                  "text/plain");
            out.unload = await send("/admin/models/unload", new Blob(["{}"]), null);
            out.chat = await send("/v1/chat/completions",
                JSON.stringify({messages: [{role: "user", content: "hi"}], max_tokens: 2}),
                "text/plain");
            try { await (await fetch(target + "/v1/models")).json(); out.read = "read"; }
            catch (e) { out.read = "blocked"; }
            return out;
        }""", [target, SMALL])
        assert results["read"] == "blocked", results
        # each form posts into its own frame: one navigation never cancels the other's
        page.evaluate("document.getElementById('f1').submit()")
        page.evaluate("document.getElementById('f2').submit()")

        def refused():   # what the browser sent, each refused for its origin
            return [line.split(" vlserve.access: ")[1].split()[:3]
                    for line in live.log()[seen:].splitlines()
                    if " 403 " in line and "refused=origin_not_allowed" in line]
        wait_for(lambda: len(refused()) >= 6, "the six refusals in the access log")
    finally:
        page.close()
    assert loaded(live) == ("ok", "tiny", ["tiny"])
    got, log = refused(), live.log()[seen:]
    assert got.count(["POST", LOAD, "403"]) == 2, log        # the fetch and the form
    assert got.count(["POST", UNLOAD, "403"]) == 2, log
    assert got.count(["POST", CHAT, "403"]) == 1, log
    assert ["GET", "/v1/models", "403"] in got, log


def test_browser_dns_rebinding_is_refused_and_the_page_works_on_its_names(live, browser):
    """evil.example re-pointed at 127.0.0.1 (as a rebinding DNS server would): the page and
    the API answer 403 there; on localhost, 127.0.0.1 and mybox.lan the page loads and its
    own same-origin fetches (POSTs carry an Origin) answer."""
    context = browser.new_context()
    page = context.new_page()
    rebound = browser.browser_type.launch(
        executable_path=chromium_path(), headless=True, args=[
            *CHROMIUM_ARGS,
            "--host-resolver-rules=MAP evil.example 127.0.0.1, MAP mybox.lan 127.0.0.1"])
    try:
        rpage = rebound.new_page()
        response = rpage.goto(f"http://evil.example:{live.port}/")
        assert response.status == 403 and "host_not_allowed" in rpage.content()
        status = rpage.evaluate("""async () => (await fetch("/admin/models/unload",
            {method: "POST"})).status""")
        assert status == 403
        response = rpage.goto(f"http://mybox.lan:{live.port}/")
        assert response.status == 200
        assert rpage.evaluate(CHAT_FROM_PAGE) == 200
        for host in ("localhost", "127.0.0.1"):
            assert page.goto(f"http://{host}:{live.port}/").status == 200
            assert page.evaluate(CHAT_FROM_PAGE) == 200, host
    finally:
        rebound.close()
        context.close()
    assert loaded(live) == ("ok", "tiny", ["tiny"])


CHAT_FROM_PAGE = """async () => (await fetch("/v1/chat/completions", {method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({messages: [{role: "user", content: "hi"}], max_tokens: 2})})).status"""


def test_live_unload_without_a_body_still_works(live):
    """curl -X POST …/admin/models/unload: no body, no Content-Type. Last: it unloads."""
    r = requests.post(live.url + UNLOAD, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "unloaded"
    r = requests.post(live.url + LOAD, json={"model": "tiny"}, timeout=60)
    assert r.status_code == 200 and loaded(live) == ("ok", "tiny", ["tiny"])
