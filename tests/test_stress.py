"""Storms on the real server (gunicorn, real llama.cpp): models switched, unloaded and loaded
again under traffic that is tokenizing, fitting and encoding images at that moment. Each
storm ends with no crash (gunicorn never had to boot another worker), every request answered
with 200 or a clean OpenAI-shaped 503, and the server answering afterwards.

Before the engine lease (worker.py) these crashed the process that holds the model: an HTTP
thread tokenized on an engine the worker thread was freeing. Prefills (prefill while typing)
storm too: prepared on an engine that is then switched away, superseding each other.
"""

from __future__ import annotations

import random
import threading

import pytest
import requests

from conftest import LiveServer, data_url, make_model, user, wait_for

STORM_SECONDS = 20
SMALL = "qwen3vl-small-f32"


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stress")
    make_model(root / "models" / "small", "small")
    return root


def start(tiny_model, root, name: str, *extra: str) -> LiveServer:
    folder = root / name
    folder.mkdir()
    (folder / "models").symlink_to(root / "models", target_is_directory=True)
    # a small context: the long conversations below must be fitted (tokenized again and again)
    return LiveServer(tiny_model, "--no-warmup", "--ctx-size", "1024", "--queue-size", "16",
                      *extra, log_path=folder / "server.log")


def photo_request(model=None) -> dict:
    body = {"messages": [user(("img", data_url(color=(random.randrange(256), 40, 90))),
                              "What is this?")], "max_tokens": 6}
    return {**body, "model": model} if model else body


def long_request(model=None) -> dict:
    """A conversation longer than the context: history fitting drops its oldest turns."""
    turns = []
    for i in range(24):
        turns += [{"role": "user", "content": f"question {i}: " + "describe the part " * 12},
                  {"role": "assistant", "content": f"answer {i}: " + "a bolt and a nut " * 12}]
    body = {"messages": turns + [{"role": "user", "content": "and now?"}], "max_tokens": 6}
    return {**body, "model": model} if model else body


class Storm:
    """Clients hammering a server until `stop` is set; every answer is recorded."""

    def __init__(self, server: LiveServer):
        self.server = server
        self.stop = threading.Event()
        self.results: list[tuple[str, int | str, dict | None]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def record(self, what: str, response: requests.Response | Exception) -> None:
        if isinstance(response, Exception):
            entry = (what, f"{type(response).__name__}: {response}", None)
        else:
            try:
                body = response.json()
            except ValueError:
                body = {"unparsable": response.text[:200]}
            entry = (what, response.status_code, body)
        with self._lock:
            self.results.append(entry)

    def post(self, what: str, path: str, body: dict, timeout: float = 60) -> None:
        try:
            response = requests.post(self.server.url + path, json=body, timeout=timeout)
        except requests.RequestException as exc:
            self.record(what, exc)
        else:
            self.record(what, response)

    def client(self, what: str, make_body, pace: tuple[float, float] | None = None) -> None:
        def loop():
            while not self.stop.is_set():
                self.post(what, "/v1/chat/completions", make_body())
                if pace:   # a client's own rhythm (a camera every second), not ordering
                    self.stop.wait(random.uniform(*pace))
        self._threads.append(threading.Thread(target=loop, daemon=True))

    def prefiller(self, what: str, make_body) -> None:
        """A page sending prefills of a draft as its author types."""
        def loop():
            while not self.stop.is_set():
                self.post(what, "/v1/chat/prefill", make_body())
        self._threads.append(threading.Thread(target=loop, daemon=True))

    def admin(self, models: list[str]) -> None:
        def loop():
            while not self.stop.is_set():
                self.post("unload", "/admin/models/unload", {})
                self.post("load", "/admin/models/load", {"model": random.choice(models)})
        self._threads.append(threading.Thread(target=loop, daemon=True))

    def run(self, seconds: float) -> None:
        for t in self._threads:
            t.start()
        self.stop.wait(seconds)
        self.stop.set()
        for t in self._threads:
            t.join(120)
            assert not t.is_alive(), "a client never got its answer"

    def check(self) -> None:
        log = self.server.log()
        boots = log.count("Booting worker")
        assert boots == 1, f"the worker crashed and was restarted {boots - 1} times:\n" + \
            "\n".join(line for line in log.splitlines()
                      if "SIG" in line or "Booting worker" in line or "exited" in line)
        bad = [r for r in self.results if not clean(r[1], r[2])]
        assert not bad, f"{len(bad)} of {len(self.results)} answers were not clean: {bad[:5]}"
        chats = [r for r in self.results
                 if r[0] not in ("load", "unload") and not r[0].startswith("prefill")]
        assert sum(r[1] == 200 for r in chats) >= len(chats) // 2, self.summary()
        # afterwards: healthy, and a request is answered
        final = requests.post(self.server.url + "/v1/chat/completions",
                              json=photo_request(), timeout=60)
        assert final.status_code == 200, final.text
        assert final.json()["choices"][0]["finish_reason"] in ("stop", "length")

    def summary(self) -> dict:
        counts: dict = {}
        for what, status, _ in self.results:
            counts[(what, status)] = counts.get((what, status), 0) + 1
        return counts


def clean(status, body) -> bool:
    """200 (a prefill: 202, or 200 declined with its reason), or a refusal the client can
    act on: 503 with an OpenAI-shaped error."""
    if status == 202 and body.get("accepted") is True:
        return True
    if status == 200:
        return "accepted" not in body or body.get("code") == "model_not_loaded"
    if status == 503 and isinstance(body, dict):
        error = body.get("error", {})
        return set(error) >= {"message", "type", "param", "code"}
    return False


def test_admin_unload_and_load_under_photo_and_long_conversations(tiny_model, models_root):
    server = start(tiny_model, models_root, "admin")
    try:
        storm = Storm(server)
        for kind in (photo_request, long_request, photo_request, long_request):
            storm.client(kind.__name__, kind)
        for kind in (photo_request, long_request):
            storm.prefiller("prefill:" + kind.__name__, kind)
        storm.admin(["tiny", SMALL])
        storm.run(STORM_SECONDS)
        storm.check()
        summary = storm.summary()
        assert summary.get(("load", 200)) and summary.get(("prefill:photo_request", 202)), \
            summary
        # every prefill ended: none waits or runs for a model that is gone
        wait_for(lambda: not any(requests.get(server.url + "/health", timeout=5)
                                 .json()["prefills"][k] for k in ("waiting", "running")),
                 "the prefills to end")
    finally:
        server.stop()


def test_requests_naming_two_models_switch_on_request(tiny_model, models_root):
    server = start(tiny_model, models_root, "named")
    try:
        storm = Storm(server)
        for model in ("tiny", SMALL, "tiny", SMALL):
            for kind in (photo_request, long_request):
                storm.client(f"{kind.__name__}:{model}", lambda k=kind, m=model: k(m))
        storm.run(STORM_SECONDS)
        storm.check()
        served = {r[2]["model"] for r in storm.results if r[1] == 200}
        assert served == {"tiny", SMALL}, storm.summary()
    finally:
        server.stop()


def test_keep_alive_unloads_between_requests_a_second_apart(tiny_model, models_root):
    """--keep-alive 1 and a client about every second: the idle unload races the next
    request's tokenization again and again."""
    server = start(tiny_model, models_root, "keepalive", "--keep-alive", "1")
    try:
        storm = Storm(server)
        storm.client("photo or long", lambda: random.choice((photo_request, long_request))(),
                     pace=(0.9, 1.1))
        storm.run(STORM_SECONDS)
        storm.check()
        loads = requests.get(server.url + "/health", timeout=5).json()["served"]["model_loads"]
        assert loads >= 2, "the storm never unloaded the model: it tested nothing"
    finally:
        server.stop()
