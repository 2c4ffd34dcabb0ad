"""Measure vlserve through its HTTP API against raw llama-cpp-python, in one run.

    vlserve bench                                   # generates the bench preset (Q4_0)
    vlserve bench --model M.gguf --mmproj P.gguf --threads 8
    vlserve bench --scenario turns --llama-server /path/to/llama-server

(`python scripts/bench.py …` in a checkout is the same command.)

Two scenarios (`--scenario decode|turns|all`, default all):

decode  starts the real server (gunicorn) on a free loopback port, streams requests through
        `/v1/chat/completions` and records time to first token and decode tokens/s; then,
        with the server stopped so both get the same cores, it decodes the same prompt with
        the raw llama-cpp-python bindings in-process.
turns   a 4-turn conversation about one photo (turn 1: image + question; turns 2-4: a new
        question each, the earlier turns and the answers as streamed carried along), run
        against vlserve and, one after the other, against llama.cpp's `llama-server` and
        llama-cpp-python's server (`--peers`). Only one server runs at a time.

Results print as Markdown tables and JSON.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import io
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from PIL import Image

from .library.tinymodel import make_model

SERVE = [sys.executable, "-m", "vlserve", "serve"]   # this vlserve, checkout or installed

PROMPT = ("You are looking at a busy workshop. Describe, step by step and in detail, how a "
          "careful technician would inspect a machine for wear, which parts they would check "
          "first, what tools they would use and how they would record what they found. ") * 2


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


# ---- through the API --------------------------------------------------------------------

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


def start_server(args, port: int, parallel: int = 1) -> subprocess.Popen:
    """vlserve; one sequence unless asked (the single-user scenarios compare one slot)."""
    cmd = [*SERVE, "--model", args.model, "--mmproj", args.mmproj, "--port", str(port),
           "--threads", str(args.threads),
           "--ctx-size", str(args.ctx), "--log-level", "warning", "--parallel", str(parallel),
           "--queue-size", "16", "--kv-unified" if args.kv_unified else "--no-kv-unified"]
    if not args.repack:
        cmd.append("--no-repack")
    return launch("vlserve", cmd, f"http://127.0.0.1:{port}/health")


def cold_prompt(run: int) -> str:
    """The decode scenario's prompt, different from its first words on, so that vlserve's
    prefix cache cannot serve a repeated run (time to first token stays a cold prefill)."""
    return f"Request {run}. {PROMPT}"


def bench_api(args) -> dict:
    port = free_port()
    proc = start_server(args, port)
    try:
        url = f"http://127.0.0.1:{port}"
        text = [stream_chat(url, [user_message(cold_prompt(i))], args.tokens)
                for i in range(args.runs)]
        image = stream_chat(url, [user_message([
            {"type": "image_url", "image_url": {"url": photo_url()}},
            {"type": "text", "text": "What is in this photo?"}])], 16)
    finally:
        stop(proc)
    return {"ttft_s": statistics.median(r["ttft_s"] for r in text),
            "decode_tok_s": statistics.median(r["decode_tok_s"] for r in text),
            "image_ttft_s": image["ttft_s"],
            "image_encode_ms": (image["timings"] or {}).get("image_encode_ms")}


# ---- raw llama-cpp-python, same model, same threads ------------------------------------------

def bench_raw(args) -> dict:
    import llama_cpp
    from llama_cpp import _internals as internals

    from .engine import llamalog
    llamalog.install()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = args.repack
    model = internals.LlamaModel(path_model=args.model, params=mp, verbose=False)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = args.ctx, 2048, args.threads, args.threads
    ctx = internals.LlamaContext(model=model, params=cp, verbose=False)
    batch = internals.LlamaBatch(n_tokens=2048, embd=0, n_seq_max=1, verbose=False)
    runs = []
    for run in range(args.runs):
        prompt = f"<|im_start|>user\n{cold_prompt(run)}<|im_end|>\n<|im_start|>assistant\n"
        tokens = model.tokenize(prompt.encode(), add_bos=False, special=True)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx.ctx), True)
        sampler = internals.LlamaSampler()
        sampler.add_greedy()
        t0 = time.monotonic()
        batch.set_batch(tokens, 0, False)
        ctx.decode(batch)
        token = sampler.sample(ctx, -1)
        t1 = time.monotonic()
        for i in range(args.tokens - 1):
            batch.set_batch([token], len(tokens) + i, False)
            ctx.decode(batch)
            token = sampler.sample(ctx, -1)
        t2 = time.monotonic()
        runs.append({"ttft_s": t1 - t0, "decode_tok_s": (args.tokens - 1) / (t2 - t1)})
        sampler.close()
    for owner in (batch, ctx, model):
        owner.close()
    return {"ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs),
            "prompt_tokens": len(tokens)}


# ---- follow-up turns, against any OpenAI-compatible server -----------------------------------

# About 100 tokens each with the chat template around it (bench preset tokenizer).
QUESTIONS = [
    ("Look at the photo carefully. Where is the brightest part of the picture, and how does the "
     "brightness change from the centre to each edge?"),
    ("Now the orange rectangle: where does it sit in the frame, how large is it next to the whole "
     "picture, and are its edges sharp or soft?"),
    ("To crop this photo to a square that keeps the rectangle and the brightest area, where would "
     "you put the crop, and what would be lost?"),
    ("Finally, suggest a short title for the photo and one line of alt text that mentions the "
     "colours, the gradient and the rectangle."),
]


def stream_chat(base_url: str, messages: list, max_tokens: int) -> dict:
    """One streamed chat completion: time to first content, total time, the text as streamed,
    and whatever usage / timings the server reports (vlserve and llama-server send timings)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
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


def turns_scenario(base_url: str, max_tokens: int = 32) -> list[dict]:
    """Turn 1: the photo + a question; each later turn: a new question, with every earlier
    turn (assistant answers exactly as streamed) carried in the conversation."""
    messages, results = [], []
    for i, question in enumerate(QUESTIONS):
        content = question if i else [{"type": "image_url", "image_url": {"url": photo_url()}},
                                      {"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        result = stream_chat(base_url, messages, max_tokens)
        messages.append({"role": "assistant", "content": result["text"]})
        results.append(result)
        print(f"  turn {i + 1}: first token {result['ttft_s']:.2f} s, total {result['total_s']:.2f} s, "
              f"usage {result['usage']}, timings {result['timings']}", file=sys.stderr)
    return results


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


def bench_gateway(args) -> dict:
    """The cost of the gateway: the same streams straight to a vlserve and through a second
    vlserve that forwards to it (--upstream), alternating, medians of --runs each."""
    port, gw_port = free_port(), free_port()
    upstream = start_server(args, port)
    gateway = launch("vlserve-gateway", [
        *SERVE, "--port", str(gw_port),
        "--upstream", f"up=http://127.0.0.1:{port}", "--log-level", "warning"],
        f"http://127.0.0.1:{gw_port}/health")
    urls = {"direct": f"http://127.0.0.1:{port}", "gateway": f"http://127.0.0.1:{gw_port}"}
    runs = {name: {"text": [], "image": []} for name in urls}
    try:
        for i in range(args.runs):
            for name, url in urls.items():
                runs[name]["text"].append(stream_chat(
                    url, [user_message(cold_prompt(100 * i + len(name)))], args.tokens))
                # a new photo each time: the upstream's caches cannot answer it
                shade = 2 * i + (name == "gateway")
                runs[name]["image"].append(stream_chat(url, [user_message([
                    {"type": "image_url", "image_url": {"url": photo_url(shade=shade)}},
                    {"type": "text", "text": f"What is in photo {i} ({name})?"}])], 8))
    finally:
        stop(gateway)
        stop(upstream)
    out = {name: {"ttft_s": statistics.median(r["ttft_s"] for r in got["text"]),
                  "decode_tok_s": statistics.median(r["decode_tok_s"] for r in got["text"]),
                  "image_ttft_s": statistics.median(r["ttft_s"] for r in got["image"])}
           for name, got in runs.items()}
    d, g = out["direct"], out["gateway"]
    out["gateway_vs_direct"] = {
        "decode": round(g["decode_tok_s"] / d["decode_tok_s"], 3) if d["decode_tok_s"] else None,
        "ttft_added_ms": round((g["ttft_s"] - d["ttft_s"]) * 1000, 1),
        "image_ttft_added_ms": round((g["image_ttft_s"] - d["image_ttft_s"]) * 1000, 1)}
    print("\nThrough the gateway vs straight to the upstream (medians of "
          f"{args.runs}): decode {out['gateway_vs_direct']['decode']}x, first token "
          f"+{out['gateway_vs_direct']['ttft_added_ms']} ms, with a 1024x768 photo "
          f"+{out['gateway_vs_direct']['image_ttft_added_ms']} ms")
    return out


def concurrent_streams(url: str, n: int, max_tokens: int) -> dict:
    """n streams at once, each its own cold prompt: tokens of all / wall time of all."""
    results: list = [None] * n

    def one(i):
        results[i] = stream_chat(url, [user_message(f"Customer {i} at {time.time()}: {PROMPT}")],
                                 max_tokens)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    tokens = sum((r["usage"] or {}).get("completion_tokens") or len(r["text"]) for r in results)
    return {"streams": n, "tokens": tokens, "wall_s": round(wall, 2),
            "aggregate_tok_s": round(tokens / wall, 2),
            "ttft_s": [round(r["ttft_s"], 2) for r in results]}


def ttft_under_load(url: str, runs: int) -> dict:
    """A short request's time to first token idle, then while 3 long answers stream."""
    short = lambda i: [user_message(f"Quick question {i} at {time.time()}: is it open?")]  # noqa: E731
    idle = statistics.median(stream_chat(url, short(i), 4)["ttft_s"] for i in range(runs))
    stop, started = threading.Event(), threading.Barrier(4)

    def long_answer(i):
        body = {"messages": [user_message(f"Long {i} {time.time()}: {PROMPT}")],
                "max_tokens": 1000, "temperature": 0, "stream": True}
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True,
                           timeout=3600) as r:
            waited = False
            for line in r.iter_lines():
                # the first token, not vlserve's opening {"role", "content": ""} chunk
                if line.startswith(b"data: {") and not waited and any(
                        (c.get("delta") or {}).get("content")
                        for c in json.loads(line[6:]).get("choices") or []):
                    waited = True
                    started.wait(600)
                if stop.is_set():
                    return

    threads = [threading.Thread(target=long_answer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    started.wait(600)                 # all three are generating
    loaded = statistics.median(stream_chat(url, short(100 + i), 4)["ttft_s"]
                               for i in range(runs))
    stop.set()
    for t in threads:
        t.join()
    return {"idle_ttft_s": round(idle, 3), "loaded_ttft_s": round(loaded, 3),
            "ratio": round(loaded / idle, 2)}


def single_stream_pair(args) -> dict:
    """The lone user: vlserve --parallel 4 and --parallel 1 both up, requests alternating
    between them (so the machine's drift hits both alike); medians of --runs each."""
    ports = {4: free_port(), 1: free_port()}
    procs = {n: start_server(args, port, n) for n, port in ports.items()}
    rates: dict[int, list[float]] = {4: [], 1: []}
    try:
        for i in range(args.runs):
            for n, port in ports.items():
                rates[n].append(stream_chat(f"http://127.0.0.1:{port}", [user_message(
                    cold_prompt(2000 + 10 * i + n))], args.tokens)["decode_tok_s"])
    finally:
        for proc in procs.values():
            stop(proc)
    p4, p1 = statistics.median(rates[4]), statistics.median(rates[1])
    return {"p4_decode_tok_s": round(p4, 2), "p1_decode_tok_s": round(p1, 2),
            "ratio": round(p4 / p1, 3)}


def bench_parallel(args) -> dict:
    """Several people at once: vlserve --parallel 4 against --parallel 1 and llama.cpp's
    llama-server -np 4, one server up at a time, same model, threads and per-slot context."""
    tokens, out = 128, {}
    peers = [("vlserve -p4", lambda p: start_server(args, p, 4)),
             ("vlserve -p1", lambda p: start_server(args, p, 1))]
    why = peer_missing("llama-server", args)
    if why:
        print(f"skipping llama-server: {why}", file=sys.stderr)
    else:
        peers += [("llama-server -np4", lambda p: start_llama_server(args, p, 4)),
                  ("llama-server -np1", lambda p: start_llama_server(args, p, 1))]
    for name, start in peers:
        port = free_port()
        print(f"{name}: starting", file=sys.stderr)
        proc = start(port)
        url = f"http://127.0.0.1:{port}"
        try:
            stream_chat(url, [user_message("warm up")], 4)
            result = {"concurrent": concurrent_streams(url, 4, tokens)}
            result["single_decode_tok_s"] = round(statistics.median(
                stream_chat(url, [user_message(cold_prompt(1000 + i))], args.tokens)
                ["decode_tok_s"] for i in range(args.runs)), 2)
            result["kv_unified"] = args.kv_unified
            if not name.endswith("1"):
                result["ttft"] = ttft_under_load(url, args.runs)
        finally:
            stop(proc)
        out[name] = result
        print(f"  {name}: {json.dumps(result)}", file=sys.stderr)
    out["single_stream"] = single_stream_pair(args)
    p4, p1 = out["vlserve -p4"], out["vlserve -p1"]
    out["targets"] = {
        "aggregate_p4_over_p1": round(p4["concurrent"]["aggregate_tok_s"]
                                      / p1["concurrent"]["aggregate_tok_s"], 2),
        "single_stream_p4_over_p1": out["single_stream"]["ratio"],
        "ttft_loaded_over_idle": p4["ttft"]["ratio"]}
    if "llama-server -np4" in out:
        ls4, ls1 = out["llama-server -np4"], out["llama-server -np1"]
        out["targets"]["aggregate_over_llama_server"] = round(
            p4["concurrent"]["aggregate_tok_s"] / ls4["concurrent"]["aggregate_tok_s"], 2)
        # what this machine allows: llama.cpp's own gain from 4 slots
        out["targets"]["llama_server_np4_over_np1"] = round(
            ls4["concurrent"]["aggregate_tok_s"] / ls1["concurrent"]["aggregate_tok_s"], 2)
    print("\nSeveral at once (4 streams x 128 tokens):", json.dumps(out["targets"]))
    return out


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


def bench_turns(args) -> dict:
    """Run the conversation against each peer in turn; one server up at a time."""
    results = {}
    for name in args.peers:
        why = peer_missing(name, args)
        if why:
            print(f"skipping {name}: {why}", file=sys.stderr)
            continue
        port = free_port()
        print(f"{name}: starting (log {LOG_DIR / name}.log)", file=sys.stderr)
        proc = PEERS[name](args, port)
        try:
            turns = turns_scenario(f"http://127.0.0.1:{port}", args.turn_tokens)
        finally:
            stop(proc)
        results[name] = [{k: v for k, v in t.items() if k != "text"} | {"answer_chars": len(t["text"])}
                         for t in turns]
    return results


def print_turns(turns: dict) -> None:
    n = len(QUESTIONS)
    print("\nTime to first token per turn (turn 1: 1024x768 photo + question; "
          "turns 2-4: a new question each)\n")
    print("| server | " + " | ".join(f"turn {i + 1}" for i in range(n)) + " | turns 2-4 ÷ turn 1 |")
    print("|---" * (n + 2) + "|")
    for name, ts in turns.items():
        ratios = " / ".join(f"{t['ttft_s'] / ts[0]['ttft_s']:.3f}" for t in ts[1:])
        print(f"| {name} | " + " | ".join(f"{t['ttft_s']:.2f} s" for t in ts) + f" | {ratios} |")
    if "vlserve" in turns and "llama-server" in turns:
        pairs = zip(turns["vlserve"], turns["llama-server"])
        print("| vlserve ÷ llama-server | " + " | ".join(f"{a['ttft_s'] / b['ttft_s']:.2f}" for a, b in pairs)
              + " | |")
    print("\n| server | turn | total | prompt tokens | cached | server timings |\n|---|---|---|---|---|---|")
    for name, ts in turns.items():
        for i, t in enumerate(ts):
            u = t["usage"] or {}
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", "")
            print(f"| {name} | {i + 1} | {t['total_s']:.2f} s | {u.get('prompt_tokens', '')} | {cached} | "
                  f"{compact(t['timings'])} |")


def compact(timings: dict | None) -> str:
    """A server's timings object on one short line: `key value, ...`, floats to 0.1."""
    return ", ".join(f"{k} {round(v, 1) if isinstance(v, float) else v}"
                     for k, v in (timings or {}).items())


# ---- the decode comparison -----------------------------------------------------------------------

def print_decode(args, api: dict, raw: dict) -> dict:
    result = {"api": api, "raw": raw, "ratio_decode": api["decode_tok_s"] / raw["decode_tok_s"],
              "ratio_ttft": api["ttft_s"] / raw["ttft_s"]}
    print(f"\n{raw['prompt_tokens']}-token prompt, {args.tokens} tokens, median of {args.runs}\n")
    print("| | vlserve API (SSE) | raw llama-cpp-python | ratio |\n|---|---|---|---|")
    print(f"| time to first token | {api['ttft_s']:.3f} s | {raw['ttft_s']:.3f} s | {result['ratio_ttft']:.2f} |")
    print(f"| decode | {api['decode_tok_s']:.2f} tok/s | {raw['decode_tok_s']:.2f} tok/s | {result['ratio_decode']:.2f} |")
    print(f"| 1024x768 photo: first token | {api['image_ttft_s']:.2f} s (encode {api['image_encode_ms']} ms) | | |")
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):   # Linux names the CPU model
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), cpu)
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="vlserve bench", description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--mmproj")
    ap.add_argument("--quant", default="q4_0", choices=["q4_0", "q8_0", "f16", "f32"],
                    help="quant of the generated bench preset (when --model is not given)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--scenario", default="all",
                    choices=["decode", "turns", "gateway", "parallel", "all"])
    ap.add_argument("--tokens", type=int, default=64, help="decode: tokens to generate per run")
    ap.add_argument("--runs", type=int, default=3, help="decode: runs (median reported)")
    ap.add_argument("--turn-tokens", type=int, default=32, help="turns: max_tokens per turn")
    ap.add_argument("--peers", default="vlserve,llama-server,llama-cpp-python",
                    help="turns: comma-separated, from " + ", ".join(PEERS))
    ap.add_argument("--llama-server", help="turns: path to llama.cpp's llama-server binary")
    ap.add_argument("--llama-server-args", default="",
                    help="turns: extra llama-server arguments, e.g. '--flash-attn off'")
    ap.add_argument("--kv-unified", action=argparse.BooleanOptionalAction, default=True,
                    help="parallel: one KV buffer for all sequences (vlserve and llama-server)")
    ap.add_argument("--repack", action="store_true",
                    help="allow CPU weight repacking (crashes quantized models on some virtual CPUs);\n"
                         "applies to vlserve and llama-server; llama-cpp-python always repacks")
    args = ap.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        ap.error(f"unknown peers: {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    tmp = None
    if not args.model:
        tmp = tempfile.TemporaryDirectory(prefix="vlserve-bench-")
        t0 = time.monotonic()
        model, mmproj = make_model(Path(tmp.name), preset="bench", quant=args.quant)
        print(f"generated bench preset ({args.quant}) in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        args.model, args.mmproj = str(model), str(mmproj)
    try:
        result = {"machine": machine(), "model": Path(args.model).name, "threads": args.threads,
                  "ctx": args.ctx, "repack": args.repack}
        print(f"\n{result['machine']}\nmodel {result['model']}, {args.threads} threads")
        if args.scenario in ("decode", "all"):
            result |= {"tokens": args.tokens, "runs": args.runs}
            result["decode"] = print_decode(args, bench_api(args), bench_raw(args))
        if args.scenario in ("turns", "all"):
            result["turns"] = bench_turns(args)
            print_turns(result["turns"])
        if args.scenario in ("gateway", "all"):
            result["gateway"] = bench_gateway(args)
        if args.scenario in ("parallel", "all"):
            result["parallel"] = bench_parallel(args)
        print("\n" + json.dumps(result, indent=2))
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
