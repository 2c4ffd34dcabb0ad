"""The prefix cache: follow-up turns evaluate only their new tokens, and a cached answer is
the answer a cold engine gives to the same conversation."""

from __future__ import annotations

import pytest

from conftest import N_CTX, data_url
from conftest import generate as run
from vlserve.engine.kvcache import ImageUnit, KVRecord, plan_reuse
from vlserve.chat.protocol import parse_chat_request

# ---- plan_reuse, a table ------------------------------------------------------------------------

IMG = ImageUnit("img-a", 12, 4)
IMG_B = ImageUnit("img-b", 12, 4)
# token id -> bytes: 1..9 are single letters; 10 = "ab", 11 = "cd", 12 = "abc"
PIECES = {1: b"a", 2: b"b", 3: b"c", 4: b"d", 5: b"e", 6: b"<", 7: b">", 8: b"x", 9: b"y",
          10: b"ab", 11: b"cd", 12: b"abc"}


def piece_of(units):
    return lambda i: PIECES[units[i]]


@pytest.mark.parametrize("cached, new, expected", [
    ([], [1, 2, 3], (0, 0)),
    ([1, 2, 3], [1, 2, 3, 4, 5], (3, 3)),                 # plain extension
    ([1, 2, 3], [1, 2, 3], (2, 2)),                       # identical: re-evaluate the last token
    ([1, IMG, 2, 3], [1, IMG, 2, 4], (3, 3)),             # diverges after the image
    ([1, IMG, 2], [1, IMG_B, 2], (1, 1)),                 # another image: cut before it
    ([6, 10, 11, 7], [6, 1, 2, 3, 4, 7, 8], (4, 6)),      # same text, other token split
    ([6, 12, 4], [6, 10, 11, 8], (3, 3)),                 # "abc|d" vs "ab|cd": meet after "abcd"
    ([6, 1, 2, 3, 4, 5], [6, 10, 3], (3, 2)),             # answer cut short (stop string)
    ([6, 1, 2, 8], [6, 1, 2, 9, 7], (3, 3)),              # a real mismatch falls back
    ([6, 10, 7], [6, 1, 2], (1, 1)),                      # all text matches: back off one boundary
], ids=["empty", "extend", "identical", "after-image", "other-image", "resplit",
        "no-common-boundary", "truncated-answer", "mismatch", "full-text-match"])
def test_plan_reuse(cached, new, expected):
    keep, skip = plan_reuse(cached, piece_of(cached), new, piece_of(new))
    assert (keep, skip) == expected
    assert skip < len(new) or not new
    # what is kept and what is skipped spell the same bytes
    assert b"".join(PIECES[u] for u in cached[:keep] if isinstance(u, int)) == \
        b"".join(PIECES[u] for u in new[:skip] if isinstance(u, int))


def test_kv_record_truncate_returns_the_first_position_to_remove():
    rec = KVRecord()
    for unit, n_pos in ((1, 1), (IMG, 4), (2, 1), (3, 1)):
        rec.append(unit, n_pos)
    assert rec.end == 7
    assert rec.truncate(2) == 5 and rec.units == [1, IMG]
    assert rec.truncate(5) == 5


# ---- the real engine ---------------------------------------------------------------------------

def conversation(*turns, max_tokens=12):
    messages = []
    for role, content in turns:
        if isinstance(content, tuple):
            parts = [{"type": "image_url", "image_url": {"url": c[1]}} if isinstance(c, tuple)
                     else {"type": "text", "text": c} for c in content]
            messages.append({"role": role, "content": parts})
        else:
            messages.append({"role": role, "content": content})
    return parse_chat_request({"messages": messages, "temperature": 0, "max_tokens": max_tokens},
                              max_tokens_cap=N_CTX)


def reset(engine):
    """An empty KV and embedding cache: each test states its own history."""
    engine._forget_kv()
    engine._embeddings.clear()


def tokens(engine, text: str, special: bool = False) -> list[int]:
    return engine._model.tokenize(text.encode(), add_bos=False, special=special)


def follow_up_overhead(engine) -> int:
    """Tokens a follow-up must evaluate besides its question: the template around the new
    user message (on the tiny vocab "user" and "assistant" are spelt letter by letter; on
    Qwen's they are one token each) and the previous answer's last sampled token, which
    is never decoded."""
    around = "<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    return len(tokens(engine, around, special=True)) + 1


def cold(engine, req):
    engine._forget_kv()
    return run(engine, req)


PHOTO = ("img", data_url(320, 240, "JPEG"))
QUESTION = "What is on the table in this picture, and what colour is it? " * 3


def chat_turns(engine, first, follow_ups):
    """Run a conversation turn by turn on the warm engine; returns the finishes per turn and
    the final request."""
    turns = [("system", "You are terse."), ("user", first)]
    finishes = []
    for follow_up in [None, *follow_ups]:
        if follow_up is not None:
            turns += [("user", follow_up)]
        text, fin = run(engine, conversation(*turns))
        finishes.append(fin)
        turns.append(("assistant", text))
    return finishes, turns


def test_follow_ups_evaluate_only_the_new_message_and_encode_no_image(engine):
    reset(engine)
    follow_ups = ["And the chair?", "Anything else?", "Thanks, and the wall?"]
    finishes, _ = chat_turns(engine, (PHOTO, QUESTION), follow_ups)
    first, *later = finishes
    assert first.timings["images_encoded"] == 1 and first.cached_tokens == 0
    for fin, question in zip(later, follow_ups, strict=True):
        t = fin.timings
        assert t["images_encoded"] == 0 and t["images_from_cache"] == 0
        # only the new user message and the template around it
        assert t["prompt_tokens_evaluated"] == len(tokens(engine, question)) + follow_up_overhead(engine)
        assert t["cached_tokens"] > first.prompt_tokens


def test_cached_follow_up_answers_like_a_cold_engine(engine):
    reset(engine)
    _, turns = chat_turns(engine, (PHOTO, QUESTION), ["And the chair?", "One more thing?"])
    final = conversation(*turns[:-1])           # the last turn, asked again
    warm_text, warm = run(engine, final)        # served from the cache (a regenerate)
    cold_text, _ = cold(engine, final)
    assert warm.cached_tokens > 0 and warm.timings["images_encoded"] == 0
    assert warm_text == cold_text == turns[-1][1]


def test_text_only_conversation_matches_cold_too(engine):
    reset(engine)
    _, turns = chat_turns(engine, "Tell me about rivers.", ["Longer?", "Which is widest?"])
    final = conversation(*turns[:-1], ("user", "And the deepest?"))
    warm_text, warm = run(engine, final)
    cold_text, _ = cold(engine, final)
    assert warm.timings["prompt_tokens_evaluated"] < 40
    assert warm_text == cold_text


def test_edit_in_the_middle_falls_back_from_that_point(engine):
    reset(engine)
    _, turns = chat_turns(engine, (PHOTO, QUESTION), ["And the chair?", "And the floor?"])
    edited = list(turns)
    edited[3] = ("user", "And the lamp?")        # edit the second user message
    final = conversation(*edited[:4])
    warm_text, warm = run(engine, final)
    cold_text, _ = cold(engine, final)
    assert warm_text == cold_text
    assert warm.timings["images_encoded"] == 0   # the image precedes the edit: still cached
    assert warm.cached_tokens > 0 and warm.timings["prompt_tokens_evaluated"] < 30


def test_image_that_left_the_prefix_comes_from_the_embedding_cache(engine):
    reset(engine)
    req = conversation(("system", "A"), ("user", (PHOTO, "Describe.")))
    first_text, first = run(engine, req)
    assert first.timings["images_encoded"] == 1
    # a new system prompt changes the prefix before the image: KV reuse stops there,
    # but the vision encoder is not run again
    other = conversation(("system", "B"), ("user", (PHOTO, "Describe.")))
    text, fin = run(engine, other)
    assert fin.timings["images_encoded"] == 0 and fin.timings["images_from_cache"] == 1
    cold_engine_text, _ = cold_with_fresh_embeddings(engine, other)
    assert text == cold_engine_text


def cold_with_fresh_embeddings(engine, req):
    engine._embeddings.clear()
    return cold(engine, req)


def test_another_image_is_never_taken_from_the_cache(engine):
    reset(engine)
    a = conversation(("user", (("img", data_url(color=(255, 0, 0))), "Describe.")))
    b = conversation(("user", (("img", data_url(color=(0, 0, 255))), "Describe.")))
    run(engine, a)
    _, fin = run(engine, b)
    assert fin.timings["images_encoded"] == 1 and fin.timings["images_from_cache"] == 0


def test_usage_reports_cached_tokens_openai_style(client):
    body = {"messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 4, "temperature": 0}
    client.post("/v1/chat/completions", json=body)
    again = client.post("/v1/chat/completions", json=body).get_json()
    details = again["usage"]["prompt_tokens_details"]
    assert details["cached_tokens"] == again["usage"]["prompt_tokens"] - 1
    assert again["timings"]["cached_tokens"] == details["cached_tokens"]


def test_memory_that_cannot_be_trimmed_starts_over_correctly(engine, monkeypatch):
    """Recurrent and hybrid models refuse partial removal (llama_memory_seq_rm -> False):
    the engine must then evaluate everything again, and answer the same."""
    import vlserve.engine.llama as engine_module
    reset(engine)
    _, turns = chat_turns(engine, (PHOTO, QUESTION), ["And the chair?"])
    final = conversation(*turns[:-1])
    monkeypatch.setattr(engine_module.llama_cpp, "llama_memory_seq_rm", lambda *a: False)
    text, fin = run(engine, final)
    assert fin.cached_tokens == 0 and fin.timings["prompt_tokens_evaluated"] == fin.prompt_tokens
    assert text == turns[-1][1]
