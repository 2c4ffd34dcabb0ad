"""A sequence's answer held to its grammar (`chat.constraint.Constraint`: a response_format or
tool calls): before each token is sampled, every token the grammar does not allow next gets
a logit of -inf, so whatever the sampler chain then does (penalties, top-k, temperature,
greedy), the token it picks is allowed; after it, the matcher consumes the token. With
tool_choice auto the grammar holds only from the `<tool_call>` token on (a lazy trigger).

One `Guide` per sequence (llguidance's `LLMatcher`: its own state), made on the engine
thread when the sequence's prompt is in; constrained and free sequences batch together. The
tokenizer llguidance needs is built once per model from the GGUF's own vocabulary (about a
second for a 151,936-token vocabulary: during the warm-up, else at the first constrained
request).
"""

from __future__ import annotations

import ctypes
import warnings

import llama_cpp
import llguidance
import numpy as np
from llguidance.llamacpp import lltokenizer_from_vocab

from ..chat.constraint import Constraint
from ..errors import InternalError, InvalidRequestError

THINK_END = b"</think>"
TOOL_CALL = b"<tool_call>"   # opens a tool call (chat.tools)
THINKING, FREE, HELD = "thinking", "free", "held"   # a Guide's phases


class Guide:
    """One sequence's grammar state, in phases. `thinking`: a Thinking model reasons freely
    first, until `</think>`, except that it may not end (an answer that stopped inside its
    reasoning would hold no JSON and no call). `free` (tool_choice auto or none): the answer
    is free text; with auto, the `trigger` token (`<tool_call>`) starts the grammar, with
    none it is never sampled. `held`: every token is one the grammar allows."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, constraint: Constraint,
                 n_vocab: int, *, after_thinking: bool, enders: np.ndarray,
                 trigger: int | None):
        self.matcher = None
        if constraint.grammar is not None:
            self.matcher = llguidance.LLMatcher(tokenizer, constraint.grammar)
            if self.matcher.is_error():   # compiled against the model's tokens: refused late
                # (the error's first line: the rest quotes the grammar, client content)
                raise InvalidRequestError(f"the {constraint.param} cannot be enforced with "
                                          f"this model: "
                                          f"{self.matcher.get_error().splitlines()[0]}",
                                          param=constraint.param)
        self.n_vocab = n_vocab
        self.mask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)   # a bit per token
        self.enders, self.trigger, self.param = enders, trigger, constraint.param
        self.lazy = constraint.start != "now"
        self.phase = THINKING if after_thinking else FREE if self.lazy else HELD
        self._tail = b""

    @property
    def waiting(self) -> bool:
        """The grammar does not hold the answer yet."""
        return self.phase != HELD

    def restrict(self, logits_ptr) -> None:
        """Disallowed tokens' logits to -inf, in llama.cpp's logits row for this sequence."""
        if self.phase == FREE and (self.matcher is not None or self.trigger is None):
            return   # free text: nothing to mask (auto: until the trigger)
        logits = np.ctypeslib.as_array(logits_ptr, shape=(self.n_vocab,))
        if self.phase == THINKING:
            logits[self.enders] = -np.inf
        elif self.phase == FREE:   # tool_choice none: a call may not open
            logits[self.trigger] = -np.inf
        else:
            self.matcher.unsafe_compute_mask_ptr(self.mask.ctypes.data, self.mask.nbytes)
            allowed = np.unpackbits(self.mask.view(np.uint8), bitorder="little",
                                    count=self.n_vocab).view(bool)
            logits[~allowed] = -np.inf

    def accept(self, token: int, piece: bytes) -> None:
        """The sampled token: consumed by the grammar (or, while thinking, watched for the
        end of the reasoning; while free, for the trigger). A token the grammar refuses
        cannot have been sampled from its mask: if it ever is, the answer fails rather than
        go on unchecked."""
        if self.phase == THINKING:
            self._tail = (self._tail + piece)[-len(THINK_END):]
            if self._tail == THINK_END:
                self.phase = FREE if self.lazy else HELD
            return
        if self.phase == FREE:
            if token != self.trigger or self.matcher is None:
                return
            self.phase = HELD   # the call opened: the trigger is the grammar's first token
        if not self.matcher.consume_token(token):
            raise InternalError(f"the answer left its {self.param}: "
                                f"{self.matcher.get_error().splitlines()[0]}")

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and allows nothing more: the answer is done."""
        return (self.phase == HELD and self.matcher.is_stopped()
                and not self.matcher.is_error())


class Guides:
    """Makes a model's Guides; owns the llguidance tokenizer built from its vocabulary."""

    def __init__(self, vocab, n_vocab: int):
        self._vocab, self.n_vocab = vocab, n_vocab
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._enders = np.zeros(0, dtype=np.int64)
        self._trigger: int | None = None

    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the vocabulary (built once; engine thread)."""
        if self._tokenizer is None:
            # llguidance's own builder; it calls llama_token_get_attr, which this
            # llama-cpp-python marks deprecated (a warning per token, 151,936 of them)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self._tokenizer = lltokenizer_from_vocab(self._vocab, slices=None)
            self._enders = np.array([t for t in range(self.n_vocab)
                                     if llama_cpp.llama_vocab_is_eog(self._vocab, t)],
                                    dtype=np.int64)
            call = self._tokenizer.tokenize_bytes(TOOL_CALL)
            self._trigger = call[0] if len(call) == 1 else None   # Qwen: one token
        return self._tokenizer

    def new(self, constraint: Constraint, *, after_thinking: bool) -> Guide:
        tokenizer = self.tokenizer()
        return Guide(tokenizer, constraint, self.n_vocab, after_thinking=after_thinking,
                     enders=self._enders, trigger=self._trigger)


def logits_row(ctx, index: int):
    """llama.cpp's logits of the decoded item at `index` (a float pointer)."""
    ptr = llama_cpp.llama_get_logits_ith(ctx, index)
    return ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
