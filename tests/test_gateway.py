"""vlserve as a gateway, against real upstreams on loopback: two vlserve replicas of one
model, llama-cpp-python's own server (`python -m llama_cpp.server --chat_format mtmd`), all on
the tiny model. Nothing about the upstreams is faked: their logs, audit files and /health
say what they received and did."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import openai
import pytest
import requests
from PIL import Image

from conftest import LiveServer, data_url, user
from peers import LlamaCppServer

LONG = 12000      # tokens: a generation that outlasts every wait in these tests
DEAD = ("connection refused or host unreachable", "connection lost", "closed the connection")
CHAT_KEY, OPS_KEY = "chat-key-5b1e", "ops-key-77c2"


def read_audit(path) -> list[dict]:
    """The chat requests of an audit file (an upstream's also has the gateway's checks)."""
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [x for x in lines if x["route"] == "/v1/chat/completions"]


def health(server) -> dict:
    return requests.get(server.url + "/health", timeout=5).json()


def chat(server, body: dict, key: str | None = None, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(server.url + "/v1/chat/completions", json=body, headers=headers,
                         timeout=kw.pop("timeout", 60), **kw)


def content_chunks(response: requests.Response):
    """The stream's events: parsed chunks (and error objects) until [DONE]."""
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            if line == b"data: [DONE]":
                return
            yield json.loads(line[6:])


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def rotated_photo(width=3000, height=2000) -> str:
    """A JPEG stored landscape with EXIF orientation 6 (shown portrait, 2000x3000)."""
    img = Image.new("RGB", (width, height), (30, 120, 200))
    img.paste((250, 200, 20), (0, 0, width // 3, height // 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80, exif=exif)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# ---- the peers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peers(tiny_model, tmp_path_factory):
    """Replicas a and b (vlserve, model "tiny-r", with audit logs) and lc (llama_cpp.server,
    model "tiny-lc")."""
    started = {}
    try:
        for name in ("a", "b"):
            d = tmp_path_factory.mktemp(f"replica-{name}")
            started[name] = LiveServer(tiny_model, "--audit-log", str(d / "audit.jsonl"),
                                       log_path=d / "server.log", alias="tiny-r")
            started[name].audit = d / "audit.jsonl"
        started["lc"] = LlamaCppServer(tiny_model, alias="tiny-lc",
                                       log_path=tmp_path_factory.mktemp("lc") / "server.log")
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def gateway(peers, tmp_path_factory):
    """A pure gateway (no --model) in front of all three, with keys, audit log, metrics."""
    d = tmp_path_factory.mktemp("gateway")
    keys = d / "keys.txt"
    keys.write_text(f"alice:{CHAT_KEY}:chat\nops:{OPS_KEY}:admin,metrics\n")
    server = LiveServer(None, *[a for n in ("a", "b", "lc")
                                for a in ("--upstream", f"{n}={peers[n].url}/v1")],
                        "--api-key-file", str(keys), "--audit-log", str(d / "audit.jsonl"),
                        "--metrics", "--upstream-check-interval", "0.5",
                        log_path=d / "server.log")
    server.audit = d / "audit.jsonl"
    yield server
    server.stop()


# ---- what the gateway shows -------------------------------------------------------------------

def test_models_and_health_list_every_backend(gateway):
    r = requests.get(gateway.url + "/v1/models", headers={"x-api-key": CHAT_KEY}, timeout=5)
    cards = {c["id"]: c for c in r.json()["data"]}
    assert set(cards) == {"tiny-r", "tiny-lc"}   # no local model: none listed
    assert cards["tiny-r"]["backends"] == ["a", "b"] and cards["tiny-r"]["status"] == "available"
    assert [(x["backend"], x["kind"], x["up"]) for x in cards["tiny-r"]["replicas"]] == \
        [("a", "vlserve", True), ("b", "vlserve", True)]
    assert cards["tiny-lc"]["backend"] == "lc"
    assert cards["tiny-lc"]["replicas"][0]["kind"] == "llama.cpp"
    one = requests.get(gateway.url + "/v1/models/tiny-lc", headers={"x-api-key": CHAT_KEY},
                       timeout=5).json()
    assert one["id"] == "tiny-lc" and one["object"] == "model" and one["backend"] == "lc"

    r = requests.get(gateway.url + "/health", timeout=5)    # open without a key
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok" and body["backend"] == "gateway"
    assert {n: u["up"] for n, u in body["upstreams"].items()} == {"a": True, "b": True,
                                                                  "lc": True}
    assert "127.0.0.1" not in r.text   # upstream URLs are not shown on the open endpoint


def test_a_pure_gateway_has_nothing_to_load(gateway):
    r = requests.post(gateway.url + "/admin/models/load", json={"model": "tiny-r"},
                      headers={"x-api-key": OPS_KEY}, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_local_model"


# ---- streaming ------------------------------------------------------------------------------

def test_a_stream_arrives_while_the_upstream_is_still_generating(gateway, peers):
    """Pass-through, not buffering: the client holds its first tokens while the replica
    that serves it still works on the rest; leaving stops that replica."""
    r = chat(gateway, {"model": "tiny-r", "messages": [user("go on")], "max_tokens": LONG,
                       "stream": True}, CHAT_KEY, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    replica = peers[r.headers["X-Vlserve-Backend"]]
    before = health(replica)["served"]
    # Kept referenced, not left in a `for ... break`: a dropped iterator is closed, and
    # urllib3 then closes the connection, so the client would have left already.
    events = content_chunks(r)
    tokens = (e for e in events if e["choices"] and e["choices"][0]["delta"].get("content"))
    for _ in range(3):
        next(tokens)
    during = health(replica)
    assert during["busy"] is True, during    # three tokens here, thousands still to come there
    r.close()                        # the client leaves
    wait_for(lambda: not health(replica)["busy"], 5, "the replica to stop")
    served = health(replica)["served"]
    assert served["cancelled"] == before["cancelled"] + 1
    assert served["tokens_generated"] - before["tokens_generated"] < LONG / 3
    line = wait_for(lambda: [x for x in read_audit(gateway.audit) if x.get("cancelled")],
                    5, "the gateway's audit line")[-1]
    assert line["status"] == 499 and line["backend"] == replica_name(peers, replica)


def replica_name(peers, server) -> str:
    return next(n for n, s in peers.items() if s is server)


def test_openai_client_streams_from_llama_cpp_through_the_gateway(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=CHAT_KEY, max_retries=0)
    messages = [user(("img", data_url(320, 240, "JPEG")), "What is this?")]
    whole = client.chat.completions.create(model="tiny-lc", messages=messages, max_tokens=16,
                                           temperature=0)
    chunks = list(client.chat.completions.create(model="tiny-lc", messages=messages,
                                                 max_tokens=16, temperature=0, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    assert len(pieces) > 3      # token by token, not one block
    assert "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and
            c.choices[0].finish_reason] == ["length"]
    assert whole.model == "tiny-lc" and whole.usage.completion_tokens == 16


def test_health_checks_leave_a_running_llama_cpp_stream_alone(gateway):
    """llama_cpp.server cuts a running stream when any other request reaches it, the
    gateway's GET /v1/models (every 0.5 s here) included: it is not checked while busy."""
    started = time.monotonic()
    r = chat(gateway, {"model": "tiny-lc", "messages": [user("go on")], "max_tokens": 1500,
                       "temperature": 0, "stream": True}, CHAT_KEY, stream=True)
    events = list(content_chunks(r))
    assert time.monotonic() - started > 1.0            # outlived two check intervals
    assert not any("error" in e for e in events)
    assert [c["finish_reason"] for e in events for c in e["choices"]
            if c["finish_reason"]] == ["length"]
    assert health(gateway)["upstreams"]["lc"]["up"] is True


def test_an_answer_cut_short_upstream_is_an_error_not_a_short_answer(gateway, peers):
    """llama_cpp.server ends a stream with [DONE] and no finish reason when another request
    arrives: the client hears it was cut; the upstream is not taken for dead."""
    r = chat(gateway, {"model": "tiny-lc", "messages": [user("go on")], "max_tokens": 1500,
                       "temperature": 0, "stream": True}, CHAT_KEY, stream=True)
    events = content_chunks(r)
    assert next(e for e in events if e["choices"] and e["choices"][0]["delta"].get("content"))
    other = threading.Thread(target=requests.post, args=(
        peers["lc"].url + "/v1/chat/completions",),
        kwargs={"json": {"messages": [user("me too")], "max_tokens": 2}, "timeout": 60})
    other.start()            # straight to llama_cpp.server, not through the gateway
    rest = list(events)      # up to [DONE]
    other.join()
    assert rest[-1]["error"]["code"] == "upstream_incomplete"
    assert "--interrupt_requests false" in rest[-1]["error"]["message"]
    assert not any(c.get("finish_reason") for e in rest[:-1] for c in e["choices"])
    assert health(gateway)["upstreams"]["lc"]["up"] is True
    wait_for(lambda: [x for x in read_audit(gateway.audit) if x["backend"] == "lc"
                      and x["status"] == 502 and x["stream"]], 5, "the cut stream's audit line")
    again = chat(gateway, {"model": "tiny-lc", "messages": [user("hi")], "max_tokens": 2},
                 CHAT_KEY)
    assert again.status_code == 200 and again.headers["X-Vlserve-Backend"] == "lc"


def test_usage_is_passed_only_when_asked(gateway):
    """vlserve asks every upstream for usage (for the audit log and metrics); a client that
    did not ask does not get the extra chunk."""
    body = {"model": "tiny-r", "messages": [user("hi")], "max_tokens": 4, "stream": True}
    before = len(read_audit(gateway.audit))
    plain = list(content_chunks(chat(gateway, body, CHAT_KEY, stream=True)))
    asked = list(content_chunks(chat(gateway, {**body, "stream_options": {
        "include_usage": True}}, CHAT_KEY, stream=True)))
    assert all(c["choices"] for c in plain) and "usage" not in plain[-1]
    assert asked[-1]["choices"] == [] and asked[-1]["usage"]["completion_tokens"] == 4
    # a stream writes its audit line as it ends, after the client's last byte
    # (the previous test's last stream may log after `before` was read: keep ours only)
    def ours():
        found = [x for x in read_audit(gateway.audit)[before:] if x["backend"] in ("a", "b")]
        return found if len(found) == 2 else None
    assert [(x["completion_tokens"], x["stream"]) for x in wait_for(ours, 5, "two lines")] \
        == [(4, True), (4, True)]


def test_response_format_reaches_the_upstream(gateway):
    """Checked here (a schema nobody can enforce is refused before any upstream), then passed
    on as the client wrote it: a vlserve replica holds the answer to the schema, and
    llama-cpp-python's server (which knows json_object only) to JSON."""
    schema = {"type": "object", "additionalProperties": False, "required": ["ok", "n"],
              "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}}}
    body = {"model": "tiny-r", "messages": [user("as JSON")], "max_tokens": 60,
            "temperature": 1, "response_format": {"type": "json_schema",
                                                   "json_schema": {"name": "x", "schema": schema}}}
    r = chat(gateway, body, CHAT_KEY)
    assert r.status_code == 200, r.text
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"ok", "n"} and answer["ok"] in (True, False) and answer["n"] in (1, 2, 3)
    lc = chat(gateway, {**body, "model": "tiny-lc", "response_format": {"type": "json_object"}},
              CHAT_KEY)
    assert lc.status_code == 200, lc.text
    assert lc.json()["choices"][0]["message"]["content"].startswith("{")   # its grammar's
    refused = chat(gateway, {**body, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "strict": True, "schema": {"type": "object", "unevaluatedProperties": 1}}}},
        CHAT_KEY)
    assert refused.status_code == 400 and "unevaluatedProperties" in refused.text


def test_tools_and_tool_results_reach_the_upstream(gateway, peers):
    """tools, tool_choice, parallel_tool_calls, an assistant's calls and a tool's result (a
    screenshot, prepared here like any image) go to the upstream as the client wrote them:
    a vlserve replica holds its calls to the schema."""
    tool = {"type": "function", "function": {"name": "tap", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["x"],
        "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99}}}}}
    body = {"model": "tiny-r", "messages": [user("Tap OK.")], "tools": [tool],
            "tool_choice": {"type": "function", "function": {"name": "tap"}},
            "parallel_tool_calls": False, "max_tokens": 60, "temperature": 1}
    r = chat(gateway, body, CHAT_KEY)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "tap"
    assert 0 <= json.loads(call["function"]["arguments"])["x"] <= 99
    result = {"role": "tool", "tool_call_id": call["id"], "content": [
        {"type": "image_url", "image_url": {"url": data_url(64, 48)}}]}
    r = chat(gateway, {**body, "tool_choice": "none", "max_tokens": 4,
                       "messages": [*body["messages"], choice["message"], result]}, CHAT_KEY)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"]["image_tokens"] > 0
    theirs = read_audit(peers[r.headers["X-Vlserve-Backend"]].audit)[-1]
    assert theirs["images"] and theirs["status"] == 200


# ---- images ---------------------------------------------------------------------------------

def test_images_are_prepared_here_before_they_leave(gateway, peers):
    """The replica receives vlserve's resized, EXIF-rotated bitmap, bit for bit."""
    photo = rotated_photo()
    for detail, size in (("auto", [683, 1024]), ("low", [341, 512])):
        r = chat(gateway, {"model": "tiny-r", "max_tokens": 2, "messages": [{
            "role": "user", "content": [
                {"type": "image_url", "image_url": {"url": photo, "detail": detail}},
                {"type": "text", "text": "what is it?"}]}]}, CHAT_KEY)
        assert r.status_code == 200, r.text
        mine = [x for x in read_audit(gateway.audit) if x["images"]][-1]["images"][0]
        theirs = read_audit(peers[r.headers["X-Vlserve-Backend"]].audit)[-1]["images"][0]
        assert [mine["width"], mine["height"]] == size
        assert [theirs["width"], theirs["height"]] == size
        assert theirs["sha256"] == mine["sha256"]     # the same pixels
        assert theirs["bytes"] != mine["bytes"]       # re-encoded (PNG), not the client's JPEG


def test_remote_image_urls_stay_refused(gateway, peers):
    counts = {n: len(read_audit(peers[n].audit)) for n in ("a", "b")}
    r = chat(gateway, {"model": "tiny-r", "messages": [
        user(("img", "http://192.0.2.1/cam.jpg"), "what is it?")]}, CHAT_KEY)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert {n: len(read_audit(peers[n].audit)) for n in ("a", "b")} == counts  # never sent


# ---- errors ---------------------------------------------------------------------------------

def test_an_upstream_error_keeps_its_status_and_names_the_upstream(gateway):
    r = chat(gateway, {"model": "tiny-r", "max_tokens": 8,
                       "messages": [user("word " * 20000)]}, CHAT_KEY)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded"
    assert err["message"].startswith(f"upstream '{r.headers['X-Vlserve-Backend']}': ")
    assert err["param"] == "messages"

    r = chat(gateway, {"model": "tiny-lc", "max_tokens": 8,
                       "messages": [user("word " * 6000)]}, CHAT_KEY)   # > its n_ctx 4096
    err = r.json()["error"]
    assert r.status_code == 500 and err["message"].startswith("upstream 'lc': ")
    assert "exceeds n_ctx" in err["message"]


def test_invalid_requests_are_refused_before_any_upstream(gateway):
    before = len(read_audit(gateway.audit))
    r = chat(gateway, {"model": "tiny-lc", "max_tokens": -1, "messages": [user("x")]},
             CHAT_KEY)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    line = read_audit(gateway.audit)[before]
    assert line["status"] == 400 and line["backend"] is None   # it never reached one


# ---- keys, audit, metrics ---------------------------------------------------------------------

def test_keys_audit_and_metrics_cover_upstream_traffic(gateway):
    assert chat(gateway, {"model": "tiny-lc", "messages": [user("x")]}).status_code == 401
    assert chat(gateway, {"model": "tiny-lc", "messages": [user("x")]},
                "wrong").status_code == 401
    r = chat(gateway, {"model": "tiny-lc", "messages": [user("hello")], "max_tokens": 3},
             CHAT_KEY)
    assert r.status_code == 200 and r.headers["X-Vlserve-Backend"] == "lc"
    line = read_audit(gateway.audit)[-1]
    assert (line["key"], line["backend"], line["model"], line["status"]) == \
        ("alice", "lc", "tiny-lc", 200)
    assert line["completion_tokens"] == 3 and "hello" not in gateway.audit.read_text()

    assert requests.get(gateway.url + "/metrics", headers={"x-api-key": CHAT_KEY},
                        timeout=5).status_code == 403
    text = requests.get(gateway.url + "/metrics", headers={"x-api-key": OPS_KEY},
                        timeout=5).text
    assert 'vlserve_backend_requests_total{backend="lc",status="200"}' in text
    assert 'vlserve_upstream_up{backend="a"} 1.0' in text
    assert 'vlserve_generated_tokens_total{backend="lc",model="tiny-lc"}' in text


# ---- mixed: a local model plus upstreams --------------------------------------------------------

@pytest.fixture(scope="module")
def mixed(tiny_model, peers, tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    server = LiveServer(tiny_model, "--upstream", f"lc={peers['lc'].url}",
                        log_path=d / "server.log")
    yield server
    server.stop()


def test_mixed_routes_by_model(mixed):
    ids = {c["id"]: c["backend"] for c in
           requests.get(mixed.url + "/v1/models", timeout=5).json()["data"]}
    assert ids == {"tiny": "local", "tiny-lc": "lc"}
    for model, backend in (("tiny", "local"), ("tiny-lc", "lc"), ("gpt-4o", "local"),
                           (None, "local")):
        body = {"messages": [user("hi")], "max_tokens": 2, **({"model": model} if model else {})}
        r = chat(mixed, body)
        assert r.status_code == 200 and r.headers["X-Vlserve-Backend"] == backend, model
        assert r.json()["model"] == ("tiny-lc" if backend == "lc" else "tiny")
    r = requests.post(mixed.url + "/admin/models/load", json={"model": "tiny-lc"}, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_model"
    assert health(mixed)["upstreams"]["lc"]["up"] is True


def test_a_prefill_is_never_forwarded(gateway, peers, mixed):
    """An upstream has no prefill to run: declined with the reason, the replicas see
    nothing; a mixed server still prefills its local model."""
    before = [(health(peers[n])["served"], health(peers[n])["prefills"]) for n in ("a", "b")]
    draft = {"messages": [user(("img", data_url()), "how many")]}
    r = requests.post(gateway.url + "/v1/chat/prefill", json={**draft, "model": "tiny-r"},
                      headers={"Authorization": f"Bearer {CHAT_KEY}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] is False and r.json()["code"] == "upstream_model"
    assert [(health(peers[n])["served"], health(peers[n])["prefills"])
            for n in ("a", "b")] == before
    r = requests.post(mixed.url + "/v1/chat/prefill", json={**draft, "model": "tiny-lc"},
                      timeout=10)
    assert r.status_code == 200 and r.json()["code"] == "upstream_model"
    r = requests.post(mixed.url + "/v1/chat/prefill", json={**draft, "model": "tiny"},
                      timeout=10)
    assert r.status_code == 202 and r.json()["accepted"] is True


# ---- replicas failing -------------------------------------------------------------------------

@pytest.fixture
def pair(tiny_model, tmp_path):
    """Two fresh replicas of "tiny-f" (each test here kills some)."""
    servers = [LiveServer(tiny_model, log_path=tmp_path / f"{n}.log", alias="tiny-f")
               for n in ("a", "b")]
    yield dict(zip(("a", "b"), servers))
    for server in servers:
        if server.proc.poll() is None:
            server.stop()


def gateway_for(pair, tmp_path, interval: str) -> LiveServer:
    return LiveServer(None, "--upstream", f"a={pair['a'].url}", "--upstream",
                      f"b={pair['b'].url}", "--upstream-check-interval", interval,
                      "--metrics", log_path=tmp_path / "gateway.log")


def kill(server) -> None:
    """SIGKILL gunicorn's worker (where requests are served) and its master: a crash."""
    pid = server.proc.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        os.kill(int(child), signal.SIGKILL)
    server.proc.kill()
    server.proc.wait(10)


def test_a_dead_replica_costs_no_request_then_all_down_is_clear(pair, tmp_path):
    # checks every hour: only requests themselves can find out that b died
    gw = gateway_for(pair, tmp_path, "3600")
    try:
        used = {chat(gw, {"messages": [user("hi")], "max_tokens": 2}).headers[
            "X-Vlserve-Backend"] for _ in range(4)}
        assert used == {"a", "b"}       # idle replicas take turns
        kill(pair["b"])
        for i in range(6):
            r = chat(gw, {"messages": [user("hi")], "max_tokens": 2, "stream": i % 2 == 1})
            assert r.status_code == 200 and r.headers["X-Vlserve-Backend"] == "a"
        b = health(gw)["upstreams"]["b"]
        # refused (a new connection) or lost (a kept-alive one): the crash, in a few words
        assert b["up"] is False and b["error"] in DEAD
        metrics = requests.get(gw.url + "/metrics", timeout=5).text
        assert 'vlserve_upstream_failovers_total{backend="b"} 1.0' in metrics

        kill(pair["a"])
        r = chat(gw, {"messages": [user("hi")], "max_tokens": 2})
        err = r.json()["error"]
        assert r.status_code == 502 and err["code"] == "upstream_unreachable"
        assert "could be reached (a: connection" in err["message"]
        r = chat(gw, {"messages": [user("hi")], "max_tokens": 2})
        err = r.json()["error"]
        assert r.status_code == 503 and err["code"] == "upstream_unavailable"
        assert int(r.headers["Retry-After"]) > 0 and "'tiny-f' is down" in err["message"]
        assert requests.get(gw.url + "/health", timeout=5).status_code == 503
    finally:
        gw.stop()


def test_killing_a_replica_mid_test_fails_only_its_running_stream(pair, tmp_path):
    gw = gateway_for(pair, tmp_path, "0.3")
    try:
        stream = chat(gw, {"messages": [user("go on")], "max_tokens": LONG, "stream": True},
                      stream=True)
        victim = stream.headers["X-Vlserve-Backend"]
        events = content_chunks(stream)
        next(events), next(events)
        results, stop = [], threading.Event()

        def traffic():
            while not stop.is_set():
                r = chat(gw, {"messages": [user("hi")], "max_tokens": 4,
                              "stream": len(results) % 2 == 0})
                results.append((r.status_code, r.headers.get("X-Vlserve-Backend"),
                                r.text.count("data: ") if r.status_code == 200 else r.text))

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: len(results) >= 3, what="traffic through both replicas")
        kill(pair[victim])
        rest = list(events)       # the stream that was running there ends, with the reason
        wait_for(lambda: health(gw)["upstreams"][victim]["up"] is False,
                 what="the gateway's check to mark the victim down")
        seen_down = len(results)
        wait_for(lambda: len(results) >= max(seen_down + 6, 12), what="traffic after it")
        stop.set()
        for t in threads:
            t.join(30)
        assert rest[-1]["error"]["code"] == "upstream_disconnected"
        assert victim in rest[-1]["error"]["message"]
        assert len(results) > 10 and all(status == 200 for status, _, _ in results), results
        survivor = "b" if victim == "a" else "a"
        assert results[-1][1] == survivor
        assert health(gw)["upstreams"][victim]["up"] is False
    finally:
        gw.stop()


def test_an_upstream_that_comes_back_is_used_again(tiny_model, tmp_path):
    replica = LiveServer(tiny_model, log_path=tmp_path / "r1.log", alias="tiny-h")
    gw = LiveServer(None, "--upstream", f"h={replica.url}", "--upstream-check-interval",
                    "0.3", log_path=tmp_path / "gateway.log")
    try:
        port = replica.port
        replica.stop()
        r = wait_for(lambda: (x := requests.get(gw.url + "/health", timeout=5)).status_code
                     == 503 and [x], 10, "the gateway to see the upstream down")[0]
        assert r.json()["status"] == "unavailable" and r.json()["upstreams"]["h"]["up"] is False
        assert r.json()["upstreams"]["h"]["error"] in DEAD
        card = requests.get(gw.url + "/v1/models", timeout=5).json()["data"][0]
        assert card["id"] == "tiny-h" and card["status"] == "down"
        r = chat(gw, {"messages": [user("hi")], "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"

        replica = LiveServer(tiny_model, log_path=tmp_path / "r2.log", alias="tiny-h",
                             port=port)
        wait_for(lambda: health(gw)["status"] == "ok", 10, "the upstream to be back")
        r = chat(gw, {"messages": [user("hi")], "max_tokens": 2})
        assert r.status_code == 200 and r.headers["X-Vlserve-Backend"] == "h"
    finally:
        gw.stop()
        replica.stop()
