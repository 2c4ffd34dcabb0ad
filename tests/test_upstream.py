"""Unit tests of the gateway's parts: upstream flags, replica choice, health checks against
a tiny loopback server, parameter mapping, error shapes, SSE framing, the image encoding.
(The whole path against real upstreams is test_gateway.py.)"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import data_url
from vlserve.cli import main
from vlserve.gateway.forward import Gateway, SSEFrames, map_parameters, upstream_error
from vlserve.chat.images import ImageLimits, decode_data_url
from vlserve.chat.protocol import parse_chat_request
from vlserve.gateway.upstream import Pool, UpstreamSpec, UpstreamSpecError, parse_specs


# ---- --upstream / --upstream-key ------------------------------------------------------------

def test_specs_are_parsed_and_normalized():
    specs = parse_specs(["gpu1=http://10.0.0.5:8000/v1/", "b = https://h.example/llm/v1"],
                        ["gpu1=sk-1"])
    assert [(s.name, s.url, s.api_key) for s in specs] == [
        ("gpu1", "http://10.0.0.5:8000", "sk-1"), ("b", "https://h.example/llm", None)]
    assert "sk-1" not in repr(specs[0])     # keys stay out of logs and tracebacks


@pytest.mark.parametrize("upstreams, keys, says", [
    (["gpu1"], [], "NAME=URL"),
    (["local=http://x:1"], [], "not 'local'"),
    (["a b=http://x:1"], [], "NAME=URL"),
    (["a=ftp://x"], [], "not an http(s) URL"),
    (["a=http://user:pw@x:1"], [], "--upstream-key"),
    (["a=http://x:1/?q=1"], [], "no query"),
    (["a=http://x:1", "a=http://y:1"], [], "given twice"),
    (["a=http://x:1"], ["b=k"], "unknown upstream(s): b"),
    (["a=http://x:1"], ["a"], "NAME=KEY"),
])
def test_bad_specs_are_refused_by_name(upstreams, keys, says):
    with pytest.raises(UpstreamSpecError) as info:
        parse_specs(upstreams, keys)
    assert says in str(info.value)


def test_the_cli_refuses_a_bad_upstream_before_starting():
    result = CliRunner().invoke(main, ["serve", "--upstream", "nope"])
    assert result.exit_code == 2 and "NAME=URL" in result.output


# ---- choosing a replica -----------------------------------------------------------------------

def pool_of(*names, models=("m",)) -> Pool:
    pool = Pool([UpstreamSpec(n, f"http://{n}:1") for n in names])
    for upstream in pool.upstreams:
        upstream.up, upstream.cards = True, {m: {"id": m} for m in models}
    return pool


def test_least_in_flight_wins_and_ties_take_turns():
    pool = pool_of("a", "b", "c")
    first = [pool.choose("m") for _ in range(3)]
    assert sorted(u.name for u in first) == ["a", "b", "c"]   # one each while they fill up
    assert [u.in_flight for u in pool.upstreams] == [1, 1, 1]
    pool.release(first[1])
    assert pool.choose("m") is first[1]                         # the only one with room

    pool, picks = pool_of("a", "b", "c"), []
    for _ in range(6):                                          # idle: they take turns
        upstream = pool.choose("m")
        picks.append(upstream.name)
        pool.release(upstream)
    assert sorted(picks) == ["a", "a", "b", "b", "c", "c"]


def test_down_and_tried_replicas_are_skipped():
    pool = pool_of("a", "b")
    pool.upstreams[0].up = False
    assert pool.choose("m").name == "b"
    assert pool.choose("m", exclude=[pool.upstreams[1]]) is None
    assert pool.choose("other") is None
    assert pool.default_model() == "m"


def test_default_model_prefers_an_upstream_that_is_up():
    pool = pool_of("a", "b")
    pool.upstreams[0].cards = {"x": {"id": "x"}}
    pool.upstreams[1].cards = {"y": {"id": "y"}}
    pool.upstreams[0].up = False
    assert pool.default_model() == "y"
    assert pool.models() == {"x": [pool.upstreams[0]], "y": [pool.upstreams[1]]}


# ---- health checks against a real (tiny) HTTP server ------------------------------------------

class _Upstream(BaseHTTPRequestHandler):
    answer = (200, {"object": "list", "data": [{"id": "qwen", "owned_by": "vllm"}]})
    seen_auth: list = []

    def do_GET(self):
        type(self).seen_auth.append(self.headers.get("Authorization"))
        status, body = type(self).answer
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Upstream.seen_auth = []
    yield server
    server.shutdown()
    server.server_close()
    _Upstream.answer = (200, {"object": "list", "data": [{"id": "qwen", "owned_by": "vllm"}]})


def test_a_check_reads_models_kind_and_sends_the_key(fake_upstream):
    port = fake_upstream.server_address[1]
    pool = Pool(parse_specs([f"v=http://127.0.0.1:{port}/v1"], ["v=sk-up"]))
    upstream = pool.upstreams[0]
    assert pool.check(upstream) is True
    assert upstream.up and upstream.kind == "vllm" and list(upstream.cards) == ["qwen"]
    assert _Upstream.seen_auth == ["Bearer sk-up"]

    _Upstream.answer = (401, {"error": "no"})
    assert pool.check(upstream) is False
    assert not upstream.up and "--upstream-key v" in upstream.last_error
    assert list(upstream.cards) == ["qwen"]   # kept: its requests get "down", not "unknown"

    _Upstream.answer = (200, b"<html>not an API</html>")
    assert pool.check(upstream) is False and "model list" in upstream.last_error
    pool.stop()


def test_an_upstream_with_requests_in_flight_is_not_checked(fake_upstream):
    """Its answers are its check; a check could cut them (llama_cpp.server: test_gateway)."""
    port = fake_upstream.server_address[1]
    pool = Pool(parse_specs([f"v=http://127.0.0.1:{port}"], []), interval=0.05).start()
    upstream = pool.upstreams[0]
    assert pool.choose("qwen") is upstream
    checked = len(_Upstream.seen_auth)
    time.sleep(0.5)                                      # ten intervals
    assert len(_Upstream.seen_auth) == checked           # busy: left alone
    pool.release(upstream)
    wait = time.monotonic() + 5
    while len(_Upstream.seen_auth) == checked and time.monotonic() < wait:
        time.sleep(0.05)
    assert len(_Upstream.seen_auth) > checked            # idle: checked again
    pool.stop()


def test_a_check_of_nothing_listening_says_refused():
    from conftest import free_port
    pool = Pool([UpstreamSpec("gone", f"http://127.0.0.1:{free_port()}")])
    assert pool.check(pool.upstreams[0]) is False
    status = pool.upstreams[0].status()
    assert status == {"up": False, "kind": "openai", "models": [], "in_flight": 0,
                      "error": "connection refused or host unreachable"}
    pool.stop()


# ---- mapping vlserve's parameters ------------------------------------------------------------

def request(body: dict):
    return parse_chat_request(body, max_tokens_cap=10**6)


def test_vllm_gets_its_own_names_and_the_pixel_budget():
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(), "detail": "low"}},
        {"type": "text", "text": "hi"}]}], "repeat_penalty": 1.1, "reasoning_format": "none"}
    out = dict(body)
    notes = map_parameters(out, "vllm", request(body), ImageLimits())
    assert out["repetition_penalty"] == 1.1 and "repeat_penalty" not in out
    assert "reasoning_format" not in out
    assert out["mm_processor_kwargs"] == {"max_pixels": 512 * 512}
    assert len(notes) == 3 and any("repetition_penalty" in n for n in notes)


def test_vllm_budget_is_the_most_generous_detail_and_never_overrides_the_client():
    parts = [{"type": "image_url", "image_url": {"url": data_url(), "detail": d}}
             for d in ("low", "high")]
    body = {"messages": [{"role": "user", "content": parts}]}
    out = dict(body)
    map_parameters(out, "vllm", request(body), ImageLimits())
    assert out["mm_processor_kwargs"] == {"max_pixels": 1024 * 768}
    mine = {**body, "mm_processor_kwargs": {"max_pixels": 99}}
    out = dict(mine)
    map_parameters(out, "vllm", request(mine), ImageLimits())
    assert out["mm_processor_kwargs"] == {"max_pixels": 99}


def test_llama_cpp_and_vlserve_keep_the_body_and_say_what_cannot_be_sent():
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(), "detail": "low"}}]}],
        "repeat_penalty": 1.1, "reasoning_format": "none"}
    for kind, expect_note in (("llama.cpp", True), ("vlserve", False), ("openai", False)):
        out = dict(body)
        notes = map_parameters(out, kind, request(body), ImageLimits())
        assert out == body
        assert bool(notes) == expect_note and all("resize" in n for n in notes)


# ---- upstream error bodies -----------------------------------------------------------------

class _Named:
    name = "gpu1"


@pytest.mark.parametrize("status, body, message, code, kind", [
    (400, {"error": {"message": "too long", "type": "invalid_request_error",
                     "param": "messages", "code": "context_length_exceeded"}},
     "upstream 'gpu1': too long", "context_length_exceeded", "invalid_request_error"),
    (400, {"object": "error", "message": "bad", "type": "BadRequestError", "param": None,
           "code": 400}, "upstream 'gpu1': bad", "upstream_error", "BadRequestError"),
    (422, {"detail": [{"loc": ["body", "messages"]}]}, "upstream 'gpu1': [{'loc'",
     "upstream_error", "upstream_error"),
    (500, b"<html>oops</html>", "upstream 'gpu1': answered HTTP 500", "upstream_error",
     "upstream_error"),
    (503, {"error": "busy"}, "upstream 'gpu1': busy", "upstream_error", "upstream_error"),
])
def test_upstream_errors_keep_status_and_shape(status, body, message, code, kind):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    err = upstream_error(_Named(), status, content, retry_after=7 if status == 503 else None)
    assert err.status == status and err.message.startswith(message)
    assert err.code == code and err.type == kind
    assert set(err.to_dict()["error"]) == {"message", "type", "param", "code"}
    assert err.retry_after == (7 if status == 503 else None)


def test_an_upstream_refusing_our_key_is_a_bad_gateway_not_the_clients_401():
    err = upstream_error(_Named(), 401, b'{"error": {"message": "bad key"}}')
    assert err.status == 502 and err.code == "upstream_auth_failed"
    assert "--upstream-key gpu1" in err.message


# ---- framing ----------------------------------------------------------------------------------

def test_events_come_out_whole_however_the_bytes_are_cut():
    stream = (b'data: {"a": 1}\r\n\r\n: keep-alive\n\ndata: {"b":\n'
              b'data: 2}\n\ndata: [DONE]\n\n')
    expect = [b'data: {"a": 1}', b": keep-alive", b'data: {"b":\ndata: 2}', b"data: [DONE]"]
    for cut in range(1, len(stream)):
        frames = SSEFrames()
        got = frames.feed(stream[:cut]) + frames.feed(stream[cut:])
        assert got == expect and frames.rest == b"", cut
    frames = SSEFrames()
    assert [f for b in stream for f in frames.feed(bytes([b]))] == expect   # byte by byte


# ---- what leaves the box ------------------------------------------------------------------------

def test_images_leave_as_lossless_png_of_the_prepared_pixels():
    gateway = Gateway(Pool([]), request_timeout=5, limits=ImageLimits())
    image = decode_data_url(data_url(640, 480, "JPEG"), ImageLimits())
    url = gateway.data_url(image)
    assert url.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert png.size == (image.width, image.height) and png.tobytes() == image.rgb
    assert gateway.data_url(image) is url    # encoded once, then from the cache
    assert decode_data_url(url, ImageLimits()).sha256 == image.sha256   # what the upstream sees
    gateway.close()
