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


@llama_cpp.llama_log_callback
def _forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    if level != GGML_CONT:
        _last_level = level
    if _last_level in (GGML_WARN, GGML_ERROR):
        line = text.decode("utf-8", errors="replace").rstrip()
        if line:
            log.log(logging.ERROR if _last_level == GGML_ERROR else logging.WARNING, "%s", line)


def install() -> None:
    """Idempotent; the callback object lives at module level so ctypes never frees it."""
    llama_cpp.llama_log_set(_forward, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_log_set(_forward, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_forward, ctypes.c_void_p(0))
