"""Routes llama.cpp's and mtmd's native log lines into Python logging.

Only warnings and errors pass: their info/debug lines echo prompt text ("add_text: …"),
and nothing a client sends may reach the logs.
"""

from __future__ import annotations

import ctypes
import logging

import llama_cpp
from llama_cpp import mtmd_cpp

log = logging.getLogger("vlserve.llama")

# ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (llama-cpp-python's comment is stale).
GGML_WARN, GGML_ERROR, GGML_CONT = 3, 4, 5
_last_level = 0
# llama.cpp warns when its "n_ctx_seq" exceeds the training context; with a unified KV that
# counts every sequence's cells, while the engine holds each request to its share (and says
# so, warning itself when that share is too long): an info line, not a warning.
_INFO_ONLY = ("llama_context: n_ctx_seq (",)


@llama_cpp.llama_log_callback
def _forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    if level != GGML_CONT:
        _last_level = level
    if _last_level in (GGML_WARN, GGML_ERROR):
        line = text.decode("utf-8", errors="replace").rstrip()
        if line:
            level = logging.ERROR if _last_level == GGML_ERROR else logging.WARNING
            if line.startswith(_INFO_ONLY):
                level = logging.INFO
            log.log(level, "%s", line)


def install() -> None:
    """Idempotent; the callback object lives at module level so ctypes never frees it."""
    llama_cpp.llama_log_set(_forward, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_log_set(_forward, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_forward, ctypes.c_void_p(0))
