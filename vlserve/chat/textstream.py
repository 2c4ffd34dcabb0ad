"""Turns generated token bytes into text deltas, honouring stop strings.

Tokens can split a UTF-8 character and a stop string can span tokens, so text that might
still become part of a stop string is held back until it is known not to.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: tuple[str, ...] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = stops
        self._held = ""

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """Add one token's bytes; return (text safe to emit now, whether a stop string hit)."""
        self._held += self._decoder.decode(piece)
        hit = self._first_stop()
        if hit is not None:
            text, self._held = self._held[:hit], ""
            return text, True
        keep = self._longest_stop_prefix_suffix()
        cut = len(self._held) - keep
        text, self._held = self._held[:cut], self._held[cut:]
        return text, False

    def flush(self) -> str:
        """The held-back text, once generation ended for another reason."""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _first_stop(self) -> int | None:
        found = [i for i in (self._held.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest tail of the held text that starts some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:n]):
                    best = n
                    break
        return best
