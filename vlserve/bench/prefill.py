"""`--scenario prefill`: what prefill while typing saves, in one run on one vlserve (its
default `--parallel`), each figure against the same request without a prefill; llama-server's
turn 1 from the same run beside it.

1. today: a photo + question (turn 1) and a follow-up question (turn 2), no prefill;
2. the photo prefilled, the question sent once the prefill has finished: time to first
   token after Send (target: at most 1.2x turn 2's);
3. the question sent 2 s after attaching (the prefill still running): time to first token
   counted from the attach (target: at most 1.05x turn 1's), and the images encoded (1);
4. the question typed in three pauses (three prefills, each superseding the last), sent once
   the last has finished: one encode, first token after Send;
5. another user's stream decoding while a prefill runs: its tokens/s with and without.

Every step uses a photo no cache has seen. The waits in 3 and 4 stand for a person typing.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import requests

from .common import (LOG_DIR, free_port, peer_missing, photo_url, start_llama_server,
                     start_server, stop, stream_chat, user_message)

QUESTION = "What is in this photo? Describe the colours and the shapes."
# as long as QUESTION (59 characters): the follow-up evaluates a question of the same size
FOLLOW_UP = "Which colour covers the most of it? Where do the shapes go?"
DRAFTS = ("", "What is in", "What is in this photo? Describe")   # three typing pauses
TYPING_S = 2.0
STREAM_TOKENS = 96


def bench_prefill(args) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"vlserve: starting (log {LOG_DIR}/vlserve.log)", file=sys.stderr)
    proc = start_server(args, port, parallel=None)
    try:
        out = _measure(url)
    finally:
        stop(proc)
    why = peer_missing("llama-server", args)
    if why:
        print(f"skipping llama-server: {why}", file=sys.stderr)
    else:
        port = free_port()
        proc = start_llama_server(args, port)
        try:
            first = stream_chat(f"http://127.0.0.1:{port}", [_photo_turn(9)], args.turn_tokens)
            out["llama_server_turn1_ttft_s"] = round(first["ttft_s"], 2)
        finally:
            stop(proc)
    _print(out)
    return out


def _photo_turn(shade: int, text: str = QUESTION) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": photo_url(shade=shade)}}]
    return user_message(parts + ([{"type": "text", "text": text}] if text else []))


def _prefill(url: str, shade: int, text: str) -> str:
    r = requests.post(f"{url}/v1/chat/prefill", json={"messages": [_photo_turn(shade, text)]},
                      timeout=600)
    r.raise_for_status()
    answer = r.json()
    if not answer.get("accepted"):
        raise SystemExit(f"the prefill was not accepted: {answer}")
    return answer["id"]


def _ended(url: str, prefill_id: str) -> dict:
    while True:
        state = requests.get(f"{url}/v1/chat/prefill/{prefill_id}?wait=60", timeout=90).json()
        if state["state"] not in ("queued", "waiting", "running"):
            return state


def _send(url: str, shade: int, tokens: int) -> dict:
    return stream_chat(url, [_photo_turn(shade)], tokens)


def _encoded(*timings: dict) -> int:
    return sum((t or {}).get("images_encoded", 0) for t in timings)


def _measure(url: str) -> dict:
    tokens = 32
    out: dict = {}
    # 1. today
    turn1 = _send(url, 1, tokens)
    messages = [_photo_turn(1), {"role": "assistant", "content": turn1["text"]},
                user_message(FOLLOW_UP)]
    turn2 = stream_chat(url, messages, tokens)
    out["turn1_ttft_s"], out["turn2_ttft_s"] = turn1["ttft_s"], turn2["ttft_s"]
    _log("today", turn1, turn2)
    # 2. prefilled, sent after it finished
    state = _ended(url, _prefill(url, 2, ""))
    after = _send(url, 2, tokens)
    out["after_prefill"] = {"ttft_s": after["ttft_s"], "prefill": state,
                            "timings": after["timings"]}
    _log("sent after the prefill finished", after, prefill=state)
    # 3. sent 2 s after attaching
    t_attach = time.monotonic()
    prefill_id = _prefill(url, 3, "")
    time.sleep(TYPING_S)   # the person typing
    t_send = time.monotonic()
    during = _send(url, 3, tokens)
    state = _ended(url, prefill_id)
    out["sent_during_prefill"] = {
        "ttft_from_attach_s": t_send - t_attach + during["ttft_s"], "ttft_s": during["ttft_s"],
        "images_encoded": _encoded(state, during["timings"]), "prefill": state,
        "timings": during["timings"]}
    _log("sent 2 s after attaching", during, prefill=state)
    # 4. three typing pauses
    states = []
    for i, text in enumerate(DRAFTS):
        if i:
            time.sleep(TYPING_S)
        states.append(_prefill(url, 4, text))
    states = [_ended(url, p) for p in states]
    paused = _send(url, 4, tokens)
    out["three_pauses"] = {"ttft_s": paused["ttft_s"], "prefills": [s["state"] for s in states],
                           "images_encoded": _encoded(*states, paused["timings"]),
                           "timings": paused["timings"]}
    _log("three pauses", paused, prefill=states[-1])
    # 5. another user's stream, alone and beside a prefill
    other = [user_message("Write a long story about a lighthouse keeper.")]
    alone = stream_chat(url, other, STREAM_TOKENS)
    beside = _stream_beside_a_prefill(url, other)
    out["other_stream"] = {"alone_tok_s": alone["decode_tok_s"],
                           "beside_prefill_tok_s": beside["decode_tok_s"]}
    return out


def _stream_beside_a_prefill(url: str, other: list) -> dict:
    """The other user's stream; once it is decoding, a prefill of a new photo arrives."""
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(stream_chat(url, other, STREAM_TOKENS, seed=1)))
    thread.start()
    while thread.is_alive() and not requests.get(f"{url}/health", timeout=10).json()["busy"]:
        time.sleep(0.05)   # the bench's own poll: until the stream runs
    prefill_id = _prefill(url, 5, "What")
    thread.join()
    state = _ended(url, prefill_id)
    print(f"  other stream beside a prefill: {result['decode_tok_s']:.2f} tok/s; "
          f"prefill {json.dumps(state)}", file=sys.stderr)
    return result


def _log(what: str, *results: dict, prefill: dict | None = None) -> None:
    ttft = ", ".join(f"{r['ttft_s']:.2f} s" for r in results)
    print(f"  {what}: first token {ttft}; timings {[r['timings'] for r in results]}"
          + (f"; prefill {json.dumps(prefill)}" if prefill else ""), file=sys.stderr)


def _print(out: dict) -> None:
    t1, t2 = out["turn1_ttft_s"], out["turn2_ttft_s"]
    rows = [
        ("today: turn 1 (photo + question)", t1, "", ""),
        ("today: turn 2 (a follow-up)", t2, "", ""),
        ("prefilled, sent after it finished: after Send", out["after_prefill"]["ttft_s"],
         f"{out['after_prefill']['ttft_s'] / t2:.2f}x turn 2", "≤ 1.2x"),
        ("sent 2 s after attaching: from the attach",
         out["sent_during_prefill"]["ttft_from_attach_s"],
         f"{out['sent_during_prefill']['ttft_from_attach_s'] / t1:.2f}x turn 1", "≤ 1.05x"),
        ("three typing pauses: after Send", out["three_pauses"]["ttft_s"],
         f"{out['three_pauses']['ttft_s'] / t2:.2f}x turn 2", "≤ 1.2x"),
    ]
    if "llama_server_turn1_ttft_s" in out:
        rows.append(("llama-server: turn 1", out["llama_server_turn1_ttft_s"],
                     f"{out['llama_server_turn1_ttft_s'] / t1:.2f}x our turn 1", ""))
    print("\nPrefill while typing (time to first token)\n")
    print("| | first token | against | target |\n|---|---|---|---|")
    for name, seconds, ratio, target in rows:
        print(f"| {name} | {seconds:.2f} s | {ratio} | {target} |")
    encodes = (out["sent_during_prefill"]["images_encoded"],
               out["three_pauses"]["images_encoded"])
    print(f"\nimages encoded: sent during the prefill {encodes[0]}, three pauses {encodes[1]} "
          f"(prefills: {', '.join(out['three_pauses']['prefills'])})")
    s = out["other_stream"]
    print(f"another user's stream: {s['alone_tok_s']:.2f} tok/s alone, "
          f"{s['beside_prefill_tok_s']:.2f} beside a prefill "
          f"({s['beside_prefill_tok_s'] / s['alone_tok_s']:.2f}x; target ≥ 0.8x)")
