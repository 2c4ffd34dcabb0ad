"""An optional on-disk cache of whole answers to deterministic requests.

A request is deterministic when it samples greedily (temperature 0) or fixes a seed: the same
model, conversation (images by the hash of their prepared pixels), sampling parameters and
limits then give the same answer, so a factory line asking the same question about the same
photo every minute is answered from disk. Bounded by size (diskcache evicts least recently
used entries); off unless --response-cache-dir is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import diskcache

from .images import PreparedImage
from .protocol import ChatRequest, ImagePart

VERSION = 1   # bump when what a key covers or what a value holds changes


class ResponseCache:
    def __init__(self, directory: str | Path, size_mb: float):
        self._cache = diskcache.Cache(str(directory), size_limit=int(size_mb * 1024 * 1024),
                                      eviction_policy="least-recently-used")
        self.hits = self.misses = 0

    def key(self, req: ChatRequest, images: dict[ImagePart, PreparedImage],
            model: str) -> str | None:
        """The request's key, or None when it is not deterministic (never cached)."""
        params = req.params
        if params.temperature != 0 and params.seed is None:
            return None
        messages = [[m.role, [_part(p, images) for p in m.parts]] for m in req.messages]
        blob = json.dumps([VERSION, model, messages, dataclasses.asdict(params)],
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        value = self._cache.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, value: dict) -> None:
        self._cache.set(key, value)

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._cache),
                "bytes": self._cache.volume()}

    def close(self) -> None:
        self._cache.close()


def _part(part, images: dict[ImagePart, PreparedImage]) -> list:
    if isinstance(part, ImagePart):
        return ["image", images[part].sha256, part.detail]
    return ["text", part.text]
