"""The real server process (gunicorn) on a real port, driven by the official openai client
and raw HTTP: streaming, concurrency, the queue bound, disconnects, logs, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

from conftest import LIVE_PARALLEL, ROOT, data_url, user, wait_for

LONG = 12000  # tokens (~several seconds on the tiny model): outlasts any test's waits


@pytest.fixture
def oai(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0)


def wait_idle(server, timeout=5.0) -> float:
    """Seconds until /health says the engine is idle with an empty queue."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = health(server)
        if not h["busy"] and h["queue_depth"] == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError("engine still busy")


def health(server) -> dict:
    return requests.get(server.url + "/health", timeout=2).json()


def finishes(served: dict) -> int:
    return sum(v for k, v in served.items() if k != "tokens_generated")


def wait_busy(server, timeout=5.0):
    end = time.monotonic() + timeout
    while not health(server)["busy"]:
        assert time.monotonic() < end, "engine never started"
        time.sleep(0.02)


def open_stream(server, max_tokens=LONG, text="go on"):
    r = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=30, json={
        "messages": [user(text)], "max_tokens": max_tokens, "stream": True})
    assert r.status_code == 200
    return r


def test_openai_client_streams_an_answer_about_an_image(oai):
    stream = oai.chat.completions.create(
        model="tiny", max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this photo?"},
            {"type": "image_url", "image_url": {"url": data_url(320, 240, "JPEG")}}]}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finish == ["length"]
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens > 20


def test_openai_client_non_streaming_and_models(oai):
    out = oai.chat.completions.create(
        model="tiny", max_tokens=5, messages=[user(("img", data_url()), "hi")])
    assert out.choices[0].message.content and out.usage.completion_tokens == 5
    assert [m.id for m in oai.models.list().data] == ["tiny"]


def test_openai_client_sees_bad_input_as_bad_request(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="tiny", messages=[user(("img", "https://x.org/a.png"), "?")])
    assert "offline" in info.value.message


def test_concurrent_requests_are_each_answered_as_if_alone(oai):
    def ask(i):
        return oai.chat.completions.create(
            model="tiny", max_tokens=20, temperature=0,
            messages=[user(f"question {i % 2}")]).choices[0].message.content

    alone = [ask(0), ask(1)]
    results = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, ask(i))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # each equals what the same request produced alone: batched sequences do not mix
    assert results == [alone[0], alone[1], alone[0], alone[1]]


def wait_sequences(server, n, timeout=5.0):
    end = time.monotonic() + timeout
    while health(server)["cache"]["sequences"]["busy"] < n:
        assert time.monotonic() < end, f"{n} sequences never ran"
        time.sleep(0.02)


def test_a_short_request_does_not_wait_behind_a_long_answer(live_server):
    wait_idle(live_server)
    long = open_stream(live_server)                       # LONG tokens: many seconds
    wait_sequences(live_server, 1)
    short = requests.post(live_server.url + "/v1/chat/completions", timeout=30,
                          json={"messages": [user("quick one")], "max_tokens": 3})
    assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 3
    # answered beside it: the long answer is still being generated
    assert health(live_server)["cache"]["sequences"]["busy"] == 1
    long.close()
    wait_idle(live_server)


def test_full_queue_answers_503_with_retry_after(live_server):
    streams = [open_stream(live_server) for _ in range(LIVE_PARALLEL)]   # running
    wait_sequences(live_server, LIVE_PARALLEL)
    streams += [open_stream(live_server) for _ in range(3)]  # --queue-size 3: waiting
    try:
        r = requests.post(live_server.url + "/v1/chat/completions", timeout=10,
                          json={"messages": [user("one more")], "max_tokens": 2})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert r.json()["error"]["code"] == "server_busy"
    finally:
        for s in streams:
            s.close()
    wait_idle(live_server)


def test_disconnect_mid_stream_frees_the_engine(live_server):
    wait_idle(live_server)
    before = health(live_server)["served"]
    r = open_stream(live_server)
    lines = r.iter_lines()
    got = 0
    for line in lines:
        if line.startswith(b"data: ") and b'"content"' in line:
            got += 1
            if got == 3:
                break
    r.close()   # the client goes away mid-answer
    assert wait_idle(live_server) < 3.0
    served = health(live_server)["served"]
    assert served.get("cancelled", 0) == before.get("cancelled", 0) + 1
    # it stopped within a few tokens of the disconnect, far short of the LONG it asked for
    assert served["tokens_generated"] - before.get("tokens_generated", 0) < LONG / 3
    after = requests.post(live_server.url + "/v1/chat/completions", timeout=30,
                          json={"messages": [user("next")], "max_tokens": 3})
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 3


def test_disconnect_while_queued_never_runs(live_server):
    wait_idle(live_server)
    before = health(live_server)["served"]
    running = [open_stream(live_server) for _ in range(LIVE_PARALLEL)]
    wait_sequences(live_server, LIVE_PARALLEL)
    queued = open_stream(live_server, text="I will leave")
    queued.close()
    wait_for(lambda: health(live_server)["served"]["cancelled"] >= before["cancelled"] + 1,
             "the server to notice the queued client left")
    for stream in running:
        stream.close()
    assert wait_idle(live_server) < 5.0
    served = health(live_server)["served"]
    # the running ones ended (cancelled, or finished on a fast machine), and the queued one
    # left the queue cancelled, without reaching the engine
    assert finishes(served) == finishes(before) + LIVE_PARALLEL + 1
    assert served["cancelled"] >= before["cancelled"] + 1
    wait_for(lambda: any(" 499 " in line for line in live_server.log().splitlines()
                         if "chat/completions" in line), "the access log's 499 line")


def test_logs_hold_counts_never_content(live_server):
    secret = "PURPLE-ELEPHANT-4471"
    url = data_url(64, 64)
    requests.post(live_server.url + "/v1/chat/completions", timeout=30, json={
        "messages": [user(("img", url), secret)], "max_tokens": 2})
    wait_for(lambda: "chat/completions 200" in live_server.log(), "the request's log line")
    log = live_server.log()
    assert secret not in log and url[30:90] not in log
    line = [ln for ln in log.splitlines() if "chat/completions 200" in ln][-1]
    assert "prompt_tokens=" in line and "images=1" in line and "image_bytes=" in line


def test_streaming_keeps_the_openai_wire_format(live_server):
    r = open_stream(live_server, max_tokens=4)
    raw = r.content.decode()
    assert raw.endswith("data: [DONE]\n\n")
    payloads = [json.loads(b[6:]) for b in raw.split("\n\n") if b.startswith("data: {")]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_server_py_and_console_script_are_the_same_command():
    a = run_cli(sys.executable, "server.py", "serve", "--help")
    b = run_cli(str(ROOT / ".venv" / "bin" / "vlserve"), "serve", "--help") \
        if (ROOT / ".venv" / "bin" / "vlserve").exists() else a
    assert a.returncode == 0 and b.returncode == 0
    # identical but for the program name in the usage line
    assert a.stdout.splitlines()[1:] == b.stdout.splitlines()[1:]
    for flag in ("--model", "--mmproj", "--n-gpu-layers", "--ctx-size", "--no-repack",
                 "--queue-size", "--timeout", "VLSERVE_PORT"):
        assert flag in a.stdout


def test_a_missing_model_file_or_half_a_pair_is_a_clear_error():
    r = run_cli(sys.executable, "server.py", "serve", "--model", "x.gguf")
    assert r.returncode == 1 and "model file not found: x.gguf" in r.stderr
    r = run_cli(sys.executable, "server.py", "serve", "--mmproj", "p.gguf")
    assert r.returncode == 1 and "--mmproj needs --model" in r.stderr


def test_every_option_reads_its_vlserve_environment_variable(monkeypatch, tiny_model):
    from vlserve.cli import serve, settings_from_options
    monkeypatch.setenv("VLSERVE_PORT", "9123")
    monkeypatch.setenv("VLSERVE_NO_REPACK", "1")
    monkeypatch.setenv("VLSERVE_MAX_IMAGES", "3")
    ctx = serve.make_context("serve", ["--model", tiny_model[0], "--mmproj", tiny_model[1]])
    s = settings_from_options(dict(ctx.params))
    assert (s.port, s.repack, s.images.max_images, s.host) == (9123, False, 3, "127.0.0.1")


def test_demo_serves_the_generated_demo_model(tmp_path):
    from vlserve.cli import serve, settings_from_options
    from vlserve.library.places import demo_dir
    args = ["--demo", "--models-dir", str(tmp_path)]
    s = settings_from_options(dict(serve.make_context("serve", args).params))
    assert s.demo and s.model_id == "vlserve-demo-tiny"
    assert Path(s.model).parent == demo_dir(tmp_path) and Path(s.mmproj).is_file()


def test_dev_server_streams_too(tiny_model, tmp_path):
    from conftest import LiveServer
    server = LiveServer(tiny_model, "--dev", "--no-warmup", log_path=tmp_path / "dev.log")
    try:
        raw = open_stream(server, max_tokens=3).content.decode()
        assert raw.endswith("data: [DONE]\n\n") and raw.count('"content"') >= 3
    finally:
        server.stop()


def test_bench_subcommand_reaches_the_benchmark():
    r = run_cli(sys.executable, "server.py", "bench", "--help")
    assert r.returncode == 0 and "--scenario" in r.stdout and "--llama-server" in r.stdout
