"""Real OpenAI-compatible peers for the gateway tests: llama-cpp-python's own server on the
tiny model (vlserve peers are conftest.LiveServer)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from conftest import ROOT, free_port


class LlamaCppServer:
    """`python -m llama_cpp.server --chat_format mtmd --clip_model_path …` serving the tiny
    model under `alias`, on a free loopback port."""

    def __init__(self, tiny_model, *, alias: str, log_path: Path, n_ctx: int = 4096):
        model, mmproj = tiny_model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model,
               "--clip_model_path", mmproj, "--chat_format", "mtmd", "--model_alias", alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
               "--n_threads", "2"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.log()
            try:
                if requests.get(self.url + "/v1/models", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError("llama_cpp.server did not start:\n" + self.log())

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
