"""The scenarios: decode through the API against raw llama-cpp-python, follow-up turns
about one photo, the gateway's cost, and parallel streams."""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time

import requests

from .common import (LOG_DIR, PEERS, SERVE, free_port, launch, peer_missing, photo_url,
                     start_llama_server, start_server, stop, stream_chat, user_message)


PROMPT = ("You are looking at a busy workshop. Describe, step by step and in detail, how a "
          "careful technician would inspect a machine for wear, which parts they would check "
          "first, what tools they would use and how they would record what they found. ") * 2


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


def bench_raw(args) -> dict:
    import llama_cpp
    from llama_cpp import _internals as internals

    from ..engine import llamalog
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


def turns_scenario(base_url: str, max_tokens: int = 32, progress: bool = False) -> list[dict]:
    """Turn 1: the photo + a question; each later turn: a new question, with every earlier
    turn (assistant answers exactly as streamed) carried in the conversation. `progress`:
    each request asks for prompt_progress chunks (as the page does)."""
    messages, results = [], []
    for i, question in enumerate(QUESTIONS):
        content = question if i else [{"type": "image_url", "image_url": {"url": photo_url()}},
                                      {"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        result = stream_chat(base_url, messages, max_tokens,
                             **({"return_progress": True} if progress else {}))
        messages.append({"role": "assistant", "content": result["text"]})
        results.append(result)
        print(f"  turn {i + 1}: first token {result['ttft_s']:.2f} s, total {result['total_s']:.2f} s, "
              f"usage {result['usage']}, timings {result['timings']}", file=sys.stderr)
    return results


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
            turns = turns_scenario(f"http://127.0.0.1:{port}", args.turn_tokens,
                                   args.return_progress)
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


def print_decode(args, api: dict, raw: dict) -> dict:
    result = {"api": api, "raw": raw, "ratio_decode": api["decode_tok_s"] / raw["decode_tok_s"],
              "ratio_ttft": api["ttft_s"] / raw["ttft_s"]}
    print(f"\n{raw['prompt_tokens']}-token prompt, {args.tokens} tokens, median of {args.runs}\n")
    print("| | vlserve API (SSE) | raw llama-cpp-python | ratio |\n|---|---|---|---|")
    print(f"| time to first token | {api['ttft_s']:.3f} s | {raw['ttft_s']:.3f} s | {result['ratio_ttft']:.2f} |")
    print(f"| decode | {api['decode_tok_s']:.2f} tok/s | {raw['decode_tok_s']:.2f} tok/s | {result['ratio_decode']:.2f} |")
    print(f"| 1024x768 photo: first token | {api['image_ttft_s']:.2f} s (encode {api['image_encode_ms']} ms) | | |")
    return result
