"""Reading a GGUF file's header: its metadata and the name, shape and size of each tensor.

Not gguf.GGUFReader: it builds a numpy view per array element, which takes ~5 s for the
tokenizer of a 152k-token vocabulary; this walks over string arrays and takes ~0.2 s, so
listing a models folder of multi-GB files stays instant.
"""

from __future__ import annotations

import math
import mmap
import struct

import gguf

# Set (true) in the models vlserve generates (library/tinymodel): their weights are random,
# so the engine caps their answers and the page says so.
RANDOM_WEIGHTS_KEY = "vlserve.random_weights"

# GGUF metadata value types -> struct codes (gguf.GGUFValueType numbering)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
           10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 4096  # numeric arrays up to this long are kept (per-layer values); others skipped


def read_header(path) -> tuple[dict[str, object], dict[str, tuple[tuple[int, ...], int]]]:
    """(metadata, {tensor name: (GGUF dims, bytes)}) from a GGUF v2/v3 header. String
    arrays (vocabularies, merges) and long numeric arrays come back as None."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _Header(buf).parse()


class _Header:
    def __init__(self, buf):
        self.buf, self.pos, self.order = buf, 0, "<"

    def take(self, code: str):
        return self.many(code, 1)[0]

    def many(self, code: str, count: int) -> tuple:
        fmt = f"{self.order}{count}{code}"
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise ValueError("truncated string")
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", "replace")

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            return self.array()
        return self.take(_SCALAR[kind])  # KeyError on an unknown type: not GGUF we can read

    def array(self):
        kind, n = self.take("I"), self.take("Q")
        if kind == _STRING:  # tokenizer vocabularies and merges: walk over them
            length, buf, pos = struct.Struct(self.order + "Q").unpack_from, self.buf, self.pos
            for _ in range(n):
                pos += 8 + length(buf, pos)[0]
            self.pos = pos
            return None
        if kind in _SCALAR and n <= _SMALL_ARRAY:
            return list(self.many(_SCALAR[kind], n))
        if kind in _SCALAR:
            self.pos += n * struct.calcsize(_SCALAR[kind])
            return None
        for _ in range(n):  # nested arrays: legal, never used by models
            self.value(kind)
        return None

    def parse(self):
        if bytes(self.buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic")
        self.pos = 4
        version = self.take("I")
        if version & 0xFFFF == 0:  # a big-endian file
            self.order, self.pos = ">", 4
            version = self.take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = self.take("Q"), self.take("Q")
        limit = len(self.buf) // 8  # every entry takes more than 8 bytes: rejects garbage fast
        if n_tensors > limit or n_kv > limit:
            raise ValueError("corrupt header counts")
        fields = {}
        for _ in range(n_kv):
            key = self.string()
            fields[key] = self.value(self.take("I"))
        tensors = {}
        for _ in range(n_tensors):
            tensor_name = self.string()
            dims = self.many("Q", self.take("I"))
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(self.take("I"))]
            self.take("Q")  # data offset
            tensors[tensor_name] = (dims, math.prod(dims) // block * size)
        return fields, tensors
