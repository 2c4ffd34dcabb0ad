"""What a response_format and tool calls cost: the same requests with and without a
json_schema, on vlserve and (with --llama-server) on llama.cpp's llama-server, one server at
a time; then, on vlserve, the same list as a tool's arguments.

decode: tokens/s of a long constrained answer (32 short strings, about 300 tokens) next to a
free answer of as many tokens; first token: a 30-field schema (its compile and first mask)
next to no schema, the prompt already cached; the four alternate, medians of --runs.
tools: the server's own decode rate (its timings) for a free answer, a free answer with the
tool offered (auto: nothing is masked until a call opens; the tools section makes the
prompt longer) and a required call whose arguments are that list (the same prompt as auto:
the constraint's cost is required ÷ auto), alternating, medians of --runs."""

from __future__ import annotations

import statistics
import sys

from .common import free_port, start_llama_server, start_server, stop, stream_chat, user_message

LIST = {"type": "object", "additionalProperties": False, "required": ["labels"],
        "properties": {"labels": {"type": "array", "minItems": 32, "maxItems": 32,
                                  "items": {"type": "string", "maxLength": 6}}}}
WIDE = {"type": "object", "additionalProperties": False,
        "properties": {f"field_{i}": ({"type": "string", "maxLength": 12}, {"type": "integer"},
                                      {"enum": ["ok", "worn", "broken"]})[i % 3]
                       for i in range(30)}}
WIDE["required"] = list(WIDE["properties"])
QUESTION = "List thirty-two short labels for the parts you would see in a workshop."


def schema(name: str, value: dict) -> dict:
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": name, "schema": value, "strict": True}}}


def measure(url: str, runs: int) -> dict:
    messages = [user_message(QUESTION)]
    # the prompt in the cache, the server warm; the constrained answer's length
    n = stream_chat(url, messages, 400, **schema("labels", LIST))["usage"]["completion_tokens"]
    json_runs, free_runs, wide, plain = [], [], [], []
    for _ in range(runs):   # alternating, so that a machine's drift hits both alike
        json_runs.append(stream_chat(url, messages, 400, **schema("labels", LIST)))
        free_runs.append(stream_chat(url, messages, n))
        wide.append(stream_chat(url, messages, 1, **schema("wide", WIDE))["ttft_s"])
        plain.append(stream_chat(url, messages, 1)["ttft_s"])
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    out = {"tokens": n, "free_decode_tok_s": med(free_runs, "decode_tok_s"),
           "json_decode_tok_s": med(json_runs, "decode_tok_s"),
           "ttft_free_s": statistics.median(plain), "ttft_wide_schema_s": statistics.median(wide)}
    out["decode_ratio"] = out["json_decode_tok_s"] / out["free_decode_tok_s"]
    out["ttft_added_ms"] = (out["ttft_wide_schema_s"] - out["ttft_free_s"]) * 1000
    print(f"  {out}", file=sys.stderr)
    return out


TOOL = {"type": "function", "function": {"name": "record_labels", "strict": True,
                                         "parameters": LIST}}


def measure_tools(url: str, runs: int) -> dict:
    messages = [user_message(QUESTION)]
    tools = {"tools": [TOOL], "parallel_tool_calls": False}
    n = stream_chat(url, messages, 400, tool_choice="required", **tools)["usage"][
        "completion_tokens"]
    rates: dict[str, list[float]] = {"free": [], "required": [], "auto": []}
    for _ in range(runs):
        for kind, extra in (("free", {}), ("required", {"tool_choice": "required", **tools}),
                            ("auto", tools)):
            done = stream_chat(url, messages, n if kind != "required" else 400, **extra)
            rates[kind].append(done["timings"]["decode_tokens_per_s"])
    out = {"tokens": n, **{f"{k}_decode_tok_s": statistics.median(v) for k, v in rates.items()}}
    out["required_ratio"] = out["required_decode_tok_s"] / out["auto_decode_tok_s"]
    out["auto_ratio"] = out["auto_decode_tok_s"] / out["free_decode_tok_s"]
    print(f"  tools: {out}", file=sys.stderr)
    return out


def bench_structured(args) -> dict:
    servers = {"vlserve": start_server}
    if args.llama_server:
        servers["llama-server"] = start_llama_server
    result = {}
    for name, start in servers.items():
        port = free_port()
        proc = start(args, port)
        try:
            result[name] = measure(f"http://127.0.0.1:{port}", args.runs)
            if name == "vlserve":
                result["tools"] = measure_tools(f"http://127.0.0.1:{port}", args.runs)
        finally:
            stop(proc)
    print_structured(result)
    return result


def print_structured(result: dict) -> None:
    tools = result.pop("tools", None)
    print("\n| server | free decode | json_schema decode | ratio | first token, no schema "
          "| first token, 30-field schema | added |\n|---|---|---|---|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['free_decode_tok_s']:.2f} tok/s | {r['json_decode_tok_s']:.2f} "
              f"tok/s | {r['decode_ratio']:.2f} | {r['ttft_free_s'] * 1000:.0f} ms | "
              f"{r['ttft_wide_schema_s'] * 1000:.0f} ms | {r['ttft_added_ms']:+.0f} ms |")
    if len(result) == 2:
        a, b = result["vlserve"], result["llama-server"]
        print(f"\nconstrained decode, vlserve / llama-server: "
              f"{a['json_decode_tok_s'] / b['json_decode_tok_s']:.2f}")
    if tools:
        result["tools"] = tools
        print(f"\n| vlserve, server's decode rate | free | free, tool offered (auto) | "
              f"÷ free | tool call (required, {tools['tokens']} tokens) | ÷ auto |\n"
              f"|---|---|---|---|---|---|\n| | {tools['free_decode_tok_s']:.2f} tok/s | "
              f"{tools['auto_decode_tok_s']:.2f} tok/s | {tools['auto_ratio']:.2f} | "
              f"{tools['required_decode_tok_s']:.2f} tok/s | {tools['required_ratio']:.2f} |")
