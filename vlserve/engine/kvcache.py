"""What is in the KV cache, as a sequence of units, and how much of it a new prompt reuses.

A unit is a text token id or an image (its content hash + token budget). The record keeps
each unit's start position, so the cache can be trimmed exactly after the shared prefix.

Matching has two levels. First by identity (token ids, image keys): the longest common
prefix. Then by text, from where ids diverge: a follow-up turn repeats the previous answer,
but re-tokenizing that answer often gives other ids than the ones generated (BPE merges
differ), so runs of text tokens are compared by their bytes and the reuse continues at the
furthest byte offset where both sides have a token boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ImageUnit:
    key: str          # hash of the prepared pixels + the token budget
    n_tokens: int     # KV cells it occupies
    n_pos: int        # positions it advances (M-RoPE images use fewer than their tokens)


Unit = int | ImageUnit
Pieces = Callable[[int], bytes]   # index -> the bytes of the text token at that index


def n_tokens(units: list[Unit]) -> int:
    return sum(u.n_tokens if isinstance(u, ImageUnit) else 1 for u in units)


@dataclass
class KVRecord:
    """The units in sequence 0 of the KV cache, with start positions and known token bytes."""
    units: list[Unit] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    pieces: dict[int, bytes] = field(default_factory=dict)   # generated tokens' bytes
    end: int = 0                                             # next free position

    def append(self, unit: Unit, n_pos: int, piece: bytes | None = None) -> None:
        if piece is not None:
            self.pieces[len(self.units)] = piece
        self.units.append(unit)
        self.starts.append(self.end)
        self.end += n_pos

    def truncate(self, keep: int) -> int:
        """Forget units from `keep` on; returns the first position to remove from the KV."""
        if keep < len(self.units):
            self.end = self.starts[keep]
            del self.units[keep:], self.starts[keep:]
            self.pieces = {i: p for i, p in self.pieces.items() if i < keep}
        return self.end

    def clear(self) -> None:
        self.units, self.starts, self.pieces, self.end = [], [], {}, 0


def plan_reuse(cached: list[Unit], cached_piece: Pieces, new: list[Unit],
               new_piece: Pieces) -> tuple[int, int]:
    """(keep, skip): keep cached[:keep] in the KV and evaluate new[skip:].

    new[:skip] and cached[:keep] are the same content. skip < len(new) always, so at least
    one unit is evaluated and the last position has fresh logits to sample from.
    """
    if not new:
        return 0, 0
    i = _common_prefix(cached, new)
    # All of `new` cached: evaluate its last unit again (a prompt always ends in text).
    best = (i, i) if i < len(new) else (i - 1, i - 1)
    for keep, skip in _text_continuations(cached, cached_piece, new, new_piece, i):
        if skip < len(new) and skip > best[1]:
            best = (keep, skip)
    return best


def _common_prefix(a: list[Unit], b: list[Unit]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _text_continuations(cached, cached_piece: Pieces, new, new_piece: Pieces, i: int):
    """(keep, skip) pairs past i where both runs of text tokens end at the same byte offset
    and the bytes before it are equal."""
    n_a, n_b = _text_run(cached, i), _text_run(new, i)
    ia = ib = 0                          # tokens consumed on each side
    buf_a, buf_b = bytearray(), bytearray()
    checked = 0                          # bytes known equal on both sides
    while True:
        # advance the side that is behind in bytes (both start level)
        if len(buf_a) <= len(buf_b) and ia < n_a:
            buf_a += cached_piece(i + ia)
            ia += 1
        elif len(buf_b) < len(buf_a) and ib < n_b:
            buf_b += new_piece(i + ib)
            ib += 1
        else:
            return                       # the side that is behind has no tokens left
        common = min(len(buf_a), len(buf_b))
        if buf_a[checked:common] != buf_b[checked:common]:
            return
        checked = common
        if len(buf_a) == len(buf_b) and ib:
            yield i + ia, i + ib


def _text_run(units: list[Unit], start: int) -> int:
    n = 0
    while start + n < len(units) and not isinstance(units[start + n], ImageUnit):
        n += 1
    return n
