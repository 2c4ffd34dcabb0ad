"""What every benchmark scenario uses: the servers it starts (vlserve, llama.cpp's
llama-server, llama-cpp-python's server), each alone with its log in LOG_DIR, and the
requests it sends."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

SERVE = [sys.executable, "-m", "vlserve", "serve"]   # this vlserve, checkout or installed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_url(width=1024, height=768, shade: int = 0) -> str:
    """A synthetic photo-like JPEG (gradients and shapes), the size the server keeps;
    another `shade` gives other pixels (an image no cache has seen)."""
    img = Image.radial_gradient("L").resize((width, height)).convert("RGB")
    x, y = width // 4 + 8 * shade, height // 4   # moved, not recoloured: JPEG keeps it apart
    img.paste((180, 90, 40), (x, y, x + width // 4, y + height // 4))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


LOG_DIR = Path(tempfile.gettempdir()) / "vlserve-bench-logs"


def launch(name: str, cmd: list[str], ready_url: str) -> subprocess.Popen:
    """Start a server with its output in LOG_DIR/<name>.log; return once ready_url answers 200."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 900
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise SystemExit(f"{name} exited ({' '.join(cmd)}):\n{tail}")
        with contextlib.suppress(requests.RequestException):   # not listening yet
            if requests.get(ready_url, timeout=2).status_code == 200:
                return proc
        time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"{name} did not become ready; log: {log_path}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(args, port: int, parallel: int | None = 1) -> subprocess.Popen:
    """vlserve; one sequence unless asked (the single-user scenarios compare one slot),
    None: its default."""
    cmd = [*SERVE, "--model", args.model, "--mmproj", args.mmproj, "--port", str(port),
           "--threads", str(args.threads),
           "--ctx-size", str(args.ctx), "--log-level", "warning",
           *(["--parallel", str(parallel)] if parallel else []),
           "--queue-size", "16", "--kv-unified" if args.kv_unified else "--no-kv-unified"]
    if not args.repack:
        cmd.append("--no-repack")
    return launch("vlserve", cmd, f"http://127.0.0.1:{port}/health")


def stream_chat(base_url: str, messages: list, max_tokens: int, **extra) -> dict:
    """One streamed chat completion: time to first content, total time, the text as streamed,
    and whatever usage / timings the server reports (vlserve and llama-server send timings).
    `extra`: more fields of the request (response_format…)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    t0 = time.monotonic()
    first = last = None
    parts, usage, timings = [], None, None
    with requests.post(f"{base_url}/v1/chat/completions", json=body, stream=True, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    last = time.monotonic()
                    first = first or last
                    parts.append(piece)
            usage = event.get("usage") or usage
            timings = event.get("timings") or timings
    end = time.monotonic()
    # one chunk per token on these servers: the decode rate between the first and last
    decode = (len(parts) - 1) / (last - first) if len(parts) > 1 and last > first else 0.0
    return {"ttft_s": (first or end) - t0, "total_s": end - t0, "decode_tok_s": decode,
            "text": "".join(parts), "usage": usage, "timings": timings}


def user_message(content) -> dict:
    return {"role": "user", "content": content}


def start_llama_server(args, port: int, parallel: int = 1) -> subprocess.Popen:
    """llama.cpp's own server: `parallel` slots each with the whole context (like vlserve's
    sequences), same threads."""
    cmd = [args.llama_server, "--model", args.model, "--mmproj", args.mmproj,
           "--host", "127.0.0.1", "--port", str(port), "--threads", str(args.threads),
           "--threads-batch", str(args.threads), "--ctx-size", str(args.ctx * parallel),
           "--parallel", str(parallel), "-kvu" if args.kv_unified else "-no-kvu"]
    if not args.repack:
        cmd.append("--no-repack")
    cmd += shlex.split(args.llama_server_args)
    return launch("llama-server", cmd, f"http://127.0.0.1:{port}/health")


def start_llama_cpp_python(args, port: int) -> subprocess.Popen:
    """llama-cpp-python's server with its generic multimodal handler (MTMDChatHandler).
    It has no switch for CPU weight repacking: it always repacks."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", args.model,
           "--clip_model_path", args.mmproj, "--chat_format", "mtmd",
           "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(args.threads),
           "--n_threads_batch", str(args.threads), "--n_ctx", str(args.ctx)]
    return launch("llama-cpp-python", cmd, f"http://127.0.0.1:{port}/v1/models")


PEERS = {"vlserve": start_server, "llama-server": start_llama_server,
         "llama-cpp-python": start_llama_cpp_python}


def peer_missing(name: str, args) -> str | None:
    """Why a peer cannot run here, or None."""
    if name == "llama-server" and not (args.llama_server and os.access(args.llama_server, os.X_OK)):
        return "no llama-server binary (pass --llama-server PATH)"
    if name == "llama-cpp-python":
        missing = [m for m in ("fastapi", "uvicorn", "sse_starlette", "pydantic_settings",
                               "starlette_context") if importlib.util.find_spec(m) is None]
        if missing:
            return (f"llama-cpp-python's server extras missing ({', '.join(missing)}): pip install "
                    "fastapi uvicorn sse-starlette pydantic-settings starlette-context")
    return None
