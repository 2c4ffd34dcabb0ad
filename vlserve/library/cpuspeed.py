"""How fast this machine's CPU would decode a model, estimated before any is loaded, so that
`bash start.sh` on a CPU starts a model that answers at a usable pace, not merely one that
fits in RAM.

Decoding a token reads every weight of the language model once (the vision projector is
not read per token), and slows as the context grows, so in a conversation with a photo

    tokens/s ~ min(memory bandwidth, cores x PER_CORE_BYTES_PER_S) x IN_CONVERSATION
               / weight bytes

The bandwidth is probed (`probe`: each decode thread copies its own buffer, in parallel, as
llama.cpp's threads read the weights); the per-core figure is measured, see below: on few
cores the arithmetic, not the memory, is the limit.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger("vlserve")

# A pace people wait for: an answer of a few sentences (~100 tokens) in 20 s.
USABLE_TOKENS_PER_S = 5.0
# Weight bytes one decode thread gets through per second: measured with llama.cpp (the
# version setup.cfg pins, repack off) on a Q4_K_M 2B-sized model, two threads of a virtual
# AMD EPYC with AVX-512: 15.75 GB/s each (docs/benchmarks.md, "CPU decode speed"). That is
# a fast core: on a slower one, with few cores, the estimate is optimistic; with more than
# a few cores the bandwidth probe is the limit anyway.
PER_CORE_BYTES_PER_S = 15e9
# What a conversation with a photo (~1,000 tokens of context) decodes at, against a short
# prompt: 12-13 tokens/s against 28.5 for the bench preset here (docs/benchmarks.md). The
# estimate is for that conversation, the one people have with a vision model.
IN_CONVERSATION = 0.45
PROBE_BYTES = 64 * 2**20   # per thread: past the caches of any CPU that matters


@dataclass(frozen=True)
class CPU:
    cores: int          # the threads llama.cpp decodes with (--threads)
    bandwidth: float    # bytes/s of memory read by all of them together

    def tokens_per_s(self, weight_bytes: int) -> float:
        """Estimated decode speed, in a conversation with a photo, of a model whose
        weights are `weight_bytes`."""
        rate = min(self.bandwidth, self.cores * PER_CORE_BYTES_PER_S) * IN_CONVERSATION
        return rate / max(weight_bytes, 1)

    def describe(self) -> str:
        return f"{self.cores} threads, memory {self.bandwidth / 1e9:.1f} GB/s"


def probe(threads: int, size: int = PROBE_BYTES, rounds: int = 5) -> CPU:
    """Measure the memory bandwidth `threads` threads reach together: each copies its own
    `size`-byte buffer (numpy releases the GIL while copying); the best of `rounds` (a
    virtual machine's neighbours make single rounds noisy). Reading and writing both count.
    About 0.2-0.5 s."""
    import numpy as np
    buffers = [(np.ones(size, dtype=np.uint8), np.empty(size, dtype=np.uint8))
               for _ in range(threads)]
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            t0 = time.perf_counter()
            list(pool.map(lambda pair: np.copyto(pair[1], pair[0]), buffers))
            seconds = time.perf_counter() - t0
            best = max(best, 2 * size * threads / seconds)
    return CPU(threads, best)


def largest_usable(sizes: list[tuple[str, int]], cpu: CPU) -> str:
    """Of (name, weight bytes) ordered smallest first, the largest whose estimated decode
    speed is usable; the smallest when none is."""
    usable = [name for name, size in sizes if cpu.tokens_per_s(size) >= USABLE_TOKENS_PER_S]
    return usable[-1] if usable else sizes[0][0]


def explain(sizes: list[tuple[str, int]], cpu: CPU) -> str:
    """The estimates, for the log: 'qwen3-vl-2b-instruct 6.8, … tokens/s'."""
    return ", ".join(f"{name} {cpu.tokens_per_s(size):.1f}" for name, size in sizes) + \
        f" tokens/s (usable: >= {USABLE_TOKENS_PER_S:g})"
