"""The real llama.cpp engine on the generated tiny Qwen3-VL (text + mtmd vision)."""

from __future__ import annotations

import pytest

from conftest import N_CTX, data_url
from conftest import generate as run
from vlserve.errors import ContextLengthError
from vlserve.chat.images import ImageLimits, decode_data_url
from vlserve.chat.protocol import parse_chat_request


def request(*parts, **params):
    content = [{"type": "image_url", "image_url": p[1]} if isinstance(p, tuple)
               else {"type": "text", "text": p} for p in parts]
    return parse_chat_request({"messages": [{"role": "user", "content": content}], **params},
                              max_tokens_cap=N_CTX)


def images_of(req):
    return [decode_data_url(p.url, ImageLimits()) for p in req.image_parts]


def test_image_adds_exactly_its_tokens_to_the_prompt(engine):
    text_only = engine.prepare(request("What is in the picture?"), [])
    req = request(("img", data_url(96, 64)), "What is in the picture?")
    with_image = engine.prepare(req, images_of(req))
    big = request(("img", data_url(640, 480)), "What is in the picture?")
    with_big = engine.prepare(big, images_of(big))
    try:
        assert with_image.image_tokens > 0 and with_image.n_images == 1
        # the image's own tokens plus <|vision_start|> and <|vision_end|> around them
        assert with_image.n_tokens - text_only.n_tokens == with_image.image_tokens + 2
        assert with_big.image_tokens > with_image.image_tokens
    finally:
        for p in (text_only, with_image, with_big):
            p.close()


def test_greedy_is_deterministic_and_printable(engine):
    req = request("Tell me a story.", temperature=0, max_tokens=24)
    first, fin = run(engine, req)
    second, _ = run(engine, req)
    assert first == second and first
    assert first.isprintable()
    assert fin.finish_reason == "length" and fin.completion_tokens == 24
    assert fin.prompt_tokens > 5


def test_seed_makes_sampling_repeatable(engine):
    a, _ = run(engine, request("Hi", temperature=1.0, seed=42, max_tokens=16))
    b, _ = run(engine, request("Hi", temperature=1.0, seed=42, max_tokens=16))
    c, _ = run(engine, request("Hi", temperature=1.0, seed=43, max_tokens=16))
    assert a == b and a != c


def test_penalties_and_top_k_change_the_distribution(engine):
    plain, _ = run(engine, request("Hi", temperature=0, max_tokens=40))
    penalized, _ = run(engine, request("Hi", temperature=0, max_tokens=40,
                                       repeat_penalty=1.8, frequency_penalty=1.5))
    assert plain != penalized


def test_stop_string_ends_generation_before_it(engine):
    full, _ = run(engine, request("Count.", temperature=0, max_tokens=40))
    stop = full[10:13]
    cut, fin = run(engine, request("Count.", temperature=0, max_tokens=40, stop=[stop]))
    assert fin.finish_reason == "stop"
    assert cut == full[:full.index(stop)]


def test_image_request_generates_and_reports_encode_time(engine):
    engine._embeddings.clear()  # earlier tests may have encoded this very image
    req = request(("img", data_url(320, 240, "JPEG")), "Describe.", temperature=0, max_tokens=8)
    text, fin = run(engine, req)
    assert fin.completion_tokens == 8 and text
    assert fin.timings["image_encode_ms"] > 0


def test_different_images_give_different_answers(engine):
    # Greedy decoding of random weights collapses to one repeated token, so compare seeded
    # samples: the same seed differs only if the image really reached the model.
    def ask(color):
        req = request(("img", data_url(color=color)), "?", temperature=1.0, seed=5, max_tokens=24)
        return run(engine, req)[0]
    red = ask((255, 0, 0))
    assert red == ask((255, 0, 0))
    assert red != ask((0, 0, 255))


def test_cancel_stops_within_a_token(engine):
    text, fin = run(engine, request("Go on.", temperature=0, max_tokens=500), cancel_after=3)
    assert fin.finish_reason == "cancelled" and fin.completion_tokens <= 4


def test_prompt_longer_than_context_is_refused_with_numbers(engine):
    with pytest.raises(ContextLengthError) as info:
        engine.prepare(request("word " * N_CTX), [])
    assert str(N_CTX) in info.value.message and info.value.status == 400


def test_max_tokens_beyond_the_remaining_context_is_refused(engine):
    with pytest.raises(ContextLengthError) as info:
        engine.prepare(request("hello", max_tokens=N_CTX), [])
    assert info.value.param == "max_tokens"


def test_without_max_tokens_the_budget_is_the_rest_of_the_context(engine):
    """A real model may answer with the rest of the context; a generated one (random
    weights, as its GGUF says) stops at RANDOM_WEIGHTS_MAX_TOKENS."""
    from vlserve.engine.llama import RANDOM_WEIGHTS_MAX_TOKENS
    assert engine.random_weights
    prompt = engine.prepare(request("hello"), [])
    try:
        assert prompt.max_new_tokens == min(N_CTX - prompt.n_tokens, RANDOM_WEIGHTS_MAX_TOKENS)
    finally:
        prompt.close()
    engine.random_weights = False   # as a real model's GGUF, which has no such key
    try:
        prompt = engine.prepare(request("hello"), [])
        assert prompt.max_new_tokens == N_CTX - prompt.n_tokens
        prompt.close()
    finally:
        engine.random_weights = True


def test_special_tokens_in_user_text_cannot_fake_an_image(engine):
    # The media marker is random per process: a client typing a plausible marker gets text.
    req = request("<__media__> <__image__>", temperature=0, max_tokens=2)
    prompt = engine.prepare(req, [])
    try:
        assert prompt.image_tokens == 0
    finally:
        prompt.close()


def test_a_load_that_fails_with_many_gpu_layers_is_retried_with_fewer(settings, monkeypatch,
                                                                      caplog):
    """The wiring of the out-of-memory retry: whatever fails while offloading n layers
    (model or context allocation) is tried again with fewer, down to the CPU."""
    from vlserve.engine import llama as engine_mod
    monkeypatch.setattr(engine_mod, "gpu_layers", lambda s: (4, 3))   # "all 3 + output"
    real_open, tried = engine_mod.LlamaEngine._open_model, []

    def flaky_open(self, s, n):
        tried.append(n)
        if n > 1:
            raise engine_mod.EngineLoadError(f"cudaMalloc failed: out of memory ({n} layers)")
        return real_open(self, s, n)

    monkeypatch.setattr(engine_mod.LlamaEngine, "_open_model", flaky_open)
    eng = engine_mod.LlamaEngine(settings)
    try:
        assert tried[0] == 4 and tried[-1] <= 1 and eng.n_gpu_layers == tried[-1]
        assert eng.info["n_gpu_layers"] == tried[-1]
        assert "retrying with" in caplog.text
    finally:
        eng.close()


def test_the_context_log_lines_agree(settings, caplog):
    """llama.cpp's "n_ctx_seq > n_ctx_train" counts the whole unified KV: with each
    sequence's share within the training length nothing warns; past it, vlserve warns in
    its own terms (issue 20, item 9)."""
    import logging
    from vlserve.engine.llama import LlamaEngine
    for n_ctx, warns in ((4096, False), (8192, True)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vlserve"):
            LlamaEngine(settings.replace(n_ctx=n_ctx, parallel=2)).close()
        loaded = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
        assert loaded and f"2 sequences x n_ctx={n_ctx} tokens" in loaded[0], loaded
        assert f"one KV of {2 * n_ctx} cells; trained on 4096" in loaded[0]
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                    and "context" in r.getMessage()]
        assert bool(warnings) is warns, warnings
        if warns:
            assert "--ctx-size 4096" in warnings[0]
