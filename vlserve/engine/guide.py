"""A sequence's answer held to its grammar (`chat.constraint.Constraint`): before each token
is sampled, every token the grammar does not allow next gets a logit of -inf, so whatever
the sampler chain then does (penalties, top-k, temperature, greedy), the token it picks is
allowed; after it, the matcher consumes the token.

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


class Guide:
    """One sequence's grammar state. `waiting`: a Thinking model's answer is constrained
    only after its reasoning closes (`</think>`); until then it reasons freely, except that
    it may not end (an answer that stopped inside its reasoning would be no JSON at all)."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, constraint: Constraint,
                 n_vocab: int, *, after_thinking: bool, enders: np.ndarray):
        self.matcher = llguidance.LLMatcher(tokenizer, constraint.grammar)
        if self.matcher.is_error():   # compiled against the model's tokens: refused late
            raise InvalidRequestError(f"the response_format cannot be enforced with this "
                                      f"model: {self.matcher.get_error()}",
                                      param="response_format")
        self.n_vocab = n_vocab
        self.mask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)   # a bit per token
        self.waiting = after_thinking
        self.enders = enders
        self._tail = b""

    def restrict(self, logits_ptr) -> None:
        """Disallowed tokens' logits to -inf, in llama.cpp's logits row for this sequence."""
        logits = np.ctypeslib.as_array(logits_ptr, shape=(self.n_vocab,))
        if self.waiting:
            logits[self.enders] = -np.inf
            return
        self.matcher.unsafe_compute_mask_ptr(self.mask.ctypes.data, self.mask.nbytes)
        allowed = np.unpackbits(self.mask.view(np.uint8), bitorder="little",
                                count=self.n_vocab).view(bool)
        logits[~allowed] = -np.inf

    def accept(self, token: int, piece: bytes) -> None:
        """The sampled token: consumed by the grammar (or, while waiting, watched for the
        end of the reasoning). A token the grammar refuses cannot have been sampled from its
        mask: if it ever is, the answer fails rather than go on unchecked."""
        if self.waiting:
            self._tail = (self._tail + piece)[-len(THINK_END):]
            self.waiting = self._tail != THINK_END
            return
        if not self.matcher.consume_token(token):
            raise InternalError(f"the answer left its response_format: "
                                f"{self.matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and allows nothing more: the answer is done."""
        return not self.waiting and self.matcher.is_stopped() and not self.matcher.is_error()


class Guides:
    """Makes a model's Guides; owns the llguidance tokenizer built from its vocabulary."""

    def __init__(self, vocab, n_vocab: int):
        self._vocab, self.n_vocab = vocab, n_vocab
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._enders = np.zeros(0, dtype=np.int64)

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
        return self._tokenizer

    def new(self, constraint: Constraint, *, after_thinking: bool) -> Guide:
        tokenizer = self.tokenizer()
        return Guide(tokenizer, constraint, self.n_vocab, after_thinking=after_thinking,
                     enders=self._enders)


def logits_row(ctx, index: int):
    """llama.cpp's logits of the decoded item at `index` (a float pointer)."""
    ptr = llama_cpp.llama_get_logits_ith(ctx, index)
    return ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
