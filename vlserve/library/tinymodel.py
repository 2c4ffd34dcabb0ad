"""Write a random-weight Qwen3-VL GGUF (text model + mmproj): the demo model (`--demo`), and
the model of the tests and benchmarks.

The files use the real Qwen3-VL layout (`qwen3vl` text architecture, `qwen3vl_merger`
projector with deepstack layers, byte-level BPE vocab with the Qwen special tokens and the
chat template of the official Qwen3-VL-8B-Instruct GGUF, tools section included), so
llama.cpp and vlserve run their real code paths on them; only the weights are random (and
the files say so: `vlserve.random_weights`). Generated text is gibberish, but always
printable ASCII (see `output_head`).

    python -m vlserve.library.tinymodel [--out-dir models/tiny] [--preset tiny|small|bench]
                                        [--thinking] [--quant f32|f16|q8_0|q4_0] [--seed 0]

(`python scripts/make_tiny_model.py …` in a checkout is the same command.)

Presets: `tiny` (default) is as small as llama.cpp accepts and generates in well under a
second; `bench` has Qwen3-VL-2B's real dimensions (~1.2 GB at q4_0) for speed measurements.
The same arguments always produce byte-identical files (for one GENERATOR_VERSION).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import gguf
import numpy as np

from .ggufmeta import RANDOM_WEIGHTS_KEY

QUANT_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
F32 = gguf.GGMLQuantizationType.F32
# Raised whenever a change here changes the files written: the demo model's file names carry
# it, so an older demo model on disk is not taken for the current one (it is made again).
GENERATOR_VERSION = 4   # 2: the tool-call tokens; 3: Qwen3-VL's own chat template;
                        # 4: marked as random weights (vlserve.random_weights)
DEMO_NAME = f"vlserve-demo-g{GENERATOR_VERSION}"


@dataclass(frozen=True)
class TextDims:
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx: int
    rope_sections: tuple[int, int, int, int]  # interleaved M-RoPE (t, h, w, -), sums to head_dim/2
    n_vocab: int | None  # None: just the tokenizer's own tokens; else padded with filler tokens


@dataclass(frozen=True)
class VisionDims:
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    deepstack_layers: tuple[int, ...]  # encoder layers whose output also feeds the LLM's first layers
    pos_grid: int  # learned position embeddings cover pos_grid x pos_grid patches
    patch_size: int = 16
    merge: int = 2  # 2x2 patches become one LLM token


@dataclass(frozen=True)
class Preset:
    text: TextDims
    vision: VisionDims
    quant: str


PRESETS = {
    "tiny": Preset(
        TextDims(n_embd=64, n_layer=3, n_head=4, n_head_kv=2, head_dim=16, n_ff=128, n_ctx=4096,
                 rope_sections=(3, 3, 2, 0), n_vocab=None),
        VisionDims(n_embd=32, n_layer=3, n_head=2, n_ff=64, deepstack_layers=(0, 1), pos_grid=8),
        quant="f32",  # exact weights; at this size quantizing saves nothing
    ),
    # A few tens of MB: big enough that a leaked copy per model switch shows in RSS.
    "small": Preset(
        TextDims(n_embd=256, n_layer=4, n_head=4, n_head_kv=2, head_dim=64, n_ff=512, n_ctx=8192,
                 rope_sections=(12, 10, 10, 0), n_vocab=32768),
        VisionDims(n_embd=64, n_layer=3, n_head=2, n_ff=128, deepstack_layers=(0, 1), pos_grid=8),
        quant="f32",
    ),
    # The tiny text model behind a vision tower big enough that encoding a photo takes a
    # second or more on a CPU: the page's prompt-progress test sees the bar for real.
    "vision": Preset(
        TextDims(n_embd=64, n_layer=3, n_head=4, n_head_kv=2, head_dim=16, n_ff=128, n_ctx=4096,
                 rope_sections=(3, 3, 2, 0), n_vocab=None),
        VisionDims(n_embd=512, n_layer=12, n_head=8, n_ff=2048, deepstack_layers=(3, 7),
                   pos_grid=32),
        quant="f32",
    ),
    # Qwen3-VL-2B-Instruct's text and vision dimensions; context length kept modest so that
    # loading with n_ctx=0 (= the model's) does not allocate a 262k-token KV cache.
    "bench": Preset(
        TextDims(n_embd=2048, n_layer=28, n_head=16, n_head_kv=8, head_dim=128, n_ff=6144,
                 n_ctx=32768, rope_sections=(24, 20, 20, 0), n_vocab=151936),
        VisionDims(n_embd=1024, n_layer=24, n_head=16, n_ff=4096, deepstack_layers=(5, 11, 17),
                   pos_grid=48),
        quant="q4_0",
    ),
}

# ---------------------------------------------------------------------------------------------
# Tokenizer

# Merges (in plain text) for a few common English pieces; each result becomes a token.
# Order is BPE rank, so every merge only uses bytes or results of earlier merges.
MERGES = [
    (" ", "t"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "n"), ("r", "e"),
    (" ", "a"), (" ", "s"), (" ", "w"), ("e", "n"), ("a", "t"), ("o", "r"), ("e", "s"),
    ("i", "s"), ("i", "t"), (" ", "c"), (" ", "o"), (" ", "b"), ("n", "d"), ("a", "r"),
    ("t", "h"), ("e", "d"), (" ", "f"), (" ", "p"), (" ", "i"), ("n", "g"), ("o", "u"),
    ("l", "l"), (" ", "m"), (" t", "he"), (" a", "nd"), (" o", "f"), (" t", "o"),
    (" i", "s"), (" i", "n"), ("in", "g"), ("\n", "\n"),
]

CONTROL = gguf.TokenType.CONTROL
USER_DEFINED = gguf.TokenType.USER_DEFINED
# Qwen3-VL's added tokens (those the chat template and the vision path use), with the token
# types its real GGUF has: "special" ones are CONTROL, <think>/</think> are plain added tokens.
SPECIAL_TOKENS = [
    ("<|endoftext|>", CONTROL),
    ("<|im_start|>", CONTROL),
    ("<|im_end|>", CONTROL),
    ("<|vision_start|>", CONTROL),
    ("<|vision_end|>", CONTROL),
    ("<|vision_pad|>", CONTROL),
    ("<|image_pad|>", CONTROL),
    ("<|video_pad|>", CONTROL),
    ("<think>", USER_DEFINED),
    ("</think>", USER_DEFINED),
    ("<tool_call>", USER_DEFINED),
    ("</tool_call>", USER_DEFINED),
    ("<tool_response>", USER_DEFINED),
    ("</tool_response>", USER_DEFINED),
]

# The `tokenizer.chat_template` of the official Qwen3-VL-8B-Instruct GGUF
# (Qwen/Qwen3-VL-8B-Instruct-GGUF, Apache-2.0), byte for byte (tests/fixtures/README.md has
# its hash): ChatML with Qwen's tools section, tool calls and `tool` role.
CHAT_TEMPLATE = resources.files(__package__).joinpath("qwen3vl-8b-instruct.jinja").read_text(
    encoding="utf-8")

# Qwen3-VL *Thinking* models open the reasoning block in the generation prompt, so their
# output starts inside it and carries only the closing tag.
THINKING_TEMPLATE = CHAT_TEMPLATE.replace("{{- '<|im_start|>assistant\\n' }}",
                                          "{{- '<|im_start|>assistant\\n<think>\\n' }}")
assert THINKING_TEMPLATE != CHAT_TEMPLATE


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used in byte-level BPE vocabularies."""
    direct = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
              *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in direct}
    shifted = (b for b in range(256) if b not in mapping)
    mapping.update((b, chr(256 + i)) for i, b in enumerate(shifted))
    return dict(sorted(mapping.items()))


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    printable: np.ndarray  # bool per token: decodes to printable ASCII only

    def id(self, token: str) -> int:
        return self.tokens.index(token)


def build_vocab(n_vocab: int | None) -> Vocab:
    """Bytes, merge results, Qwen special tokens, then UNUSED fillers up to n_vocab."""
    enc = byte_to_unicode()

    def bpe(text: str) -> str:
        return "".join(enc[b] for b in text.encode())

    texts = [chr(b) for b in range(256)] + [a + b for a, b in MERGES]  # latin-1 view of bytes
    tokens = [bpe(t) if len(t) > 1 else enc[ord(t)] for t in texts]
    assert len(set(tokens)) == len(tokens), "a merge result duplicates another token"
    printable = [all(" " <= c <= "~" for c in t) for t in texts]
    types = [gguf.TokenType.NORMAL] * len(tokens)

    tokens += [t for t, _ in SPECIAL_TOKENS]
    types += [kind for _, kind in SPECIAL_TOKENS]
    printable += [False] * len(SPECIAL_TOKENS)

    n_fill = (n_vocab or len(tokens)) - len(tokens)
    assert n_fill >= 0, f"n_vocab must be at least {len(tokens)}"
    tokens += [f"[PAD{i}]" for i in range(len(tokens), len(tokens) + n_fill)]
    types += [gguf.TokenType.UNUSED] * n_fill
    printable += [False] * n_fill

    merges = [f"{bpe(a)} {bpe(b)}" for a, b in MERGES]
    return Vocab(tokens, [int(t) for t in types], merges, np.array(printable))


def add_tokenizer(w: gguf.GGUFWriter, vocab: Vocab, thinking: bool = False,
                  template: str | None = None) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    # as in Qwen3-VL's GGUF: no BOS is prepended; <|im_end|> ends a turn, <|endoftext|> pads
    w.add_bos_token_id(vocab.id("<|endoftext|>"))
    w.add_eos_token_id(vocab.id("<|im_end|>"))
    w.add_eot_token_id(vocab.id("<|im_end|>"))
    w.add_pad_token_id(vocab.id("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(template or (THINKING_TEMPLATE if thinking else CHAT_TEMPLATE))


# ---------------------------------------------------------------------------------------------
# Weights

# Hidden dim 0 is a constant "bias channel": every input embedding (token or image) has
# BIAS_SCALE * sqrt(n_embd) there and no layer writes to it, so after the final RMSNorm it is
# large and positive.  The output head gives every token that is not printable ASCII a large
# negative weight on it (and nothing else), so sampling can only produce printable text.
BIAS_SCALE = 2.0
BANNED_WEIGHT = -50.0

Init = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def uniform(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform noise with the given std (uniform is ~2x faster to draw than normal)."""
    x = rng.random(shape, dtype=np.float32)
    x -= 0.5
    x *= np.float32(std * np.sqrt(12.0))
    return x


def ones(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape, np.float32)


def weight(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Rows are output features; scaled by fan-in so activations stay O(1) through the layers."""
    return uniform(rng, shape, 1.0 / np.sqrt(np.prod(shape[1:])))


def bias(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return uniform(rng, shape, 0.02)


def weight_sparing_channel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A layer writing into the residual stream; it must not touch the bias channel."""
    x = weight(rng, shape)
    x[0] = 0.0
    return x


def bias_sparing_channel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = bias(rng, shape)
    x[0] = 0.0
    return x


def bias_setting_channel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Final projector bias: image embeddings carry the bias channel like token embeddings."""
    x = bias(rng, shape)
    x[0] = BIAS_SCALE * np.sqrt(shape[0])
    return x


def token_embd(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = uniform(rng, shape, 1.0)
    x[:, 0] = BIAS_SCALE * np.sqrt(shape[1])
    return x


def output_head(printable: np.ndarray, favoured: dict[int, float] | None = None) -> Init:
    """Random logits for printable tokens; a huge negative logit for every other token,
    except `favoured` ones: a fixed logit of their own (a model that, say, opens a tool call
    now and then)."""
    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        x = weight(rng, shape)
        x[:, 0] = 0.0
        x[~printable] = 0.0
        x[~printable, 0] = BANNED_WEIGHT
        for token, logit in (favoured or {}).items():
            x[token, 0] = logit
        return x
    return init


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # numpy order, i.e. GGUF dims reversed (rows = output features)
    qtype: gguf.GGMLQuantizationType
    init: Init


def encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F32:
        return data
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def write_gguf(path: Path, w: gguf.GGUFWriter, tensors: list[Tensor], seed: list[int]) -> None:
    """Generate and write the tensors one at a time, so bench weights never sit in RAM at once.

    Writes to a temporary name of its own, then renames, so a reader never sees a half-written
    file and two writers at once (two servers starting with --demo) never share one.
    """
    for t in tensors:
        w.add_tensor_info(t.name, t.shape, np.float32, nbytes(t.shape, t.qtype), raw_dtype=t.qtype)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        rng = np.random.default_rng(seed)
        for t in tensors:
            w.write_tensor_data(encode(t.init(rng, t.shape), t.qtype))
        w.close()
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)   # gone already when the rename happened


def text_tensors(d: TextDims, vocab: Vocab, qtype: gguf.GGMLQuantizationType,
                 favoured: dict[int, float] | None = None) -> list[Tensor]:
    n_vocab = len(vocab.tokens)
    q_dim, kv_dim = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    tensors = [Tensor("token_embd.weight", (n_vocab, d.n_embd), qtype, token_embd)]
    for i in range(d.n_layer):
        p = f"blk.{i}."
        tensors += [
            Tensor(p + "attn_norm.weight", (d.n_embd,), F32, ones),
            Tensor(p + "attn_q.weight", (q_dim, d.n_embd), qtype, weight),
            Tensor(p + "attn_k.weight", (kv_dim, d.n_embd), qtype, weight),
            Tensor(p + "attn_v.weight", (kv_dim, d.n_embd), qtype, weight),
            Tensor(p + "attn_q_norm.weight", (d.head_dim,), F32, ones),
            Tensor(p + "attn_k_norm.weight", (d.head_dim,), F32, ones),
            Tensor(p + "attn_output.weight", (d.n_embd, q_dim), qtype, weight_sparing_channel),
            Tensor(p + "ffn_norm.weight", (d.n_embd,), F32, ones),
            Tensor(p + "ffn_gate.weight", (d.n_ff, d.n_embd), qtype, weight),
            Tensor(p + "ffn_up.weight", (d.n_ff, d.n_embd), qtype, weight),
            Tensor(p + "ffn_down.weight", (d.n_embd, d.n_ff), qtype, weight_sparing_channel),
        ]
    tensors += [
        Tensor("output_norm.weight", (d.n_embd,), F32, ones),
        # untied from token_embd (unlike the real 2B) because of the bias channel trick
        Tensor("output.weight", (n_vocab, d.n_embd), qtype, output_head(vocab.printable, favoured)),
    ]
    return tensors


def write_text_model(path: Path, d: TextDims, vision: VisionDims, quant: str, seed: int,
                     thinking: bool = False, template: str | None = None,
                     favour: dict[str, float] | None = None) -> None:
    vocab = build_vocab(d.n_vocab)
    w = gguf.GGUFWriter(None, "qwen3vl")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(path.stem)
    w.add_bool(RANDOM_WEIGHTS_KEY, True)   # the server caps its answers and says so
    w.add_context_length(d.n_ctx)
    w.add_embedding_length(d.n_embd)
    w.add_block_count(d.n_layer)
    w.add_feed_forward_length(d.n_ff)
    w.add_head_count(d.n_head)
    w.add_head_count_kv(d.n_head_kv)
    w.add_key_length(d.head_dim)
    w.add_value_length(d.head_dim)
    w.add_rope_freq_base(5_000_000.0)
    w.add_rope_dimension_sections(list(d.rope_sections))
    w.add_layer_norm_rms_eps(1e-6)
    # llama.cpp reads n_embd * (1 + this) wide image embeddings; must match the mmproj
    w.add_num_deepstack_layers(len(vision.deepstack_layers))
    w.add_file_type(FILE_TYPES[quant])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, vocab, thinking, template)
    favoured = {vocab.id(text): weight for text, weight in (favour or {}).items()}
    write_gguf(path, w, text_tensors(d, vocab, QUANT_TYPES[quant], favoured), [seed, 0])


def vision_tensors(v: VisionDims, n_out: int, qtype: gguf.GGMLQuantizationType) -> list[Tensor]:
    n, merged = v.n_embd, v.n_embd * v.merge**2
    tensors = [
        # Qwen's Conv3D patch embedding over 2 frames, split into one Conv2D per frame
        Tensor("v.patch_embd.weight", (n, 3, v.patch_size, v.patch_size), qtype, weight),
        Tensor("v.patch_embd.weight.1", (n, 3, v.patch_size, v.patch_size), qtype, weight),
        Tensor("v.patch_embd.bias", (n,), F32, bias),
        # f32: llama.cpp's CPU interpolation of position embeddings only handles f32
        Tensor("v.position_embd.weight", (v.pos_grid**2, n), F32, weight),
    ]
    for i in range(v.n_layer):
        p = f"v.blk.{i}."
        tensors += [
            Tensor(p + "ln1.weight", (n,), F32, ones),
            Tensor(p + "ln1.bias", (n,), F32, bias),
            Tensor(p + "attn_qkv.weight", (3 * n, n), qtype, weight),
            Tensor(p + "attn_qkv.bias", (3 * n,), F32, bias),
            Tensor(p + "attn_out.weight", (n, n), qtype, weight),
            Tensor(p + "attn_out.bias", (n,), F32, bias),
            Tensor(p + "ln2.weight", (n,), F32, ones),
            Tensor(p + "ln2.bias", (n,), F32, bias),
            Tensor(p + "ffn_up.weight", (v.n_ff, n), qtype, weight),
            Tensor(p + "ffn_up.bias", (v.n_ff,), F32, bias),
            Tensor(p + "ffn_down.weight", (n, v.n_ff), qtype, weight),
            Tensor(p + "ffn_down.bias", (n,), F32, bias),
        ]
        if i in v.deepstack_layers:
            # deepstack features are added to the LLM's residual stream after its first layers
            p = f"v.deepstack.{i}."
            tensors += [
                Tensor(p + "norm.weight", (merged,), F32, ones),
                Tensor(p + "norm.bias", (merged,), F32, bias),
                Tensor(p + "fc1.weight", (merged, merged), qtype, weight),
                Tensor(p + "fc1.bias", (merged,), F32, bias),
                Tensor(p + "fc2.weight", (n_out, merged), qtype, weight_sparing_channel),
                Tensor(p + "fc2.bias", (n_out,), F32, bias_sparing_channel),
            ]
    tensors += [
        Tensor("v.post_ln.weight", (n,), F32, ones),
        Tensor("v.post_ln.bias", (n,), F32, bias),
        # merger MLP over 2x2 merged patches -> LLM embedding (HF linear_fc1 / linear_fc2)
        Tensor("mm.0.weight", (merged, merged), qtype, weight),
        Tensor("mm.0.bias", (merged,), F32, bias),
        Tensor("mm.2.weight", (n_out, merged), qtype, weight_sparing_channel),
        Tensor("mm.2.bias", (n_out,), F32, bias_setting_channel),
    ]
    return tensors


def mmproj_quant(quant: str) -> str:
    """f16 like released mmproj files; f32 only alongside an f32 text model."""
    return "f32" if quant == "f32" else "f16"


def write_mmproj(path: Path, v: VisionDims, n_out: int, quant: str, seed: int) -> None:
    w = gguf.GGUFWriter(None, "clip")
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(path.stem)
    w.add_file_type(FILE_TYPES[quant])
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(gguf.VisionProjectorType.QWEN3VL)
    w.add_vision_projection_dim(n_out)
    w.add_vision_image_size(v.pos_grid * v.patch_size)
    w.add_vision_patch_size(v.patch_size)
    w.add_vision_embedding_length(v.n_embd)
    w.add_vision_feed_forward_length(v.n_ff)
    w.add_vision_block_count(v.n_layer)
    w.add_vision_head_count(v.n_head)
    w.add_vision_attention_layernorm_eps(1e-6)
    w.add_vision_image_mean([0.5, 0.5, 0.5])
    w.add_vision_image_std([0.5, 0.5, 0.5])
    w.add_vision_use_gelu(True)
    w.add_vision_spatial_merge_size(v.merge)
    w.add_vision_is_deepstack_layers([i in v.deepstack_layers for i in range(v.n_layer)])
    write_gguf(path, w, vision_tensors(v, n_out, QUANT_TYPES[quant]), [seed, 1])


def make_model(out_dir: str | os.PathLike, preset: str = "tiny", quant: str | None = None,
               seed: int = 0, thinking: bool = False, *, name: str | None = None,
               keep_existing: bool = False, template: str | None = None,
               favour: dict[str, float] | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/<name>-<quant>.gguf` and `mmproj-<name>-<quant>.gguf`; return both
    paths. `name` defaults to `qwen3vl-<preset>[-thinking]`. `thinking` gives it a Thinking
    model's template (the prompt opens `<think>`); `template` embeds another chat template
    (a real model's, e.g. tests/fixtures/qwen3vl-8b-instruct.jinja). `favour` gives special
    tokens a fixed logit weight (by text: with {"<tool_call>": 0.3} the tiny model opens a
    tool call by itself after some 15 characters of noise, on average). `keep_existing`: a file
    already there is left as it is (its name must then say which generator wrote it)."""
    spec = PRESETS[preset]
    quant = quant or spec.quant
    # llama.cpp adds deepstack features after each of the first n layers, and fails an assert
    # if that includes the last layer (whose output rows are already pruned to the outputs)
    assert len(spec.vision.deepstack_layers) < spec.text.n_layer
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or (f"qwen3vl-{preset}-thinking" if thinking else f"qwen3vl-{preset}")
    model = out / f"{name}-{quant}.gguf"
    mmproj = out / f"mmproj-{name}-{mmproj_quant(quant)}.gguf"
    if not (keep_existing and model.is_file()):
        write_text_model(model, spec.text, spec.vision, quant, seed, thinking, template, favour)
    if not (keep_existing and mmproj.is_file()):
        write_mmproj(mmproj, spec.vision, spec.text.n_embd, mmproj_quant(quant), seed)
    return model, mmproj


def demo_model(folder: Path) -> tuple[Path, Path]:
    """The demo model (`--demo`) in `folder`: written the first time only, then served as it
    is; GENERATOR_VERSION in its names makes a newer generator write its own."""
    return make_model(folder, name=DEMO_NAME, keep_existing=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default="models/tiny", help="directory for both files")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--quant", choices=list(QUANT_TYPES),
                    help="text weight type (default: f32 for tiny, q4_0 for bench)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thinking", action="store_true", help="a Thinking model's chat template")
    ap.add_argument("--template", type=Path, help="embed this chat template (a Jinja file)")
    ap.add_argument("--name", help="file name stem (default: qwen3vl-<preset>[-thinking])")
    args = ap.parse_args()
    template = args.template.read_text() if args.template else None
    for path in make_model(args.out_dir, args.preset, args.quant, args.seed, args.thinking,
                           name=args.name, template=template):
        print(path)


if __name__ == "__main__":
    main()
