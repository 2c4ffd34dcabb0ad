"""Shared fixtures: the generated tiny Qwen3-VL, one real engine, apps, a live server."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

from vlserve.library.tinymodel import make_model  # noqa: E402
from vlserve.web.app import create_app  # noqa: E402
from vlserve.config import Settings  # noqa: E402

N_CTX = 4096
LIVE_PARALLEL = 2  # the live server's sequences (tests fill them before anything queues)
LIVE_CTX = 16384  # the live server's context: room for generations that outlast a test's waits


def data_url(width: int = 96, height: int = 64, fmt: str = "PNG", color=(200, 40, 90)) -> str:
    buf = io.BytesIO()
    img = Image.new("RGB", (width, height), color)
    img.paste((20, 160, 40), (0, 0, width // 2, height // 2))
    img.save(buf, fmt)
    mime = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def user(*parts) -> dict:
    """A user message; str parts are text, ('img', url) parts are images."""
    content = [{"type": "image_url", "image_url": {"url": p[1]}} if isinstance(p, tuple)
               else {"type": "text", "text": p} for p in parts]
    return {"role": "user", "content": content}


def wait_for(predicate, what: str, timeout: float = 30.0, every: float = 0.02):
    """Wait for an event the test cannot be told of directly: poll `predicate` until it is
    true; fail saying `what` did not happen. (Never a bare sleep to order events.)"""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def generate(engine, req, cancel_after: int | None = None):
    """Run one parsed request through the engine directly: (text, Finished)."""
    from vlserve.engine.llama import Delta, Finished
    from vlserve.chat.images import ImageLimits, decode_data_url
    prompt = engine.prepare(req, [decode_data_url(p.url, ImageLimits()) for p in req.image_parts])
    deltas: list[str] = []
    try:
        for ev in engine.generate(prompt, req.params,
                                  lambda: cancel_after is not None and len(deltas) >= cancel_after):
            if isinstance(ev, Delta):
                deltas.append(ev.text)
            else:
                assert isinstance(ev, Finished)
                return "".join(deltas), ev
    finally:
        prompt.close()
    raise AssertionError("the engine ended without a Finished event")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[str, str]:
    model, mmproj = make_model(tmp_path_factory.mktemp("tiny"))
    return str(model), str(mmproj)


QWEN_TEMPLATE = (Path(__file__).parent / "fixtures" / "qwen3vl-8b-instruct.jinja").read_text()


@pytest.fixture(scope="session")
def real_model(tmp_path_factory) -> tuple[str, str]:
    """The tiny model with Qwen3-VL-8B-Instruct's own chat template (tests/fixtures), which
    opens a tool call (`<tool_call>`) by itself now and then: without tools it writes one
    with noise inside; with tools, the grammar holds it once opened."""
    model, mmproj = make_model(tmp_path_factory.mktemp("real"), template=QWEN_TEMPLATE,
                               name="qwen3vl-real-template", favour={"<tool_call>": 0.25})
    return str(model), str(mmproj)


@pytest.fixture(scope="module")
def real_server(real_model, tmp_path_factory):
    """`real_model` served for a module's many batched requests (4 sequences, room to queue)."""
    s = LiveServer(real_model, "--parallel", "4", "--queue-size", "16",
                   log_path=tmp_path_factory.mktemp("real-server") / "server.log")
    yield s
    s.stop()


def ask_ok(server, body: dict) -> requests.Response:
    """A chat request that must succeed (streamed when the body says so)."""
    r = requests.post(server.url + "/v1/chat/completions", json=body, timeout=120,
                      stream=body.get("stream"))
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="session")
def settings(tiny_model, tmp_path_factory) -> Settings:
    model, mmproj = tiny_model
    return Settings(model=model, mmproj=mmproj, model_alias="tiny", n_ctx=N_CTX, threads=2,
                    warmup=False, queue_size=4, request_timeout=60,
                    models_dir=str(tmp_path_factory.mktemp("no-models")))


@pytest.fixture(scope="session")
def engine(settings):
    from vlserve.engine.llama import LlamaEngine
    eng = LlamaEngine(settings)
    yield eng
    eng.close()


@pytest.fixture
def make_app(engine, settings):
    """Apps sharing the session's engine; each app's worker thread is stopped afterwards."""
    apps = []

    def make(**changes):
        app = create_app(settings.replace(**changes), engine=engine)
        worker = app.extensions["vlserve"]["worker"]
        assert worker.wait_ready(60), worker.reason
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["vlserve"]["worker"].stop()


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def self_signed_certificate(folder: Path, *, cn: str, san: str) -> tuple[str, str]:
    """A throwaway certificate and key (openssl), valid for a day: (cert path, key path)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={cn}", "-addext", f"subjectAltName={san}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server as a real process on a loopback port, its output in `log_path`; ready once
    `ready_path` answers 200."""
    ready_path = "/health"
    verify: bool | str = True   # with --certfile: that certificate (requests' `verify`)

    def _start(self, cmd: list[str], log_path: Path, *, cwd: Path = ROOT,
               env: dict | None = None, wait: bool = True) -> None:
        """Start `cmd`; with `wait`, return once it is ready (else call `wait_ready`)."""
        scheme = "http" if self.verify is True else "https"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = dict(env or os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.log()
            try:
                if requests.get(self.url + self.ready_path, timeout=1,
                                verify=self.verify).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass   # not listening yet, or the worker still importing the app
            time.sleep(0.2)
        raise AssertionError(f"{type(self).__name__} did not become ready:\n" + self.log())

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class LiveServer(ServerProcess):
    """`python server.py serve …` (gunicorn) as a real process on a real port."""

    def __init__(self, tiny_model, *extra: str, log_path: Path, alias: str = "tiny",
                 port: int | None = None):
        """`tiny_model` None: no local model (a pure gateway; `extra` names upstreams)."""
        self.port = port or free_port()
        if "--certfile" in extra:   # HTTPS, trusting the server's own certificate
            self.verify = extra[extra.index("--certfile") + 1]
        models_dir = log_path.parent / "models"  # empty unless a test puts models there
        models_dir.mkdir(exist_ok=True)
        local = []
        if tiny_model is not None:
            model, mmproj = tiny_model
            local = ["--model", model, "--mmproj", mmproj, "--ctx-size", str(LIVE_CTX),
                     "--alias", alias]
        self._start([sys.executable, str(ROOT / "server.py"), "serve", *local, "--port",
                     str(self.port), "--threads", "2", "--models-dir", str(models_dir),
                     *extra], log_path)

    def worker_status(self, field: str) -> int:
        """A number from /proc/<pid>/status of gunicorn's worker process (where the model
        lives): "VmRSS" (KiB), "Threads"…"""
        pid = self.proc.pid
        worker = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0]
        line = next(x for x in Path(f"/proc/{worker}/status").read_text().splitlines()
                    if x.startswith(field + ":"))
        return int(line.split()[1])


@pytest.fixture(scope="module")
def live_server(tiny_model, tmp_path_factory):
    server = LiveServer(tiny_model, "--queue-size", "3", "--parallel", str(LIVE_PARALLEL),
                        log_path=tmp_path_factory.mktemp("live") / "server.log")
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter):
    """Which browser ran the page tests: a failure on a fresh machine is then traceable to a
    Chromium that changed under the tests."""
    from browser import LAUNCHED
    for path, version in LAUNCHED.items():
        terminalreporter.write_line(f"page tests ran in: {version} ({path})")
