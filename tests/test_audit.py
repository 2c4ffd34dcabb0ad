"""The audit log: one JSON line per API request with the documented fields, image hashes but
never content (unless --log-content), key names but never keys, rotation, thread safety."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import threading
import time
from datetime import datetime

import pytest
import requests
from PIL import Image

from conftest import LiveServer, data_url, user
from vlserve.ops import audit
from vlserve.chat.images import ImageLimits, decode_data_url
from vlserve.chat.protocol import parse_chat_request

CHAT = "/v1/chat/completions"
FIELDS = {"time", "key", "client", "method", "route", "status", "duration_ms", "model", "backend",
          "stream", "images", "prompt_tokens", "completion_tokens", "cached_tokens",
          "image_tokens", "finish_reason", "response_cache", "cancelled", "timings"}
TIMINGS = {"ttft_ms", "prompt_ms", "predicted_ms", "decode_tokens_per_s", "image_encode_ms"}
SECRET = "chat-secret-9f3a7c"


@pytest.fixture
def build(make_app):
    """Apps whose audit files are closed afterwards."""
    apps = []

    def make(**changes):
        apps.append(make_app(**changes))
        return apps[-1]
    yield make
    for app in apps:
        if "audit" in app.extensions["vlserve"]:
            app.extensions["vlserve"]["audit"].close()


@pytest.fixture
def audit_log(tmp_path):
    logs = []

    def make(path=None, **kwargs):
        kwargs = {"max_bytes": 10**7, "backups": 3, "log_content": False, **kwargs}
        logs.append(audit.AuditLog(str(path or tmp_path / "audit.jsonl"), **kwargs))
        return logs[-1]
    yield make
    for log in logs:
        log.close()


def lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def pixel_sha256(url: str) -> tuple[str, int]:
    """What images.py hashes: "WxH:" then the RGB bytes of the prepared image (this one is
    within the size limits, so not resized); and the size of the decoded file."""
    raw = base64.b64decode(url.split(",", 1)[1])
    rgb = Image.open(io.BytesIO(raw)).convert("RGB")
    digest = hashlib.sha256(b"%dx%d:" % rgb.size)
    digest.update(rgb.tobytes())
    return digest.hexdigest(), len(raw)


def record(**fields) -> dict:
    """A finished request's record as web.lifecycle.finish_request builds it."""
    return {"time": time.time(), "method": "POST", "route": CHAT, "path": CHAT,
            "status": 200, "duration_ms": 12.5, "client": "127.0.0.1", "key": None, **fields}


def test_no_audit_log_by_default(make_app):
    app = make_app()
    assert audit.init_app(app, app.extensions["vlserve"]["settings"]) is None
    assert app.extensions["vlserve"]["observers"] == []


def test_a_chat_request_with_an_image_is_one_line_without_content(build, tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    client = build(audit_log=str(path)).test_client()
    url, marker = data_url(96, 64), "MAUVE-OTTER-5521"
    r = client.post(CHAT, json={"messages": [user(("img", url), f"what is {marker}?")],
                                "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200
    usage = r.get_json()["usage"]
    [line] = lines(path)
    assert set(line) == FIELDS and set(line["timings"]) == TIMINGS
    assert line["time"].endswith("Z") and datetime.fromisoformat(line["time"])
    assert (line["method"], line["route"], line["status"]) == ("POST", CHAT, 200)
    assert line["key"] is None and line["client"] == "127.0.0.1"
    assert line["model"] == "tiny" and line["backend"] == "local"
    assert line["stream"] is False and line["cancelled"] is False
    assert line["response_cache"] is None   # no --response-cache-dir
    assert line["prompt_tokens"] == usage["prompt_tokens"]
    assert line["completion_tokens"] == usage["completion_tokens"]
    assert line["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert line["image_tokens"] == usage["prompt_tokens_details"]["image_tokens"] > 0
    assert line["finish_reason"] == r.get_json()["choices"][0]["finish_reason"]
    assert line["timings"]["prompt_ms"] > 0 and line["timings"]["ttft_ms"] is None
    sha, size = pixel_sha256(url)
    assert line["images"] == [{"sha256": sha, "bytes": size, "width": 96, "height": 64}]
    text = path.read_text()
    assert marker not in text and url[40:100] not in text


def test_a_stream_has_its_time_to_first_token(build, tmp_path):
    path = tmp_path / "audit.jsonl"
    client = build(audit_log=str(path)).test_client()
    r = client.post(CHAT, json={"messages": [user("stream it")], "max_tokens": 3,
                                "stream": True})
    assert r.status_code == 200 and r.get_data(as_text=True).endswith("[DONE]\n\n")
    [line] = lines(path)
    assert line["stream"] is True and line["images"] == []
    assert line["timings"]["ttft_ms"] > 0 and line["completion_tokens"] >= 1


def test_the_key_name_is_logged_never_the_key(build, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"frontdesk:{SECRET}\n")
    path = tmp_path / "audit.jsonl"
    client = build(audit_log=str(path), api_key_file=str(keys)).test_client()
    ok = client.get("/v1/models", headers={"Authorization": f"Bearer {SECRET}"})
    refused = client.get("/v1/models", headers={"Authorization": "Bearer wrong-key-123"})
    assert (ok.status_code, refused.status_code) == (200, 401)
    first, second = lines(path)
    assert (first["key"], first["status"], first["route"]) == ("frontdesk", 200, "/v1/models")
    assert (second["key"], second["status"]) == (None, 401)
    assert first["model"] is None and first["timings"] is None and first["images"] is None
    text = path.read_text()
    assert SECRET not in text and "wrong-key-123" not in text


def test_health_page_static_and_metrics_are_not_logged(build, tmp_path):
    path = tmp_path / "audit.jsonl"
    client = build(audit_log=str(path)).test_client()
    for page in ("/health", "/", "/chat.html", "/static/app.css", "/metrics", "/nowhere"):
        client.get(page)
    assert path.exists() and lines(path) == []   # opened at start, still empty
    client.post("/admin/models/load", json={})   # 400: (unloading would close the shared engine)
    client.get("/v1/models")
    assert [(line["route"], line["status"]) for line in lines(path)] == [
        ("/admin/models/load", 400), ("/v1/models", 200)]


def test_audit_lines_never_reach_the_console_log(audit_log, tmp_path):
    # A handler of our own on the root logger (where the console handler is); pytest's
    # caplog would not do: it also listens on loggers that do not propagate.
    seen: list[logging.LogRecord] = []
    console = logging.Handler(logging.DEBUG)
    console.emit = seen.append
    logging.getLogger().addHandler(console)
    try:
        audit_log().observe(record(model="tiny"))
    finally:
        logging.getLogger().removeHandler(console)
    assert audit.logger.propagate is False
    assert not [r for r in seen if r.name.startswith("vlserve.audit")]
    assert len(lines(tmp_path / "audit.jsonl")) == 1


def test_a_cancelled_request_says_so(audit_log, tmp_path):
    audit_log().observe(record(status=499, stream=True, cancelled=True))
    [line] = lines(tmp_path / "audit.jsonl")
    assert line["cancelled"] is True and line["status"] == 499 and line["timings"] is None


def test_init_app_twice_opens_the_file_once(build, tmp_path):
    app = build(audit_log=str(tmp_path / "audit.jsonl"))
    state = app.extensions["vlserve"]
    assert audit.init_app(app, state["settings"]) is state["audit"]
    assert state["observers"].count(state["audit"].observe) == 1


def test_rotation_keeps_at_most_the_configured_backups(audit_log, tmp_path):
    log = audit_log(max_bytes=1500, backups=2)
    for i in range(60):
        log.observe(record(prompt_tokens=i))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 1500
        assert all(set(line) == FIELDS for line in lines(tmp_path / name))
    assert lines(tmp_path / "audit.jsonl")[-1]["prompt_tokens"] == 59


def test_max_mb_and_backups_come_from_the_settings(build, tmp_path):
    app = build(audit_log=str(tmp_path / "audit.jsonl"), audit_max_mb=0.5, audit_backups=4)
    handler = app.extensions["vlserve"]["audit"].handler
    assert (handler.maxBytes, handler.backupCount) == (512 * 1024, 4)


def test_threads_write_whole_lines(audit_log, tmp_path):
    log = audit_log(max_bytes=20_000, backups=50)

    def write(n):
        for i in range(100):
            log.observe(record(prompt_tokens=n * 1000 + i))
    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = [line["prompt_tokens"] for p in tmp_path.iterdir() for line in lines(p)]
    assert sorted(seen) == sorted(n * 1000 + i for n in range(8) for i in range(100))


def test_log_content_adds_messages_with_image_hashes_and_the_answer(audit_log, tmp_path):
    url, marker = data_url(64, 64), "TEAL-HERON-8812"
    req = parse_chat_request({"messages": [
        {"role": "system", "content": "be brief"},
        user(("img", url), f"what is {marker}?")]}, max_tokens_cap=100)
    images = {p: decode_data_url(p.url, ImageLimits()) for p in req.image_parts}
    content = audit.content(req, images, "an answer", "some reasoning")
    sha, _ = pixel_sha256(url)
    full = record(images=[{"sha256": sha, "bytes": 1, "width": 64, "height": 64}],
                  content=content)

    audit_log(tmp_path / "with.jsonl", log_content=True).observe(full)
    [line] = lines(tmp_path / "with.jsonl")
    assert set(line) == FIELDS | {"messages", "answer", "reasoning"}
    assert line["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "image", "sha256": sha},
                                     {"type": "text", "text": f"what is {marker}?"}]}]
    assert line["messages"][1]["content"][0]["sha256"] == line["images"][0]["sha256"]
    assert (line["answer"], line["reasoning"]) == ("an answer", "some reasoning")
    assert url[40:100] not in (tmp_path / "with.jsonl").read_text()

    audit_log(tmp_path / "without.jsonl").observe(full)   # content in the record: ignored
    [line] = lines(tmp_path / "without.jsonl")
    assert set(line) == FIELDS
    assert marker not in (tmp_path / "without.jsonl").read_text()


def test_log_content_never_writes_a_data_url(audit_log, tmp_path):
    url = data_url(32, 32)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    audit_log(log_content=True).observe(record(content={"messages": messages, "answer": "x"}))
    [line] = lines(tmp_path / "audit.jsonl")
    assert line["messages"][0]["content"][0]["image_url"]["url"] == "[data URL omitted]"
    assert url[22:80] not in (tmp_path / "audit.jsonl").read_text()


def test_a_client_leaving_a_live_stream_is_logged_cancelled(tiny_model, tmp_path):
    path = tmp_path / "audit.jsonl"
    server = LiveServer(tiny_model, "--no-warmup", "--audit-log", str(path),
                        log_path=tmp_path / "server.log")
    try:
        assert path.exists()
        r = requests.post(server.url + CHAT, stream=True, timeout=30, json={
            "messages": [user("go on")], "max_tokens": 12000, "stream": True})
        got = 0
        for line in r.iter_lines():
            got += line.startswith(b"data: ") and b'"content"' in line
            if got == 3:
                break
        r.close()   # the client goes away mid-answer
        end = time.monotonic() + 15
        while time.monotonic() < end and not path.read_text().strip():
            time.sleep(0.1)
        [line] = lines(path)
        assert line["cancelled"] is True and line["status"] == 499 and line["stream"] is True
        assert line["route"] == CHAT and line["client"] == "127.0.0.1"
    finally:
        server.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_log_content_through_the_api(build, tmp_path, stream):
    """--log-content end to end: the prompt text, the image as its hash, and the answer the
    client received; the image itself never."""
    path = tmp_path / "audit.jsonl"
    client = build(audit_log=str(path), log_content=True).test_client()
    url, marker = data_url(96, 64), "TEAL-HERON-7730"
    r = client.post(CHAT, json={"messages": [user(("img", url), f"what is {marker}?")],
                                "max_tokens": 4, "temperature": 0, "stream": stream})
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    [line] = lines(path)
    sent = line["messages"][0]["content"]
    assert sent[0] == {"type": "image", "sha256": pixel_sha256(url)[0]}
    assert sent[1] == {"type": "text", "text": f"what is {marker}?"}
    if stream:
        events = [json.loads(x[6:]) for x in body.splitlines() if x.startswith("data: {")]
        received = "".join(e["choices"][0]["delta"].get("content") or ""
                           for e in events if e.get("choices"))
    else:
        received = r.get_json()["choices"][0]["message"]["content"]
    assert line["answer"] == received != ""
    assert url[40:100] not in path.read_text()
