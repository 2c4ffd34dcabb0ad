#!/usr/bin/env python3
"""Measure vlserve through its HTTP API against raw llama-cpp-python, in one run.

    .venv/bin/python scripts/bench.py                       # generates the bench preset (Q4_0)
    .venv/bin/python scripts/bench.py --model M.gguf --mmproj P.gguf --threads 8

It starts the real server (gunicorn) on a free loopback port, streams requests through
`/v1/chat/completions` and records time to first token and decode tokens/s; then, with
the server stopped so both get the same cores, it decodes the same prompt with the raw
llama-cpp-python bindings in-process. Results print as a Markdown table and JSON.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

PROMPT = ("You are looking at a busy workshop. Describe, step by step and in detail, how a "
          "careful technician would inspect a machine for wear, which parts they would check "
          "first, what tools they would use and how they would record what they found. ") * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_url(width=1024, height=768) -> str:
    """A synthetic photo-like JPEG (gradients and shapes), the size the server keeps."""
    img = Image.radial_gradient("L").resize((width, height)).convert("RGB")
    img.paste((180, 90, 40), (width // 4, height // 4, width // 2, height // 2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# ---- through the API --------------------------------------------------------------------

def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "server.py"), "serve", "--model", args.model,
           "--mmproj", args.mmproj, "--port", str(port), "--threads", str(args.threads),
           "--ctx-size", str(args.ctx), "--log-level", "warning"]
    if not args.repack:
        cmd.append("--no-repack")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 900
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit("server exited:\n" + proc.stderr.read())
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become ready")


def stream_once(port: int, content, max_tokens: int) -> dict:
    t0 = time.monotonic()
    first = last = None
    n = 0
    timings = {}
    with requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", stream=True, timeout=3600,
                       json={"messages": [{"role": "user", "content": content}],
                             "max_tokens": max_tokens, "temperature": 0, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            choice = event["choices"][0] if event["choices"] else {}
            if choice.get("delta", {}).get("content"):
                now = time.monotonic()
                first = first or now
                last = now
                n += 1
            timings = event.get("timings", timings)
    return {"ttft_s": first - t0, "decode_tok_s": (n - 1) / (last - first) if n > 1 else 0.0,
            "chunks": n, "server_timings": timings}


def bench_api(args) -> dict:
    port = free_port()
    proc = start_server(args, port)
    try:
        text = [stream_once(port, PROMPT, args.tokens) for _ in range(args.runs)]
        image = stream_once(port, [{"type": "image_url", "image_url": {"url": photo_url()}},
                                   {"type": "text", "text": "What is in this photo?"}], 16)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"ttft_s": statistics.median(r["ttft_s"] for r in text),
            "decode_tok_s": statistics.median(r["decode_tok_s"] for r in text),
            "image_ttft_s": image["ttft_s"],
            "image_encode_ms": image["server_timings"].get("image_encode_ms")}


# ---- raw llama-cpp-python, same model, same threads ------------------------------------------

def bench_raw(args) -> dict:
    import llama_cpp
    from llama_cpp import _internals as internals

    from vlserve import llamalog
    llamalog.install()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = args.repack
    model = internals.LlamaModel(path_model=args.model, params=mp, verbose=False)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = args.ctx, 2048, args.threads, args.threads
    ctx = internals.LlamaContext(model=model, params=cp, verbose=False)
    batch = internals.LlamaBatch(n_tokens=2048, embd=0, n_seq_max=1, verbose=False)
    prompt = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n".encode()
    tokens = model.tokenize(prompt, add_bos=False, special=True)
    runs = []
    for _ in range(args.runs):
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


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--mmproj")
    ap.add_argument("--quant", default="q4_0", choices=["q4_0", "q8_0", "f16", "f32"],
                    help="quant of the generated bench preset (when --model is not given)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=64, help="tokens to generate per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repack", action="store_true",
                    help="allow CPU weight repacking (crashes quantized models on some virtual CPUs)")
    args = ap.parse_args()
    tmp = None
    if not args.model:
        from make_tiny_model import make_model
        tmp = tempfile.TemporaryDirectory(prefix="vlserve-bench-")
        t0 = time.monotonic()
        model, mmproj = make_model(Path(tmp.name), preset="bench", quant=args.quant)
        print(f"generated bench preset ({args.quant}) in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        args.model, args.mmproj = str(model), str(mmproj)
    api = bench_api(args)
    raw = bench_raw(args)
    result = {"machine": machine(), "model": Path(args.model).name, "threads": args.threads,
              "tokens": args.tokens, "runs": args.runs, "repack": args.repack,
              "api": api, "raw": raw,
              "ratio_decode": api["decode_tok_s"] / raw["decode_tok_s"],
              "ratio_ttft": api["ttft_s"] / raw["ttft_s"]}
    print(f"\n{result['machine']}\nmodel {result['model']}, {args.threads} threads, "
          f"{raw['prompt_tokens']}-token prompt, {args.tokens} tokens, median of {args.runs}\n")
    print("| | vlserve API (SSE) | raw llama-cpp-python | ratio |\n|---|---|---|---|")
    print(f"| time to first token | {api['ttft_s']:.3f} s | {raw['ttft_s']:.3f} s | {result['ratio_ttft']:.2f} |")
    print(f"| decode | {api['decode_tok_s']:.2f} tok/s | {raw['decode_tok_s']:.2f} tok/s | {result['ratio_decode']:.2f} |")
    print(f"| 1024x768 photo: first token | {api['image_ttft_s']:.2f} s (encode {api['image_encode_ms']} ms) | | |")
    print("\n" + json.dumps(result, indent=2))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
