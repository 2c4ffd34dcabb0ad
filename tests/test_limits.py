"""Per-key limits on chat inference: --rate-limit (a token bucket per key, or per client
address without keys) and --max-streams (requests in flight), both answered with 429 and
Retry-After in OpenAI's shape; auth comes first, and a slot is freed however a request ends."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import requests
from werkzeug.test import EnvironBuilder

from conftest import LiveServer, user
from vlserve.ops import limits
from vlserve.ops.limits import RateLimiter, StreamSlots

CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
KEY_A, KEY_B, METRICS_KEY = "frontdesk-secret", "kiosk-secret-22", "metrics-secret-3"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"frontdesk:{KEY_A}\nkiosk:{KEY_B}\nprometheus:{METRICS_KEY}:metrics\n")
    return str(path)


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def assert_429(r, code: str) -> int:
    """The OpenAI error shape with Retry-After; returns Retry-After."""
    assert r.status_code == 429, r.get_json()
    err = r.get_json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == code and err["message"]
    assert set(err) == {"message", "type", "param", "code"}
    return int(r.headers["Retry-After"])


# ---- the bucket and the slots, alone ------------------------------------------------------

@pytest.mark.parametrize("per_minute, steps", [
    # (time in s, the answer to one request there: 0 = allowed, else Retry-After)
    (3, [(0, 0), (0, 0), (0, 0), (0, 20), (10, 10), (19.5, 1), (20, 0), (20, 20)]),
    (1, [(0, 0), (0, 60), (59.2, 1), (60, 0), (61, 59)]),
    (120, [(0, 0)] * 120 + [(0, 1), (0.5, 0), (0.5, 1)]),
    # idle for long: a full burst again, never more than one
    (2, [(0, 0), (600, 0), (600, 0), (600, 30)]),
    # refusals spend nothing: asking every second does not push the next token back
    (6, [(0, 0)] * 6 + [(t, 10 - t) for t in range(1, 10)] + [(10, 0)]),
])
def test_token_bucket(per_minute, steps):
    clock = FakeClock()
    limiter = RateLimiter(per_minute, clock)
    for i, (t, expected) in enumerate(steps):
        clock.t = 1000.0 + t
        assert limiter.take("a") == expected, (i, t)


def test_buckets_are_per_identity_and_idle_ones_are_forgotten():
    clock = FakeClock()
    limiter = RateLimiter(1, clock)
    for n in range(1000):
        assert limiter.take(f"addr:10.0.{n // 256}.{n % 256}") == 0
    assert limiter.take("addr:10.0.0.0") == 60 and len(limiter._buckets) == 1000
    clock.t += 61   # every bucket is full again: keeping them would change nothing
    assert limiter.take("key:new") == 0
    assert len(limiter._buckets) == 1


def test_stream_slots():
    slots = StreamSlots(2)
    first, second = slots.acquire("a"), slots.acquire("a")
    assert first and second and slots.acquire("a") is None and slots.running("a") == 2
    assert slots.acquire("b") is not None       # another identity has its own slots
    first({"status": 200})
    first()                                     # a second release changes nothing
    assert slots.running("a") == 1 and slots.acquire("a") is not None
    assert slots.acquire("a") is None


# ---- --rate-limit in the app ---------------------------------------------------------------

def test_the_fourth_request_in_a_minute_gets_429(make_app, monkeypatch):
    monkeypatch.setattr(limits, "now", FakeClock())   # the requests take time on a busy CPU
    app = make_app(rate_limit=3)
    client = app.test_client()
    for _ in range(3):
        assert client.post(CHAT, json=BODY).status_code == 200
    r = client.post(CHAT, json=BODY)
    # three at once emptied a bucket of 3 that refills one every 20 s
    assert assert_429(r, "rate_limit_exceeded") == 20
    assert "3 chat requests per minute" in r.get_json()["error"]["message"]
    # only inference is limited
    assert client.get("/v1/models").status_code == 200
    assert client.get("/health").status_code == 200
    assert limits.stats(app) == {"rate_limited": 1, "too_many_streams": 0}


def test_each_key_has_its_own_budget_and_401_or_403_spend_nothing(make_app, key_file):
    app = make_app(rate_limit=2, api_key_file=key_file)
    client = app.test_client()
    for headers in [{}] * 3 + [bearer("wrong-key-123")] * 3:
        assert client.post(CHAT, json=BODY, headers=headers).status_code == 401
    for _ in range(3):
        assert client.post(CHAT, json=BODY, headers=bearer(METRICS_KEY)).status_code == 403
    for _ in range(2):
        assert client.post(CHAT, json=BODY, headers=bearer(KEY_A)).status_code == 200
    r = client.post(CHAT, json=BODY, headers=bearer(KEY_A))
    assert_429(r, "rate_limit_exceeded")
    assert "'frontdesk'" in r.get_json()["error"]["message"]
    assert client.post(CHAT, json=BODY, headers=bearer(KEY_B)).status_code == 200
    assert limits.stats(app)["rate_limited"] == 1


def test_without_keys_clients_are_told_apart_by_address(make_app):
    client = make_app(rate_limit=1).test_client()

    def post(addr):
        return client.post(CHAT, json=BODY, environ_base={"REMOTE_ADDR": addr})

    assert post("10.1.1.1").status_code == 200
    assert post("10.1.1.1").status_code == 429
    assert post("10.1.1.2").status_code == 200


def test_tokens_come_back_as_time_passes(make_app, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(limits, "now", clock)
    client = make_app(rate_limit=3).test_client()
    for _ in range(3):
        assert client.post(CHAT, json=BODY).status_code == 200
    assert assert_429(client.post(CHAT, json=BODY), "rate_limit_exceeded") == 20
    clock.t += 19
    assert assert_429(client.post(CHAT, json=BODY), "rate_limit_exceeded") == 1
    clock.t += 1
    assert client.post(CHAT, json=BODY).status_code == 200
    clock.t += 60
    for _ in range(3):
        assert client.post(CHAT, json=BODY).status_code == 200


def test_init_app_twice_registers_once(make_app):
    app = make_app(rate_limit=2)
    hooks = len(app.before_request_funcs[None]), len(app.after_request_funcs[None])
    limits.init_app(app, app.extensions["vlserve"]["settings"])
    assert (len(app.before_request_funcs[None]), len(app.after_request_funcs[None])) == hooks
    client = app.test_client()
    assert [client.post(CHAT, json=BODY).status_code for _ in range(3)] == [200, 200, 429]


def test_off_by_default_adds_no_hook(make_app):
    app = make_app()
    hooks = len(app.before_request_funcs[None])
    limits.init_app(app, app.extensions["vlserve"]["settings"])
    assert len(app.before_request_funcs[None]) == hooks
    assert limits.stats(app) == {"rate_limited": 0, "too_many_streams": 0}


# ---- --max-streams in the app ---------------------------------------------------------------

class HeldStream(threading.Thread):
    """A streaming chat request that stays open after its first chunk until `end` says
    how it ends: "finish" reads it to [DONE], "disconnect" closes it as a leaving client
    does. Its own thread: a stream's request context lives where it is iterated."""

    def __init__(self, client, **kwargs):
        super().__init__(daemon=True)
        self.client, self.kwargs = client, kwargs
        self.opened = threading.Event()
        self._how: queue.Queue[str] = queue.Queue()
        self.status, self.body = None, b""

    def run(self):
        r = self.client.post(CHAT, json=dict(BODY, stream=True), buffered=False,
                             **self.kwargs)
        self.status = r.status_code
        chunks = iter(r.response)
        self.body = next(chunks)
        self.opened.set()
        if self._how.get(timeout=30) == "finish":
            self.body += b"".join(chunks)
        r.close()

    def __enter__(self):
        self.start()
        assert self.opened.wait(30) and self.status == 200
        return self

    def end(self, how: str):
        self._how.put(how)
        self.join(30)
        assert not self.is_alive()

    def __exit__(self, *exc):
        if self.is_alive():
            self.end("disconnect")


def test_a_held_stream_holds_the_slot_until_it_finishes(make_app):
    app = make_app(max_streams=1)
    client = app.test_client()
    with HeldStream(client) as held:
        for body in (BODY, dict(BODY, stream=True)):
            r = client.post(CHAT, json=body)
            assert assert_429(r, "too_many_concurrent_requests") == 1
            message = r.get_json()["error"]["message"]
            assert "1 chat request(s) running" in message and "limit" in message
        # another client, the model list and health are not held up
        other = client.post(CHAT, json=BODY, environ_base={"REMOTE_ADDR": "10.2.2.2"})
        assert other.status_code == 200
        assert client.get("/v1/models").status_code == 200
        held.end("finish")
    assert held.body.rstrip().endswith(b"data: [DONE]")
    assert client.post(CHAT, json=BODY).status_code == 200
    assert limits.stats(app) == {"rate_limited": 0, "too_many_streams": 2}


def test_each_key_has_its_own_slots(make_app, key_file):
    client = make_app(max_streams=1, api_key_file=key_file).test_client()
    with HeldStream(client, headers=bearer(KEY_A)):
        assert client.post(CHAT, json=BODY, headers=bearer(KEY_A)).status_code == 429
        assert client.post(CHAT, json=BODY, headers=bearer(KEY_B)).status_code == 200
        assert client.post(CHAT, json=BODY).status_code == 401


def test_a_client_leaving_mid_stream_frees_its_slot(make_app):
    client = make_app(max_streams=1).test_client()
    with HeldStream(client) as held:
        assert client.post(CHAT, json=BODY).status_code == 429
        held.end("disconnect")
    assert client.post(CHAT, json=BODY).status_code == 200


def test_a_stream_closed_before_its_first_chunk_frees_its_slot(make_app):
    app = make_app(max_streams=1)
    # Raw WSGI: the test client always reads a first chunk, a server may close at once.
    environ = EnvironBuilder(path=CHAT, method="POST", json=dict(BODY, stream=True),
                             environ_base={"REMOTE_ADDR": "127.0.0.1"})
    started = []
    body = app(environ.get_environ(), lambda status, headers, *exc: started.append(status))
    assert started == ["200 OK"]
    assert app.test_client().post(CHAT, json=BODY).status_code == 429
    body.close()   # its generator never ran, so it never finished itself
    assert app.test_client().post(CHAT, json=BODY).status_code == 200


def test_failed_requests_free_their_slot(make_app):
    client = make_app(max_streams=1).test_client()
    for body in ({"messages": []}, {"messages": "nope"}, b"{not json"):
        r = (client.post(CHAT, data=body, content_type="application/json")
             if isinstance(body, bytes)
             else client.post(CHAT, json=body))
        assert r.status_code == 400
    assert client.post(CHAT, json=BODY).status_code == 200


def test_a_request_refused_by_the_rate_limit_holds_no_slot(make_app):
    app = make_app(max_streams=1, rate_limit=1)
    client = app.test_client()
    assert client.post(CHAT, json=BODY).status_code == 200
    for _ in range(3):   # a leaked slot would turn these into too_many_concurrent_requests
        assert_429(client.post(CHAT, json=BODY), "rate_limit_exceeded")
    assert limits.stats(app) == {"rate_limited": 3, "too_many_streams": 0}


# ---- the real server --------------------------------------------------------------------

def test_live_server_max_streams(tiny_model, tmp_path):
    import openai
    server = LiveServer(tiny_model, "--no-warmup", "--max-streams", "1", "--api-key", KEY_A,
                        log_path=tmp_path / "server.log")
    url = server.url + CHAT
    try:
        held = requests.post(url, stream=True, timeout=30, headers=bearer(KEY_A), json={
            "messages": [user("go on")], "max_tokens": 12000, "stream": True})
        assert held.status_code == 200
        lines = held.iter_lines()   # kept: a dropped iterator closes the connection
        next(lines)
        oai = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY_A, max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            oai.chat.completions.create(model="tiny", max_tokens=2, messages=BODY["messages"])
        assert info.value.response.headers["Retry-After"] == "1"
        assert info.value.code == "too_many_concurrent_requests"
        held.close()   # the server notices within a keepalive interval or a token
        end = time.monotonic() + 10
        while True:
            r = requests.post(url, json=BODY, headers=bearer(KEY_A), timeout=30)
            if r.status_code == 200 or time.monotonic() > end:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text
    finally:
        server.stop()
