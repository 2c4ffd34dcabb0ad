"""Measure vlserve through its HTTP API against raw llama-cpp-python, in one run.

    vlserve bench                                   # generates the bench preset (Q4_0)
    vlserve bench --model M.gguf --mmproj P.gguf --threads 8
    vlserve bench --scenario turns --llama-server /path/to/llama-server

(`python scripts/bench.py …` in a checkout is the same command.)

The scenarios (`--scenario decode|turns|gateway|parallel|structured|prefill|all`, default
all):

decode  starts the real server (gunicorn) on a free loopback port, streams requests through
        `/v1/chat/completions` and records time to first token and decode tokens/s; then,
        with the server stopped so both get the same cores, it decodes the same prompt with
        the raw llama-cpp-python bindings in-process.
turns   a 4-turn conversation about one photo (turn 1: image + question; turns 2-4: a new
        question each, the earlier turns and the answers as streamed carried along), run
        against vlserve and, one after the other, against llama.cpp's `llama-server` and
        llama-cpp-python's server (`--peers`). Only one server runs at a time.
gateway, parallel: the cost of forwarding; several streams at once (see scenarios.py).
structured  the cost of a json_schema response_format, vlserve and llama-server, and of tool
            calls on vlserve (structured.py).
prefill     what prefill while typing saves: the first token after Send with the photo
            prefilled, against turn 1 and a follow-up without, and another user's stream
            beside a prefill (prefill.py).

Results print as Markdown tables and JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from ..library.tinymodel import make_model
from .common import PEERS
from .scenarios import (bench_api, bench_gateway, bench_parallel, bench_raw, bench_turns,
                        print_decode, print_turns)
from .prefill import bench_prefill
from .structured import bench_structured


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
                    choices=["decode", "turns", "gateway", "parallel", "structured", "prefill",
                             "all"])
    ap.add_argument("--tokens", type=int, default=64, help="decode: tokens to generate per run")
    ap.add_argument("--runs", type=int, default=3, help="decode: runs (median reported)")
    ap.add_argument("--turn-tokens", type=int, default=32, help="turns: max_tokens per turn")
    ap.add_argument("--return-progress", action="store_true",
                    help="turns: every request asks for prompt_progress chunks (the page does)")
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
        if args.scenario in ("structured", "all"):
            result["structured"] = bench_structured(args)
        if args.scenario in ("prefill", "all"):
            result["prefill"] = bench_prefill(args)
        print("\n" + json.dumps(result, indent=2))
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
