"""The real app (Flask test client) on the real engine: shapes, streaming, and bad input."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from conftest import N_CTX, data_url, user

CHAT = "/v1/chat/completions"


def sse_events(response) -> list:
    body = response.get_data(as_text=True)
    events = []
    for block in body.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_error(response, status: int, code_or_type: str | None = None, needle: str = ""):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    err = response.get_json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"]
    if code_or_type:
        assert code_or_type in (err["code"], err["type"]), err
    assert needle.lower() in err["message"].lower(), err["message"]
    return err


def test_non_streaming_completion_shape_and_usage(client):
    r = client.post(CHAT, json={"messages": [user("Hello")], "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200
    body = r.get_json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert body["timings"]["decode_tokens_per_s"] > 0


def test_image_raises_prompt_tokens_by_its_real_count(client, engine):
    text = client.post(CHAT, json={"messages": [user("What is this?")], "max_tokens": 1}).get_json()
    img = client.post(CHAT, json={"messages": [user(("img", data_url(128, 96)), "What is this?")],
                                  "max_tokens": 1}).get_json()
    added = img["usage"]["prompt_tokens"] - text["usage"]["prompt_tokens"]
    assert added > 10  # every image token counts, not just its position span


def test_streaming_chunks_role_first_then_content_finish_usage_done(client):
    r = client.post(CHAT, json={"messages": [user(("img", data_url()), "Describe")],
                                "max_tokens": 6, "temperature": 0, "stream": True,
                                "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    first, *middle, finish, usage = events[:-1]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert all("content" in e["choices"][0]["delta"] for e in middle) and middle
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6


def test_streamed_text_equals_non_streamed_text(client):
    body = {"messages": [user("Same?")], "max_tokens": 16, "temperature": 0}
    whole = client.post(CHAT, json=body).get_json()["choices"][0]["message"]["content"]
    events = sse_events(client.post(CHAT, json={**body, "stream": True}))
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert streamed == whole


def test_models_and_health(client):
    models = client.get("/v1/models").get_json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == "tiny" and card["capabilities"]["vision"] is True
    assert client.get("/v1/models/tiny").status_code == 200
    assert_error(client.get("/v1/models/other"), 404, "model_not_found")
    health = client.get("/health")
    assert health.status_code == 200
    h = health.get_json()
    assert h["status"] == "ok" and h["queue_depth"] == 0 and h["n_ctx"] == N_CTX
    client.post(CHAT, json={"messages": [user(("img", data_url(40, 40)), "hi")], "max_tokens": 2})
    cache = client.get("/health").get_json()["cache"]
    assert 0 < cache["kv_tokens"] <= N_CTX and cache["image_embeddings"] >= 1
    assert 0 < cache["image_embedding_bytes"] <= cache["image_embedding_capacity"]


def test_health_is_503_with_a_reason_until_the_model_is_ready(settings, engine):
    from vlserve.web.app import create_app
    app = create_app(settings, engine=engine, start=False)  # the worker has not loaded yet
    c = app.test_client()
    r = c.get("/health")
    assert r.status_code == 503 and r.get_json()["reason"] and r.headers["Retry-After"]
    assert_error(c.post(CHAT, json={"messages": [user("hi")]}), 503, "model_not_ready")


def test_missing_model_file_is_reported_by_health(settings):
    from vlserve.web.app import create_app
    app = create_app(settings.replace(model="/nonexistent/model.gguf"))
    worker = app.extensions["vlserve"]["worker"]
    assert not worker.wait_ready(10)
    r = app.test_client().get("/health")
    assert r.status_code == 503 and "/nonexistent/model.gguf" in r.get_json()["reason"]


# ---- bad input: each gets its clear error and the server keeps serving -------------------------

def png_bytes(w=32, h=32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def b64url(raw: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def bomb_png(side=60_000) -> bytes:
    """A valid PNG header declaring side x side pixels, with almost no data behind it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def img_msg(url):
    return {"messages": [user(("img", url), "what?")], "max_tokens": 2}


BAD = [
    ("missing messages", {}, 400, "messages"),
    ("empty messages", {"messages": []}, 400, "messages"),
    ("unknown role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ("content wrong type", {"messages": [{"role": "user", "content": {"a": 1}}]}, 400, "content"),
    ("n > 1", {"messages": [user("x")], "n": 3}, 400, "n=1"),
    ("max_tokens 0", {"messages": [user("x")], "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens absurd", {"messages": [user("x")], "max_tokens": 10**12}, 400, "max_tokens"),
    ("temperature", {"messages": [user("x")], "temperature": 5}, 400, "temperature"),
    ("top_p", {"messages": [user("x")], "top_p": -1}, 400, "top_p"),
    ("invalid base64", img_msg("data:image/png;base64,@@not base64@@"), 400, "base64"),
    ("not an image", img_msg(b64url(b"hello, I am text")), 400, "image"),
    ("truncated png", img_msg(b64url(png_bytes(256, 256)[:200])), 400, "image"),
    ("decompression bomb", img_msg(b64url(bomb_png())), 400, "pixels"),
    ("http url", img_msg("http://example.com/cat.png"), 400, "offline"),
    ("https url", img_msg("https://example.com/cat.png"), 400, "offline"),
    ("file url", img_msg("file:///etc/passwd"), 400, "file:"),
    ("too many images", {"messages": [user(*[("img", data_url(8, 8))] * 33, "x")]}, 400,
     "too many images"),
    ("prompt longer than context", {"messages": [user("word " * N_CTX)]}, 400, str(N_CTX)),
]


@pytest.mark.parametrize("name, body, status, needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_error_and_server_stays_healthy(client, name, body, status, needle):
    assert_error(client.post(CHAT, json=body), status, needle=needle)
    ok = client.post(CHAT, json={"messages": [user("still there?")], "max_tokens": 2})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("max_tokens", [N_CTX, 10_000_000])
def test_a_max_tokens_the_context_cannot_hold_is_named_with_what_fits(client, max_tokens):
    """Not "the message needs 18 tokens but only -9991808 fit": max_tokens is what does not
    fit, and the error says how many would."""
    err = assert_error(client.post(CHAT, json={"messages": [user("hi")],
                                               "max_tokens": max_tokens}), 400)
    assert err["param"] == "max_tokens" and err["code"] == "context_length_exceeded"
    room = int(err["message"].rsplit("at most ", 1)[1])
    assert 0 < room < N_CTX and "-" not in err["message"]
    ok = client.post(CHAT, json={"messages": [user("hi")], "max_tokens": room})
    assert ok.status_code == 200, ok.get_json()
    over = client.post(CHAT, json={"messages": [user("hi")], "max_tokens": room + 1})
    assert over.status_code == 400 and over.get_json()["error"]["param"] == "max_tokens"


def test_context_error_has_the_openai_code(client):
    err = assert_error(client.post(CHAT, json={"messages": [user("word " * N_CTX)]}), 400)
    assert err["code"] == "context_length_exceeded"


def test_malformed_json(client):
    r = client.post(CHAT, data=b'{"messages": [', content_type="application/json")
    assert_error(r, 400, "invalid_request_error", "JSON")


@pytest.mark.parametrize("path", [CHAT, "/admin/models/load"])
def test_json_nested_100000_deep_is_a_400_not_a_traceback(client, path):
    for deep in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        r = client.post(path, data=deep, content_type="application/json")
        assert_error(r, 400, "invalid_request_error", "nested too deeply")
    assert client.get("/health").status_code == 200


def test_unknown_path_and_wrong_method_are_json(client):
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get(CHAT), 405, "method_not_allowed")
    assert_error(client.delete("/v1/models"), 405)


def test_body_over_the_limit_is_413(make_app):
    c = make_app(max_body_bytes=50_000).test_client()
    big = img_msg(b64url(b"\x00" * 60_000))
    assert_error(c.post(CHAT, json=big), 413, "payload_too_large", "limit")
    assert c.post(CHAT, json={"messages": [user("x")], "max_tokens": 1}).status_code == 200


def test_decoded_image_over_its_cap_is_413(make_app, settings):
    from vlserve.chat.images import ImageLimits
    c = make_app(images=ImageLimits(max_bytes=1000)).test_client()
    assert_error(c.post(CHAT, json=img_msg(b64url(png_bytes(200, 200) + b"\x00" * 5000))), 413)


def test_error_after_the_stream_started_arrives_inside_it_then_done(make_app):
    # 1 s: long enough for some tokens even on a loaded 2-core box, far short of 4000 tokens
    c = make_app(request_timeout=1.0).test_client()
    r = c.post(CHAT, json={"messages": [user("talk")], "max_tokens": 4000, "stream": True})
    assert r.status_code == 200
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "request_timeout" and "timeout" in error["message"]
    assert any(e.get("choices") and e["choices"][0]["delta"].get("content") for e in events[:-2])


def test_timeout_without_streaming_is_504(make_app):
    c = make_app(request_timeout=0.3).test_client()
    assert_error(c.post(CHAT, json={"messages": [user("talk")], "max_tokens": 4000}), 504,
                 "request_timeout")


# ---- context fitting, detail and reasoning, through the API -------------------------------------

def long_history(turns: int, words: int = 60) -> list:
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages.append(user(("img", data_url(320, 240, color=(i * 20 % 255, 80, 90))),
                             f"turn {i} " + "word " * words))
        messages.append({"role": "assistant", "content": f"answer {i} " + "fine " * words})
    return messages


def test_overlong_conversation_is_fitted_and_says_what_was_dropped(client):
    messages = long_history(30) + [user("and now?")]
    r = client.post(CHAT, json={"messages": messages, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    dropped = body["context"]
    assert dropped["dropped_images"] == 30 and dropped["dropped_messages"] > 0
    assert r.headers["X-Context-Dropped"] == (
        f"images={dropped['dropped_images']}, messages={dropped['dropped_messages']}")
    assert body["usage"]["prompt_tokens"] + 8 <= N_CTX


def test_fitting_keeps_its_decision_for_the_next_turn_so_the_cache_holds(client):
    history = long_history(30)
    first = client.post(CHAT, json={"messages": history + [user("one?")], "max_tokens": 4,
                                    "temperature": 0}).get_json()
    answer = first["choices"][0]["message"]["content"]
    follow = history + [user("one?"), {"role": "assistant", "content": answer}, user("two?")]
    second = client.post(CHAT, json={"messages": follow, "max_tokens": 4, "temperature": 0})
    body = second.get_json()
    assert body["context"] == first["context"]          # the same block was dropped
    assert body["timings"]["prompt_tokens_evaluated"] < 40   # so the prefix was reused
    assert body["timings"]["images_encoded"] == 0


def test_streamed_first_and_final_chunks_carry_the_context_report(client):
    r = client.post(CHAT, json={"messages": long_history(30) + [user("x")], "max_tokens": 2,
                                "stream": True})
    events = sse_events(r)[:-1]
    final = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]][0]
    assert final["context"]["dropped_images"] == 30 and "X-Context-Dropped" in r.headers
    assert events[0]["context"] == final["context"]   # known before the first token


def test_last_message_that_cannot_fit_is_refused_before_any_image_work(client, engine):
    before = len(engine._embeddings), dict(client.get("/health").get_json()["served"])
    huge = user(("img", data_url(640, 480, color=(1, 2, 3))), "word " * N_CTX)
    err = assert_error(client.post(CHAT, json={"messages": [huge], "max_tokens": 10}), 400,
                       "context_length_exceeded", "kept for the answer")
    assert str(N_CTX) in err["message"]
    assert (len(engine._embeddings), client.get("/health").get_json()["served"]) == before


def test_low_detail_costs_fewer_image_tokens(client):
    def image_tokens(detail):
        part = {"type": "image_url", "image_url": {"url": data_url(1024, 768), "detail": detail}}
        body = client.post(CHAT, json={"messages": [{"role": "user", "content": [part]}],
                                       "max_tokens": 1}).get_json()
        return body["usage"]["prompt_tokens_details"]["image_tokens"]
    low, auto = image_tokens("low"), image_tokens("auto")
    assert 0 < low <= 256 < auto


def test_old_reasoning_is_not_sent_back_to_the_model(client):
    def prompt_tokens(answer):
        messages = [user("q1"), {"role": "assistant", "content": answer}, user("q2")]
        return client.post(CHAT, json={"messages": messages, "max_tokens": 1}).get_json()[
            "usage"]["prompt_tokens"]
    assert prompt_tokens("<think>long private reasoning " * 20 + "</think>The answer.") == \
        prompt_tokens("The answer.")


def test_a_conversation_that_fits_is_tokenized_once(client, engine, monkeypatch):
    def must_not_count(*args):
        raise AssertionError("counted a conversation that fits")
    monkeypatch.setattr(engine, "count_tokens", must_not_count)
    r = client.post(CHAT, json={"messages": [user(("img", data_url()), "hi")], "max_tokens": 2})
    assert r.status_code == 200 and "context" not in r.get_json()


# ---- a model with random weights (the demo) -----------------------------------------------

NEVER_ENDS = {"type": "json_schema", "json_schema": {"name": "long", "schema": {
    "type": "string", "minLength": 100000}}}   # noise that cannot end by itself


def test_random_weights_answers_are_capped_unless_max_tokens_says(client):
    """The generated models say their weights are random: an answer without max_tokens
    stops at 256 tokens instead of filling the context; max_tokens still wins; /health and
    the model card say so (the page shows it)."""
    body = {"messages": [{"role": "user", "content": "Hello!"}], "response_format": NEVER_ENDS}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["usage"]["completion_tokens"] == 256
    assert r.get_json()["choices"][0]["finish_reason"] == "length"
    r = client.post("/v1/chat/completions", json={**body, "max_tokens": 300})
    assert r.get_json()["usage"]["completion_tokens"] == 300
    assert client.get("/health").get_json()["random_weights"] is True
    card = next(m for m in client.get("/v1/models").get_json()["data"] if m["loaded"])
    assert card["meta"]["random_weights"] is True
