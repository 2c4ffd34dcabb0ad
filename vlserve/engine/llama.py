"""The llama.cpp engine: one model, one context, one mtmd (vision) context, one KV state.

Deliberately not built on llama-cpp-python's `Llama` / `MTMDChatHandler`: the handler
clears the KV cache on every call, fetches any http URL it is handed and under-counts image
tokens, and `Llama` hides model parameters we need (`use_extra_bufts`). We use the thin
`_internals` wrappers for ownership and the C API for the rest, with llama-cpp-python
pinned to one version in setup.cfg.

Threading: `prepare()` and `count_tokens()` (template + tokenize) may run on HTTP threads, as
llama.cpp's own server does, but only while the worker's lease keeps this engine loaded
(worker.Worker.lease); `generate()` and the batcher run only on the worker thread.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

import cachetools
import llama_cpp
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp import mtmd_cpp

from ..library import gpu
from . import llamalog
from .batch import Batcher, Sequence
from .guide import Guide, Guides, logits_row
from .output import Delta, Finished
from ..config import Settings, context_size
from ..errors import ContextLengthError, ImageError, InternalError, InvalidRequestError
from ..chat.images import PreparedImage
from ..library.disk import PairingError, check_pair
from ..library.ggufmeta import RANDOM_WEIGHTS_KEY
from .kvcache import ImageUnit, Unit, n_tokens
from ..chat.protocol import ChatRequest, ImagePart, Message, SamplingParams, TextPart
from ..chat.reasoning import template_opens_thinking
from ..chat.template import ChatTemplate
from ..chat.tools import Tools

log = logging.getLogger("vlserve.engine")

FLASH_ATTN = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
              "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}
PENALTY_LAST_N = 64
# Answers of a model with random weights (the demo) stop here unless max_tokens says
# otherwise: noise has no end of its own and would fill the whole context.
RANDOM_WEIGHTS_MAX_TOKENS = 256


class EngineLoadError(RuntimeError):
    """The model or projector could not be loaded; the message names the file."""


@dataclass
class Prompt:
    """A tokenized request, ready for the worker. Owns native chunks until closed."""
    units: list[Unit]           # text token ids and images, in order
    images: dict[int, object]   # unit index -> mtmd image chunk (valid until close)
    n_tokens: int               # every token that occupies the context, image tokens included
    max_new_tokens: int
    thinking: bool = False      # the output starts inside a <think> block the prompt opened
    _chunks: object = None
    _free: Callable[[object], None] | None = None

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def image_tokens(self) -> int:
        return sum(self.units[i].n_tokens for i in self.images)

    def close(self) -> None:
        if self._free and self._chunks:
            self._free(self._chunks)
        self._chunks, self.images = None, {}


class Engine(Protocol):
    """What the worker and the API need from an engine."""
    model_id: str
    n_ctx: int
    info: dict
    guides: Guides          # response_format grammars for this model's vocabulary

    def prepare(self, request: ChatRequest, images: list[PreparedImage]) -> Prompt: ...
    def count_tokens(self, messages: tuple[Message, ...],
                     images: Mapping[ImagePart, PreparedImage],
                     tools: Tools | None = None) -> int: ...
    def generate(self, prompt: Prompt, params: SamplingParams,
                 cancelled: Callable[[], bool]) -> Iterator[Delta | Finished]: ...
    def cache_stats(self) -> dict: ...
    def runner(self): ...   # the batcher the worker drives (batch.Batcher)
    def close(self) -> None: ...


# ---- the llama.cpp engine ----------------------------------------------------------------

def _model_params(s: Settings, n_gpu_layers: int,
                  progress: Callable[[float], None] | None) -> llama_cpp.llama_model_params:
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers < 0 else n_gpu_layers
    # Repacking speeds quantized matmuls on CPU but crashes on some virtual CPUs (AMX).
    params.use_extra_bufts = s.repack
    if progress is not None:
        def report(fraction, _user_data):
            progress(fraction)
            return True  # keep loading
        params.progress_callback = llama_cpp.llama_progress_callback(report)
    return params


def gpu_layers(s: Settings) -> tuple[int, int]:
    """(layers to offload, the model's layer count): what --n-gpu-layers says, or with
    `auto` (None) what fits in free GPU memory next to the KV cache and the projector."""
    layout = gpu.read_layout(s.model)
    if not llama_cpp.llama_supports_gpu_offload():
        return 0, layout.n_layers
    if s.n_gpu_layers is not None:
        return s.n_gpu_layers, layout.n_layers
    memory = gpu.detect_memory()
    if memory.kind == "cpu":
        log.warning("GPU build but no GPU memory could be measured: offloading every layer")
        return -1, layout.n_layers
    # the KV of every sequence: each has the whole context
    n_ctx = context_size(s.n_ctx, trained=layout.context_length) * s.parallel   # the KV of every sequence: each has the whole context
    plan = gpu.plan_gpu_layers(layout, n_ctx=n_ctx, free_bytes=memory.free,
                               mmproj_bytes=Path(s.mmproj).stat().st_size,
                               flash_attn=s.flash_attn != "off", n_ubatch=s.n_ubatch)
    log.info("GPU offload (%s): %s", memory.name, plan.reason)
    return plan.n_gpu_layers, layout.n_layers


def _context_params(s: Settings, n_ctx_train: int) -> llama_cpp.llama_context_params:
    params = llama_cpp.llama_context_default_params()
    # every sequence gets the whole --ctx-size: several people at once do not shrink it
    params.n_ctx = context_size(s.n_ctx, trained=n_ctx_train) * s.parallel
    params.n_batch = s.n_batch
    params.n_ubatch = min(s.n_batch, s.n_ubatch)
    params.n_seq_max = s.parallel
    params.kv_unified = s.kv_unified
    params.n_threads = s.threads
    params.n_threads_batch = s.threads_batch or s.threads
    params.flash_attn_type = FLASH_ATTN[s.flash_attn]
    params.no_perf = True
    return params


def _free_all(lists: list) -> None:
    for chunks in lists:
        mtmd_cpp.mtmd_input_chunks_free(chunks)


class LlamaEngine:
    def __init__(self, settings: Settings, progress: Callable[[float], None] | None = None):
        self.settings = settings
        for label, path in (("model", settings.model), ("mmproj", settings.mmproj)):
            if not path or not Path(path).is_file():
                raise EngineLoadError(f"{label} file not found: {path}")
        try:
            check_pair(Path(settings.model), Path(settings.mmproj))
        except PairingError as exc:
            raise EngineLoadError(str(exc)) from None
        self._progress = progress
        t0 = time.monotonic()
        llamalog.install()
        llama_cpp.llama_backend_init()
        self._mtmd = self._batch = self._ctx = self._model = None
        try:
            self._open(settings)
        except BaseException:
            self.close()  # free what was loaded before the failure
            raise
        self.model_id = settings.model_id
        self.load_seconds = time.monotonic() - t0
        self.info = {
            "architecture": self._meta.get("general.architecture"),
            "n_ctx": self.n_ctx, "n_ctx_train": self._model.n_ctx_train(),
            "n_params": self._model.n_params(), "size_bytes": self._model.size(),
            "gpu_offload": llama_cpp.llama_supports_gpu_offload(),
            "n_gpu_layers": self.n_gpu_layers, "thinking": self.opens_thinking,
            "tools": self.renders_tools, "vision": True, "load_seconds": round(self.load_seconds, 3),
            "random_weights": self.random_weights,
        }
        # in llama.cpp's terms too: its "n_ctx_seq" line counts the whole unified KV, which
        # any one sequence may fill, where ours is each sequence's share
        log.info("loaded %s (%s) in %.2fs: %d sequences x n_ctx=%d tokens, one KV of %d "
                 "cells; trained on %d", self.model_id, self.info["architecture"],
                 self.load_seconds, self.parallel, self.n_ctx, self._ctx.n_ctx(),
                 self.info["n_ctx_train"])
        if self.n_ctx > self.info["n_ctx_train"]:
            log.warning("each sequence's context (%d tokens) is longer than %s was trained on "
                        "(%d): answers past that may degrade; --ctx-size %d avoids it",
                        self.n_ctx, self.model_id, self.info["n_ctx_train"],
                        self.info["n_ctx_train"])

    def _open(self, settings: Settings) -> None:
        wanted, n_layers = gpu_layers(settings)
        self.n_gpu_layers = gpu.load_with_fewer_layers(
            lambda n: self._open_model(settings, n), wanted, n_layers, log=log)
        # per sequence: its share of the cells (a unified KV would let one take them all)
        self.n_ctx = self._ctx.n_ctx() // settings.parallel
        self.parallel = settings.parallel
        self._n_embd_inp = llama_cpp.llama_model_n_embd_inp(self._model.model)
        self._image_costs: cachetools.LRUCache[str, int] = cachetools.LRUCache(4096)
        self._cost_lock = threading.Lock()  # prepare() and counting run on HTTP threads
        self._embeddings = cachetools.LRUCache(
            maxsize=max(1, settings.image_cache_mb * 1024 * 1024), getsizeof=lambda a: a.nbytes)
        self._vocab = self._model.vocab
        self.guides = Guides(self._vocab, self._model.n_vocab())   # response_format
        self._batch = internals.LlamaBatch(n_tokens=settings.n_batch, embd=0,
                                           n_seq_max=settings.parallel, verbose=False)
        self.batcher = Batcher(self, settings.parallel, unified=settings.kv_unified)
        # A random marker: a client's text can never smuggle in an image placeholder.
        self._marker = f"<__media_{secrets.token_hex(8)}__>"
        self._mtmd = self._init_mtmd(settings)
        self._meta = self._model.metadata()
        self._template = ChatTemplate(self._meta.get("tokenizer.chat_template"),
                                      bos_token=self._special_text(self._model.token_bos()),
                                      eos_token=self._special_text(self._model.token_eos()))
        # The text of every control token: in a message's text it stays text (template.py)
        self._controls = [self.piece(t, special=True).decode(errors="replace")
                          for t in range(self._model.n_vocab())
                          if self._model.token_get_attr(t) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL]
        # Thinking models' templates open <think> in the generation prompt: their output
        # starts inside the reasoning block (see reasoning.py).
        probe = (Message("user", (TextPart("Hi"),)),)
        self.opens_thinking = template_opens_thinking(self._template.render(probe, self._marker))
        self.renders_tools = self._template.renders_tools()
        self.random_weights = self._meta.get(RANDOM_WEIGHTS_KEY) == "true"

    def _open_model(self, settings: Settings, n_gpu_layers: int) -> int:
        """Model and context with `n_gpu_layers` offloaded (either may run out of GPU
        memory: the caller then retries with fewer)."""
        for owner in (self._ctx, self._model):
            if owner is not None:
                owner.close()
        self._ctx = self._model = None
        self._model = self._load(lambda: internals.LlamaModel(
            path_model=settings.model,
            params=_model_params(settings, n_gpu_layers, self._progress), verbose=False),
            settings.model)
        self._ctx = self._load(lambda: internals.LlamaContext(
            model=self._model,
            params=_context_params(settings, self._model.n_ctx_train()), verbose=False),
            settings.model)
        return n_gpu_layers

    @staticmethod
    def _load(factory, path):
        try:
            return factory()
        except (ValueError, RuntimeError) as exc:
            raise EngineLoadError(f"llama.cpp could not load {path}: {exc}") from exc

    def _init_mtmd(self, s: Settings):
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = self.n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        params.n_threads = s.threads
        params.print_timings = False
        params.media_marker = self._marker.encode()
        params.flash_attn_type = FLASH_ATTN[s.flash_attn]
        if s.image_min_tokens > 0:
            params.image_min_tokens = s.image_min_tokens
        if s.image_max_tokens > 0:
            params.image_max_tokens = s.image_max_tokens
        ctx = mtmd_cpp.mtmd_init_from_file(s.mmproj.encode(), self._model.model, params)
        if not ctx:
            raise EngineLoadError(
                f"llama.cpp could not load the projector {s.mmproj} for {s.model}: "
                "is it the mmproj that belongs to this model?")
        if not mtmd_cpp.mtmd_support_vision(ctx):
            mtmd_cpp.mtmd_free(ctx)
            raise EngineLoadError(f"{s.mmproj} is not a vision projector")
        return ctx

    def close(self) -> None:
        if self._mtmd:
            mtmd_cpp.mtmd_free(self._mtmd)
            self._mtmd = None
        for owner in (self._batch, self._ctx, self._model):
            if owner is not None:
                owner.close()

    def _special_text(self, token: int) -> str:
        return self.piece(token, special=True).decode(errors="ignore") if token >= 0 else ""

    # -- tokenization (any thread) --

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (`special`: control tokens as their text)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def prepare(self, request: ChatRequest, images: list[PreparedImage]) -> Prompt:
        if request.tools and request.tools.calls and not self.renders_tools:
            raise InvalidRequestError(
                "this model's chat template has no tools section: the model would never "
                "see the tools (tool_choice none is accepted)", param="tools")
        segments = self._template.render_segments(request.messages, self._marker,
                                                  self._controls, request.tools)
        prompt = self._to_prompt(self._tokenize_segments(segments, images))
        prompt.thinking = self.opens_thinking
        try:
            prompt.max_new_tokens = self._budget(prompt.n_tokens, request.params.max_tokens)
        except ContextLengthError:
            prompt.close()
            raise
        return prompt

    def count_tokens(self, messages: tuple[Message, ...],
                     images: Mapping[ImagePart, PreparedImage],
                     tools: Tools | None = None) -> int:
        """The prompt's size without encoding anything: the text tokenized around the image
        markers, plus each image's token count (computed once per image)."""
        segments = self._template.render_segments(messages, self._marker, self._controls,
                                                  tools)
        n = sum(len(self._model.tokenize(text.replace(self._marker, "").encode(),
                                         add_bos=i == 0 and self._model.add_bos_token(),
                                         special=markup))
                for i, (text, markup) in enumerate(segments))
        return n + sum(self._image_cost(images[p]) for m in messages for p in m.parts
                       if isinstance(p, ImagePart))

    def _image_cost(self, image: PreparedImage) -> int:
        """Tokens an image adds, its begin/end markers included (mtmd preprocessing only)."""
        with self._cost_lock:
            cost = self._image_costs.get(image.sha256)
        if cost is None:
            chunks = self._tokenize(self._marker, [image])
            cost = mtmd_cpp.mtmd_helper_get_n_tokens(chunks)
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            with self._cost_lock:
                self._image_costs[image.sha256] = cost
        return cost

    def _tokenize_segments(self, segments: list[tuple[str, bool]],
                           images: list[PreparedImage]) -> list:
        """mtmd chunks for each (text, is_markup) segment, in order: control tokens are
        parsed in markup only; each segment gets the images whose markers it holds."""
        out, first = [], 0
        try:
            for i, (text, markup) in enumerate(segments):
                n = text.count(self._marker)
                out.append(self._tokenize(text, images[first:first + n], add_special=i == 0,
                                          parse_special=markup))
                first += n
        except BaseException:
            _free_all(out)
            raise
        return out

    def _tokenize(self, text: str, images: list[PreparedImage], *, add_special: bool = True,
                  parse_special: bool = True):
        bitmaps = []
        for im in images:
            bm = mtmd_cpp.mtmd_bitmap_init(im.width, im.height,
                                           (ctypes.c_uint8 * len(im.rgb)).from_buffer_copy(im.rgb))
            mtmd_cpp.mtmd_bitmap_set_id(bm, im.sha256.encode())  # becomes the chunk's id
            bitmaps.append(bm)
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            data = text.encode()
            inp = mtmd_cpp.mtmd_input_text(text=data, text_len=len(data), add_special=add_special,
                                           parse_special=parse_special)
            array = (mtmd_cpp.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd_cpp.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(inp), array, len(bitmaps))
        finally:
            for bm in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(bm)
        if rc != 0:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            if rc == 1:
                raise InvalidRequestError("the number of images does not match the prompt")
            raise ImageError(f"the vision encoder could not preprocess an image (code {rc})")
        return chunks

    def _to_prompt(self, lists: list) -> Prompt:
        """Flatten lists of mtmd chunks into units: token ids, and images keyed by content
        hash. The Prompt owns the lists from here."""
        units: list[Unit] = []
        images: dict[int, object] = {}
        chunks_in = ((chunks, i) for chunks in lists
                     for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)))
        for chunks, i in chunks_in:
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ptr = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                units.extend(ptr[:n.value])
            else:
                images[len(units)] = chunk
                units.append(ImageUnit(
                    key=(mtmd_cpp.mtmd_input_chunk_get_id(chunk) or b"").decode(),
                    n_tokens=mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk),
                    n_pos=mtmd_cpp.mtmd_input_chunk_get_n_pos(chunk)))
        if not units or isinstance(units[-1], ImageUnit):
            _free_all(lists)
            raise InvalidRequestError("the prompt must end with text after its last image")
        return Prompt(units=units, images=images, n_tokens=n_tokens(units), max_new_tokens=0,
                      _chunks=lists, _free=_free_all)

    def _budget(self, n_prompt: int, max_tokens: int | None) -> int:
        """How many tokens may be generated; refuse prompts that cannot fit, with numbers."""
        room = self.n_ctx - n_prompt
        if room < 1:
            raise ContextLengthError(
                f"this model's context is {self.n_ctx} tokens, but the prompt has {n_prompt} "
                "tokens (images included); shorten the conversation or send fewer images",
                param="messages")
        if max_tokens is not None and max_tokens > room:
            raise ContextLengthError(
                f"this model's context is {self.n_ctx} tokens; the prompt has {n_prompt} and "
                f"max_tokens asks for {max_tokens} more (at most {room} fit)", param="max_tokens")
        if max_tokens is None and self.random_weights:
            return min(room, RANDOM_WEIGHTS_MAX_TOKENS)
        return max_tokens if max_tokens is not None else room

    # -- evaluation and sampling (worker thread only) --

    def runner(self):
        """What the worker drives: the batcher of this engine's sequences."""
        return self.batcher

    def generate(self, prompt: Prompt, params: SamplingParams,
                 cancelled: Callable[[], bool]) -> Iterator[Delta | Finished]:
        """One request on its own (warm-up, tests): the batcher with nothing else in it.
        A consumer that stops early cancels it."""
        events: collections.deque = collections.deque()
        halted = [False]
        self.batcher.admit(Sequence(prompt, params, lambda: halted[0] or cancelled(),
                                    events.append))
        done = False
        try:
            while not done:
                if not events:
                    self.batcher.step()
                while events:
                    event = events.popleft()
                    if isinstance(event, Exception):
                        done = True
                        raise event
                    done = isinstance(event, Finished)
                    yield event
                    if done:
                        return
        finally:
            if not done:
                halted[0] = True
                while self.batcher.active:
                    self.batcher.step()

    def cache_stats(self) -> dict:
        """For /health (read from HTTP threads; each number is read in one step)."""
        return {"kv_tokens": self.batcher.kv_tokens(), "n_ctx": self.n_ctx,
                "sequences": {"parallel": self.parallel, "busy": self.batcher.active},
                "image_embeddings": len(self._embeddings),
                "image_embedding_bytes": int(self._embeddings.currsize),
                "image_embedding_capacity": int(self._embeddings.maxsize)}

    def _forget_kv(self) -> None:
        self.batcher.forget_all()

    # -- the step API the batcher drives (engine thread only) --

    def eval_image(self, chunk, unit: ImageUnit, seq_id: int, n_past: int,
                   stats: dict) -> None:
        """Put an image into sequence `seq_id` at `n_past`: its embeddings from the LRU, or
        the vision tower's (counted in `stats`)."""
        embd = self._embeddings.get(unit.key)
        if embd is None:
            t = time.monotonic()
            embd = self._encode_image(chunk, unit)
            stats["image_encode_ms"] += (time.monotonic() - t) * 1000
            stats["images_encoded"] += 1
        else:
            stats["images_from_cache"] += 1
        self._decode_image(chunk, embd, n_past, seq_id)

    def encode_images(self, prompt: Prompt, stats: dict) -> None:
        """Run the vision tower on the prompt's images that the embedding LRU lacks, into
        it, without a sequence (a prefill that found none free; counted in `stats`)."""
        for index, chunk in prompt.images.items():
            self.encode_to_cache(chunk, prompt.units[index], stats)

    def encode_to_cache(self, chunk, unit: ImageUnit, stats: dict) -> bool:
        """Run the vision tower into the embedding LRU, when the image is not there and its
        embeddings fit (counted in `stats`). False when there was nothing to do."""
        size = unit.n_tokens * self._n_embd_inp * np.dtype(np.float32).itemsize
        if unit.key in self._embeddings or size > self._embeddings.maxsize:
            return False
        t = time.monotonic()
        self._encode_image(chunk, unit)
        stats["image_encode_ms"] += (time.monotonic() - t) * 1000
        stats["images_encoded"] += 1
        return True

    def _encode_image(self, chunk, unit: ImageUnit) -> np.ndarray:
        """Run the vision tower and keep a copy of its output in the embedding LRU."""
        rc = mtmd_cpp.mtmd_encode_chunk(self._mtmd, chunk)
        if rc != 0:
            raise InternalError(f"the vision encoder failed (code {rc})")
        size = unit.n_tokens * self._n_embd_inp
        embd = np.ctypeslib.as_array(mtmd_cpp.mtmd_get_output_embd(self._mtmd), shape=(size,)).copy()
        if embd.nbytes <= self._embeddings.maxsize:
            self._embeddings[unit.key] = embd
        return embd

    def _decode_image(self, chunk, embd: np.ndarray, n_past: int, seq_id: int) -> None:
        """Feed image embeddings to the LLM (M-RoPE positions are set by mtmd's helper)."""
        new_n_past = llama_cpp.llama_pos(0)
        rc = mtmd_cpp.mtmd_helper_decode_image_chunk(
            self._mtmd, self._ctx.ctx, chunk, embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            n_past, seq_id, self.settings.n_batch, ctypes.byref(new_n_past),
            mtmd_cpp.mtmd_helper_post_decode_callback(), None)
        if rc != 0:
            raise InternalError(f"image evaluation failed (code {rc})")

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) items."""
        batch = self._batch.batch
        batch.n_tokens = len(items)
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.logits[i] = token, pos, logits
            batch.seq_id[i][0], batch.n_seq_id[i] = seq, 1
        try:
            self._ctx.decode(self._batch)
        except RuntimeError as exc:
            raise InternalError(f"llama.cpp decode failed: {exc}") from exc

    def new_sampler(self, p: SamplingParams) -> internals.LlamaSampler:
        """A sampler chain for one sequence's parameters."""
        s = internals.LlamaSampler()
        chain = s.sampler
        if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_penalties(
                self._model.n_vocab(), PENALTY_LAST_N, p.repeat_penalty,
                p.frequency_penalty, p.presence_penalty))
        if p.temperature <= 0:
            s.add_greedy()
            return s
        if p.top_k > 0:
            s.add_top_k(p.top_k)
        s.add_top_p(p.top_p, 1)
        s.add_min_p(p.min_p, 1)
        s.add_temp(p.temperature)
        seed = p.seed if p.seed is not None else self.settings.seed
        s.add_dist(llama_cpp.LLAMA_DEFAULT_SEED if seed is None or seed < 0 else seed & 0xFFFFFFFF)
        return s

    def sample(self, sampler: internals.LlamaSampler, index: int,
               guide: Guide | None = None) -> int:
        """The next token from the logits of the decoded item at `index`; with a `guide`,
        one its grammar allows."""
        if guide is not None:
            guide.restrict(logits_row(self._ctx.ctx, index))
        return sampler.sample(self._ctx, index)

    def ends_generation(self, token: int) -> bool:
        """Whether `token` ends generation (end of turn, end of text…)."""
        return llama_cpp.llama_vocab_is_eog(self._vocab, token)

    def memory(self):
        """llama.cpp's KV memory of this context (for the batcher's sequence operations)."""
        return llama_cpp.llama_get_memory(self._ctx.ctx)
