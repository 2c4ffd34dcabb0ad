"""Prometheus metrics: off by default, counting real chat requests on the tiny model when on,
the queue and the model read live, the metrics scope, and labels no client can multiply."""

from __future__ import annotations

import json
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import data_url, user
from vlserve import config
from vlserve.ops import metrics

CHAT = "/v1/chat/completions"
METRICS_KEY, CHAT_KEY = "metrics-secret-1", "chat-secret-22"


@pytest.fixture
def build(make_app):
    return make_app


def scrape(client, **kwargs) -> dict:
    """{(sample name, frozenset of labels): value} from /metrics."""
    r = client.get("/metrics", **kwargs)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == "text/plain"
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.get_data(as_text=True))
            for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_no_metrics_route_by_default(make_app):
    app = make_app()
    metrics.init_app(app, app.extensions["vlserve"]["settings"])
    assert app.test_client().get("/metrics").status_code == 404
    assert "metrics" not in app.extensions["vlserve"]


def test_init_app_twice_registers_once(build):
    app = build(metrics=True)
    first = app.extensions["vlserve"]["metrics"]
    assert metrics.init_app(app, app.extensions["vlserve"]["settings"]) is first
    assert app.extensions["vlserve"]["observers"].count(first.observe) == 1


def test_chat_requests_move_the_counters(build):
    client = build(metrics=True).test_client()
    image = data_url(80, 48, color=(10, 200, 30))
    plain = client.post(CHAT, json={"messages": [user(("img", image), "describe")],
                                    "max_tokens": 5, "temperature": 0})
    assert plain.status_code == 200
    streamed = client.post(CHAT, json={"messages": [user("hello there")], "max_tokens": 4,
                                       "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200
    usage = [plain.get_json()["usage"], _stream_usage(streamed.get_data(as_text=True))]
    m = scrape(client)

    route = {"route": "/v1/chat/completions"}
    assert value(m, "vlserve_requests_total", method="POST", status="200", **route) == 2
    assert value(m, "vlserve_request_duration_seconds_count", **route) == 2
    assert value(m, "vlserve_time_to_first_token_seconds_count", stream="true") == 1
    assert value(m, "vlserve_time_to_first_token_seconds_count", stream="false") == 1
    assert value(m, "vlserve_generated_tokens_total", model="tiny") == \
        sum(u["completion_tokens"] for u in usage) > 0
    assert value(m, "vlserve_decode_tokens_per_second_count") == 2
    assert value(m, "vlserve_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usage)
    assert value(m, "vlserve_prompt_tokens_total", source="cached") == \
        sum(u["prompt_tokens_details"]["cached_tokens"] for u in usage)
    assert value(m, "vlserve_image_tokens_total") == \
        usage[0]["prompt_tokens_details"]["image_tokens"] > 0
    assert value(m, "vlserve_images_total") == 1   # encoded, or found in the shared cache
    assert value(m, "vlserve_completions_total", model="tiny") == 2
    assert value(m, "vlserve_cancelled_requests_total") == 0


def test_batching_steps_and_sequences_are_counted(build):
    client = build(metrics=True).test_client()
    before = scrape(client)
    r = client.post(CHAT, json={"messages": [user("count my steps")], "max_tokens": 6,
                                "temperature": 0})
    assert r.status_code == 200
    after = scrape(client)

    def moved(name):
        return value(after, name) - value(before, name)

    prompt = r.get_json()["timings"]["prompt_tokens_evaluated"]
    # one step for the prompt, then one per generated token but the last (never decoded)
    assert moved("vlserve_decode_steps_total") == 1 + 5
    assert moved("vlserve_decode_step_tokens_total") == prompt + 5
    assert moved("vlserve_decode_step_sequences_total") == 6
    # the session engine's: Settings' default, as `vlserve serve` would run
    assert value(after, "vlserve_parallel_sequences") == config.auto_parallel()
    assert value(after, "vlserve_busy_sequences") == 0
    assert value(after, "vlserve_aggregate_tokens_per_second") >= 6 / 10


def _stream_usage(body: str) -> dict:
    events = [json.loads(b[6:]) for b in body.split("\n\n")
              if b.startswith("data: {")]
    return next(e["usage"] for e in events if e.get("usage"))


def test_response_cache_hits_and_misses(build, tmp_path):
    client = build(metrics=True, response_cache_dir=str(tmp_path / "answers")).test_client()
    body = {"messages": [user("the same question")], "max_tokens": 3, "temperature": 0}
    assert [client.post(CHAT, json=body).headers.get("X-Cache") for _ in range(2)] == \
        ["miss", "hit"]
    m = scrape(client)
    assert value(m, "vlserve_response_cache_total", result="miss") == 1
    assert value(m, "vlserve_response_cache_total", result="hit") == 1
    assert value(m, "vlserve_completions_total") == 1   # the replay ran nothing


def test_queue_busy_and_the_loaded_model_are_read_live(build):
    app = build(metrics=True)
    m = scrape(app.test_client())
    assert value(m, "vlserve_queue_depth") == 0
    assert value(m, "vlserve_busy") == 0
    assert value(m, "vlserve_model_info", model="tiny", state="ready") == 1
    assert value(m, "vlserve_model_loads_total") >= 1
    assert ("vlserve_model_load_seconds", frozenset()) in m
    worker = app.extensions["vlserve"]["worker"]
    worker.state = "loading"     # what a scrape during a switch sees
    try:
        m = scrape(app.test_client())
    finally:
        worker.state = "ready"
    assert value(m, "vlserve_model_info", model="tiny", state="loading") == 1
    assert value(m, "vlserve_model_info", state="ready") == 0


def test_limits_refusals_are_exposed_when_the_limits_module_counts_them(build):
    app = build(metrics=True)

    class Limits:   # the shape of limits.Limits: stats() -> {reason: count}
        def stats(self):
            return {"rate_limited": 3, "too_many_streams": 1, "note": "not a count"}
    app.extensions["vlserve"]["limits"] = Limits()
    m = scrape(app.test_client())
    assert value(m, "vlserve_limited_requests_total", reason="rate_limited") == 3
    assert value(m, "vlserve_limited_requests_total", reason="too_many_streams") == 1
    assert not [ls for (n, ls) in m if ("reason", "note") in ls]


@pytest.fixture
def keyed(build, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"prom:{METRICS_KEY}:metrics\nfrontdesk:{CHAT_KEY}\n")
    return build(metrics=True, api_key_file=str(keys)).test_client()


@pytest.mark.parametrize("key, status", [(METRICS_KEY, 200), (CHAT_KEY, 403), (None, 401)])
def test_metrics_need_the_metrics_scope(keyed, key, status):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    assert keyed.get("/metrics", headers=headers).status_code == status


def test_random_paths_do_not_create_route_labels(build):
    client = build(metrics=True).test_client()
    for _ in range(50):
        assert client.get(f"/{uuid.uuid4().hex}/x").status_code == 404
    client.open("/v1/models", method="BREW")   # an odd method is "other", not a new series
    m = scrape(client)
    routes = {dict(ls).get("route") for (n, ls) in m if n == "vlserve_requests_total"}
    assert value(m, "vlserve_requests_total", route="unmatched", status="404") == 50
    assert len(routes) <= 3, routes     # unmatched, /v1/models, /metrics (the scrape itself)
    methods = {dict(ls)["method"] for (n, ls) in m if n == "vlserve_requests_total"}
    assert "BREW" not in methods and "other" in methods


def test_the_token_rate_is_bounded_whatever_the_rate():
    """One counter per second of the window: 100k tokens (a GPU's minute) take no more room
    than one, and the rate counts only the window."""
    from vlserve.engine.batch import RateWindow
    now = [1000.0]
    rate = RateWindow(10, clock=lambda: now[0])
    size = (len(rate._counts), len(rate._seconds))
    for i in range(100_000):
        now[0] = 1000 + i / 5000          # 5000 tokens a second for 20 s
        rate.add()
    assert (len(rate._counts), len(rate._seconds)) == size == (10, 10)
    assert rate.rate() == pytest.approx(5000, rel=0.01)
    now[0] += 30                          # quiet since: nothing in the window
    assert rate.rate() == 0


def test_scrapes_beside_four_streams_all_succeed(tiny_model, tmp_path):
    """/metrics in a tight loop while four streams decode (the rate was once a deque the
    engine thread appended to while a scrape iterated it: 500s)."""
    import threading

    import requests

    from conftest import LiveServer
    server = LiveServer(tiny_model, "--no-warmup", "--metrics", "--parallel", "4",
                        log_path=tmp_path / "server.log")
    try:
        statuses = []

        def stream():
            r = requests.post(server.url + CHAT, json={
                "messages": [user("go on")], "max_tokens": 300, "temperature": 1,
                "stream": True}, stream=True, timeout=120)
            for _ in r.iter_lines():
                pass

        streams = [threading.Thread(target=stream) for _ in range(4)]
        for t in streams:
            t.start()
        watcher = threading.Thread(target=lambda: [t.join() for t in streams] and None)
        watcher.start()
        session = requests.Session()
        while watcher.is_alive() or not statuses:
            statuses.append(session.get(server.url + "/metrics", timeout=10).status_code)
        watcher.join()
        assert len(statuses) > 20 and set(statuses) == {200}, statuses[:20]
    finally:
        server.stop()
