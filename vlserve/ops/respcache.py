"""An optional on-disk cache of whole answers to deterministic requests.

A request is deterministic when it samples greedily (temperature 0) or fixes a seed (≥ 0; a
negative seed means "random", as in llama.cpp): the same model, conversation (images by the
hash of their prepared pixels), sampling parameters and limits then give the same answer, so
a factory line asking the same question about the same photo every minute is answered from
disk. A request asking for randomness (temperature > 0 without a fixed seed) is never cached.
Bounded by size (diskcache evicts least recently used entries); off unless
--response-cache-dir is given.

Answers are private: the directory is 0700 and the database 0600 (SQLite gives its WAL and
shared-memory files the database's mode), and every value is kept inside the database, never
as a separate file (diskcache would write values over `disk_min_file_size` as files with the
process umask).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import diskcache

from ..chat.images import PreparedImage
from ..chat.protocol import ChatRequest, ImagePart

VERSION = 2   # bump when what a key covers or what a value holds changes


DATABASE = "cache.db"   # diskcache's file name for its SQLite database
NO_FILES = 2 ** 62      # disk_min_file_size: every value stays in the database


def _private_directory(directory: Path) -> None:
    """The cache's folder (0700) and database (0600), made before diskcache opens them."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    database = directory / DATABASE
    os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
    database.chmod(0o600)


def deterministic(params) -> bool:
    """Greedy sampling, or a fixed non-negative seed: the same request, the same answer."""
    return params.temperature == 0 or (params.seed is not None and params.seed >= 0)


class ResponseCache:
    def __init__(self, directory: str | Path, size_mb: float):
        _private_directory(Path(directory))
        self._cache = diskcache.Cache(str(directory), size_limit=int(size_mb * 1024 * 1024),
                                      eviction_policy="least-recently-used",
                                      disk_min_file_size=NO_FILES)
        self.hits = self.misses = 0

    def key(self, req: ChatRequest, images: dict[ImagePart, PreparedImage],
            model: str) -> str | None:
        """The request's key, or None when it is not deterministic (never cached)."""
        params = req.params
        if not deterministic(params):
            return None
        messages = [[m.role, [_part(p, images) for p in m.parts],
                     [c.template_dict() for c in m.tool_calls], m.tool_call_id]
                    for m in req.messages]
        tools = dataclasses.asdict(req.tools) if req.tools else None
        blob = json.dumps([VERSION, model, messages, dataclasses.asdict(params), tools],
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
