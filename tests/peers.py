"""Real OpenAI-compatible peers for the gateway tests: llama-cpp-python's own server on the
tiny model (vlserve peers are conftest.LiveServer)."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import ServerProcess, free_port


class LlamaCppServer(ServerProcess):
    """`python -m llama_cpp.server --chat_format mtmd --clip_model_path …` serving the tiny
    model under `alias`, on a free loopback port."""
    ready_path = "/v1/models"

    def __init__(self, tiny_model, *, alias: str, log_path: Path, n_ctx: int = 4096):
        model, mmproj = tiny_model
        self.port = free_port()
        self._start([sys.executable, "-m", "llama_cpp.server", "--model", model,
                     "--clip_model_path", mmproj, "--chat_format", "mtmd", "--model_alias",
                     alias, "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx",
                     str(n_ctx), "--n_threads", "2"], log_path)
