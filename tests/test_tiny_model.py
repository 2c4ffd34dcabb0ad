"""The random-weight test model: reproducible, and shaped the way llama.cpp expects Qwen3-VL.

Loading and running it in llama.cpp is covered by the engine tests; these only read the files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest

from vlserve.library.tinymodel import make_model


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, mmproj = make_model(tmp_path_factory.mktemp("tiny"), seed=7)
    return gguf.GGUFReader(model), gguf.GGUFReader(mmproj)


def test_same_seed_gives_identical_files(tmp_path):
    first = make_model(tmp_path / "a", seed=3)
    second = make_model(tmp_path / "b", seed=3)
    other = make_model(tmp_path / "c", seed=4)
    assert [sha256(p) for p in first] == [sha256(p) for p in second]
    assert sha256(first[0]) != sha256(other[0])


def test_metadata_matches_between_model_and_mmproj(tiny):
    text, vision = tiny
    assert field(text, "general.architecture") == "qwen3vl"
    assert field(vision, "general.architecture") == "clip"
    assert field(vision, "clip.projector_type") == "qwen3vl_merger"

    n_deepstack = sum(field(vision, "clip.vision.is_deepstack_layers"))
    assert n_deepstack >= 1
    assert field(text, "qwen3vl.n_deepstack_layers") == n_deepstack
    assert n_deepstack < field(text, "qwen3vl.block_count")

    head_dim = field(text, "qwen3vl.attention.key_length")
    assert sum(field(text, "qwen3vl.rope.dimension_sections")) == head_dim // 2
    assert field(vision, "clip.vision.projection_dim") == field(text, "qwen3vl.embedding_length")


def test_special_tokens(tiny):
    text, _ = tiny
    tokens = field(text, "tokenizer.ggml.tokens")
    types = field(text, "tokenizer.ggml.token_type")
    assert field(text, "tokenizer.ggml.model") == "gpt2"
    assert tokens[field(text, "tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    for special in ("<|im_start|>", "<|image_pad|>", "<|vision_start|>", "<|endoftext|>"):
        assert types[tokens.index(special)] == gguf.TokenType.CONTROL


def test_output_head_bans_non_printable_tokens(tiny):
    text, _ = tiny
    tensors = {t.name: t.data for t in text.tensors}
    embd, out = tensors["token_embd.weight"], tensors["output.weight"]
    tokens = field(text, "tokenizer.ggml.tokens")

    assert np.all(embd[:, 0] == embd[0, 0]) and embd[0, 0] > 0  # the constant bias channel
    banned = out[:, 0] < 0
    assert banned[tokens.index("<|im_end|>")] and banned[tokens.index("Ċ")]  # special, "\n"
    assert not banned[tokens.index("a")] and not banned[tokens.index("Ġthe")]


def test_chat_template_renders_images_and_text(tiny):
    """The generated model carries Qwen3-VL's own template: rendered as transformers does."""
    from transformers.utils.chat_template_utils import render_jinja_template
    text, _ = tiny
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is "},
                                     {"type": "image_url", "image_url": {"url": "x"}},
                                     {"type": "image"}]},
    ]
    [rendered], _ = render_jinja_template([messages], chat_template=field(
        text, "tokenizer.chat_template"), add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is <|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


REAL_TEMPLATE = Path(__file__).parent / "fixtures" / "qwen3vl-8b-instruct.jinja"
REAL_TEMPLATE_SHA256 = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"


def test_the_real_template_fixture_is_the_shipped_one_byte_for_byte():
    assert sha256(REAL_TEMPLATE) == REAL_TEMPLATE_SHA256 and REAL_TEMPLATE.stat().st_size == 5292


def test_the_generated_models_carry_that_template(tiny):
    """The demo and test models' default template is the same file, packaged."""
    from vlserve.library import tinymodel
    packaged = Path(tinymodel.__file__).parent / "qwen3vl-8b-instruct.jinja"
    assert sha256(packaged) == REAL_TEMPLATE_SHA256
    assert field(tiny[0], "tokenizer.chat_template") == REAL_TEMPLATE.read_text()


def test_a_given_template_is_embedded_with_the_tool_tokens(tmp_path):
    """A model carrying Qwen3-VL-8B-Instruct's own template, whose tool-call markup is one
    token each, as in the real vocabulary."""
    source = REAL_TEMPLATE.read_text()
    model, _ = make_model(tmp_path, template=source, name="qwen3vl-real-template")
    text = gguf.GGUFReader(model)
    assert field(text, "tokenizer.chat_template") == source
    tokens = field(text, "tokenizer.ggml.tokens")
    for markup in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"):
        assert tokens.count(markup) == 1
