"""How much memory this machine has, and how many model layers fit on its GPU.

llama.cpp's own default is "offload everything", which on a small GPU fails at load (or
leaves no room for the context) instead of running partly on the CPU. This module reads the
GGUF header and the free GPU memory and picks `n_gpu_layers` before loading
(`plan_gpu_layers`, a pure function), and `load_with_fewer_layers` retries with fewer layers
when the estimate was still too optimistic. Detection never raises: an unknown machine is
reported as CPU with whatever RAM figures are available.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .ggufmeta import read_header

log = logging.getLogger("vlserve.gpu")

T = TypeVar("T")

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# nvidia-smi takes ~1 s when the driver is not in persistence mode; a hung driver must not
# hang startup, so anything slower counts as "no CUDA".
COMMAND_TIMEOUT_S = 5.0

# Headroom kept free on the GPU: the CUDA context, cuBLAS workspaces and per-device
# bookkeeping take 300-500 MiB that nvidia-smi still counts as free before we load; 5% of free
# more covers allocator rounding, errors in these estimates, and other programs (a desktop,
# a browser) growing while we run. Better a few layers on the CPU than a failed load.
HEADROOM_FIXED = 512 * MiB
HEADROOM_FRACTION = 0.05

# Compute buffer (llama.cpp's scratch for one ubatch of the graph), see estimate_compute_bytes.
COMPUTE_FLOOR = 512 * MiB
# mtmd reserves the vision encoder's own compute buffer at load for its largest image; for
# Qwen3-VL at ~1024-pixel images that is 0.2-0.6 GiB depending on flash attention.
VISION_COMPUTE = 512 * MiB
# Used when the GGUF does not say its vocabulary size: Qwen's padded vocabulary.
DEFAULT_N_VOCAB = 151_936


# ---------------------------------------------------------------------------------------------
# Memory detection

@dataclass(frozen=True)
class Memory:
    kind: str   # "cuda" | "metal" | "cpu"
    total: int  # bytes
    free: int   # bytes usable by this process (for Metal: what it may wire, see _apple_memory)
    name: str   # GPU name(s), "Apple M2 Max", or "system RAM"


Runner = Callable[..., subprocess.CompletedProcess]


def detect_memory(*, run: Runner = subprocess.run, meminfo_path: str = "/proc/meminfo",
                  system: str | None = None, machine: str | None = None,
                  env: Mapping[str, str] | None = None) -> Memory:
    """The memory a model can be loaded into: NVIDIA GPUs, Apple unified memory, or RAM.

    Other GPUs (ROCm, Vulkan) are reported as CPU: without a reliable free-memory query the
    planner would only be guessing; the user can still pass --n-gpu-layers.
    """
    system = sys.platform if system is None else system
    machine = _machine() if machine is None else machine
    env = os.environ if env is None else env
    try:
        if system == "darwin" and machine == "arm64":
            mem = _apple_memory(run)
        else:
            mem = _cuda_memory(run, env)
        return mem or _system_memory(meminfo_path)
    except Exception:  # a parser case not foreseen must not stop the server from starting
        log.debug("memory detection failed", exc_info=True)
        return Memory("cpu", 0, 0, "unknown")


def system_memory(meminfo_path: str = "/proc/meminfo") -> Memory:
    """RAM only: where the weights live with a CPU build, whatever GPUs the machine has."""
    try:
        return _system_memory(meminfo_path)
    except Exception:
        return Memory("cpu", 0, 0, "unknown")


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp build has a GPU backend (CUDA, Metal, ...)."""
    try:
        import llama_cpp  # imported here: loading the shared library is slow and may fail
        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        return False


def _machine() -> str:
    try:
        return platform.machine()
    except Exception:
        return ""


def _run(run: Runner, args: list[str]) -> str | None:
    """stdout of a command, or None when it is missing, fails or hangs."""
    try:
        done = run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except Exception:  # FileNotFoundError, PermissionError, TimeoutExpired, ...
        return None
    out = getattr(done, "stdout", None)
    return out if getattr(done, "returncode", 1) == 0 and isinstance(out, str) else None


def _cuda_memory(run: Runner, env: Mapping[str, str]) -> Memory | None:
    """All visible NVIDIA GPUs, summed.

    Summed rather than the one with the most free memory because llama.cpp's default split
    mode spreads the layers over every visible GPU in proportion to their free memory, so
    the sum is what it can use; the per-GPU overhead is covered by the proportional headroom.
    """
    out = _run(run, ["nvidia-smi", "--query-gpu=name,memory.total,memory.free",
                     "--format=csv,noheader,nounits"])
    if out is None:
        return None
    gpus = [gpu for gpu in map(_parse_smi_line, out.splitlines()) if gpu is not None]
    gpus = _visible(gpus, env.get("CUDA_VISIBLE_DEVICES"))
    if not gpus:
        return None
    names = [name for name, _, _ in gpus]
    name = names[0] if len(names) == 1 else (
        f"{len(names)}x {names[0]}" if len(set(names)) == 1 else " + ".join(names))
    return Memory("cuda", sum(t for _, t, _ in gpus), sum(f for _, _, f in gpus), name)


def _parse_smi_line(line: str) -> tuple[str, int, int] | None:
    """'NVIDIA GeForce RTX 4090, 24564, 23012' (MiB) -> (name, total, free) in bytes."""
    parts = line.rsplit(",", 2)
    if len(parts) != 3:
        return None
    name, total, free = (p.strip() for p in parts)
    try:
        total_b, free_b = int(float(total) * MiB), int(float(free) * MiB)
    except (ValueError, OverflowError):  # "[N/A]", "[Unknown Error]", error text, "inf"
        return None
    if not name or total_b <= 0 or not 0 <= free_b <= total_b:
        return None
    return name, total_b, free_b


def _visible(gpus: list, devices: str | None) -> list:
    """Apply CUDA_VISIBLE_DEVICES, which nvidia-smi ignores.

    Indices are taken in nvidia-smi's (PCI bus) order, which is CUDA's too unless GPUs of
    different speeds are mixed; UUIDs and MIG names cannot be mapped, so all GPUs are kept.
    """
    if devices is None:
        return gpus
    entries = [d.strip() for d in devices.split(",")]
    if devices.strip() == "" or entries[0] == "-1":
        return []  # CUDA sees no device at all
    if not all(e.isdigit() for e in entries):
        return gpus
    picked = []
    for entry in entries:
        if int(entry) >= len(gpus):
            break  # CUDA ignores the list from the first invalid index on
        picked.append(gpus[int(entry)])
    return picked


def _apple_memory(run: Runner) -> Memory | None:
    """Apple Silicon: unified memory, of which Metal lets one process wire only a part.

    The part is macOS's recommendedMaxWorkingSetSize; its rule of thumb is ~75% of RAM on
    machines with more than 36 GB and ~2/3 below. The real value needs a Metal device
    (MTLDevice), which Python cannot query without extra packages.
    """
    out = _run(run, ["sysctl", "-n", "hw.memsize"])
    try:
        total = int(out.strip()) if out else 0
    except ValueError:
        return None
    if total <= 0:
        return None
    share = 0.75 if total > 36 * GiB else 0.66
    name = (_run(run, ["sysctl", "-n", "machdep.cpu.brand_string"]) or "").strip()
    return Memory("metal", total, int(total * share), name or "Apple Silicon")


def _system_memory(meminfo_path: str) -> Memory:
    """RAM from /proc/meminfo (MemAvailable counts reclaimable page cache), else sysconf."""
    fields = _read_meminfo(meminfo_path)
    total = fields.get("MemTotal")
    if total is None:
        total = _sysconf_bytes("SC_PHYS_PAGES") or 0
    free = fields.get("MemAvailable", fields.get("MemFree"))
    if free is None:
        free = _sysconf_bytes("SC_AVPHYS_PAGES")
    if free is None:
        free = total  # unknown (macOS has no AVPHYS): only informative on a CPU machine
    return Memory("cpu", total, min(free, total) if total else free, "system RAM")


_MEMINFO_LINE = re.compile(r"^(\w+):\s+(\d+)\s*kB", re.MULTILINE)


def _read_meminfo(path: str) -> dict[str, int]:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    return {key: int(kb) * KiB for key, kb in _MEMINFO_LINE.findall(text)}


def _sysconf_bytes(name: str) -> int | None:
    try:
        pages, size = os.sysconf(name), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # unknown name on this OS (macOS: AVPHYS)
        return None
    return pages * size if pages > 0 and size > 0 else None


# ---------------------------------------------------------------------------------------------
# GGUF layout

@dataclass(frozen=True)
class Layout:
    n_layers: int
    layer_bytes: tuple[int, ...]  # bytes of the blk.N.* tensors, per layer
    other_bytes: int              # everything else: token embedding, output, norms
    n_embd: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    context_length: int           # the training context, used when n_ctx is 0
    arch: str
    n_head: int = 0               # 0 = n_embd // head_dim_k
    n_vocab: int = 0              # 0 = unknown (DEFAULT_N_VOCAB is assumed)
    # What n_gpu_layers = n_layers + 1 adds to the GPU: output.weight and its norm, or a copy
    # of token_embd when the embeddings are tied. None = other_bytes (which also counts the
    # token embedding that llama.cpp always keeps on the CPU: an overestimate).
    output_bytes: int | None = None

    def __post_init__(self):
        if len(self.layer_bytes) != self.n_layers:
            raise ValueError(f"{len(self.layer_bytes)} layer sizes for {self.n_layers} layers")


_BLOCK = re.compile(r"blk\.(\d+)\.")


def read_layout(path: str | os.PathLike) -> Layout:
    """Layer count, sizes and attention shape of a text-model GGUF; reads only its header.

    Raises ValueError (naming the file) for a non-GGUF file or one without a text model's
    keys (an mmproj, say); OSError for a missing or unreadable file.
    """
    name = Path(path).name
    try:
        fields, tensors = read_header(path)
    except OSError:
        raise
    except Exception as exc:  # bad magic, truncated header, unknown tensor type, ...
        raise ValueError(f"{name} is not a readable GGUF file: {exc}") from None
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{name} has no general.architecture: not a model GGUF")

    def key(suffix: str, default=None) -> int:
        value = fields.get(f"{arch}.{suffix}", default)
        # some architectures store per-layer lists (e.g. head_count_kv); the largest is safe
        if isinstance(value, list):
            value = max(value, default=None)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} ({arch}) has no valid {arch}.{suffix}: "
                             "not a supported text model")
        return value

    n_layers, n_embd = key("block_count"), key("embedding_length")
    n_head = key("attention.head_count")
    n_head_kv = key("attention.head_count_kv", n_head)
    head_dim_k = key("attention.key_length", n_embd // n_head)
    head_dim_v = key("attention.value_length", n_embd // n_head)
    context_length = key("context_length")

    layer_bytes, other_bytes = [0] * n_layers, 0
    for tensor_name, (_, size) in tensors.items():
        m = _BLOCK.match(tensor_name)
        if m and int(m.group(1)) < n_layers:
            layer_bytes[int(m.group(1))] += size
        else:  # includes extra blocks past block_count (e.g. multi-token-prediction heads)
            other_bytes += size
    embd = tensors.get("token_embd.weight")
    head = tensors.get("output.weight", embd)  # tied embeddings: llama.cpp copies token_embd
    output_bytes = sum(t[1] for t in (head, tensors.get("output_norm.weight")) if t)
    n_vocab = embd[0][1] if embd and len(embd[0]) == 2 else 0
    return Layout(n_layers=n_layers, layer_bytes=tuple(layer_bytes), other_bytes=other_bytes,
                  n_embd=n_embd, n_head_kv=n_head_kv, head_dim_k=head_dim_k,
                  head_dim_v=head_dim_v, context_length=context_length, arch=arch,
                  n_head=n_head, n_vocab=n_vocab, output_bytes=output_bytes or None)


def kv_bytes_per_layer(layout: Layout, n_ctx: int, bytes_per_elem: int = 2) -> int:
    """K and V cache of one layer for n_ctx tokens (f16 by default, llama.cpp's default)."""
    n_ctx = _context(layout, n_ctx)
    return n_ctx * layout.n_head_kv * (layout.head_dim_k + layout.head_dim_v) * bytes_per_elem


def _context(layout: Layout, n_ctx: int) -> int:
    """n_ctx as llama.cpp uses it: 0 means the model's training context."""
    return n_ctx if n_ctx > 0 else layout.context_length


# ---------------------------------------------------------------------------------------------
# The planner

@dataclass(frozen=True)
class OffloadPlan:
    n_gpu_layers: int  # for llama.cpp: n_layers + 1 = every layer and the output layer
    reason: str        # one line for the log
    needed: int        # bytes a full offload needs on the GPU, headroom included
    available: int     # bytes free on the GPU


def default_headroom(free_bytes: int) -> int:
    return HEADROOM_FIXED + int(max(0, free_bytes) * HEADROOM_FRACTION)


def estimate_compute_bytes(layout: Layout, n_ctx: int, *, n_ubatch: int = 512,
                           flash_attn: bool = True, vision: bool = False) -> int:
    """A conservative size for llama.cpp's GPU compute buffers.

    llama.cpp sizes the buffer for the worst ubatch: logits for every token of it (n_vocab x
    n_ubatch f32, ~300 MiB for Qwen), the layer activations (a few n_embd-wide rows per token,
    and the FFN), and attention: with flash attention only the f16 mask (n_ctx x n_ubatch);
    without it the f32 scores of every head (n_ctx x n_ubatch x n_head), which is GiBs at
    long contexts. The allocator reuses memory, so this sum overestimates; the floor covers
    small models whose buffers are dominated by fixed costs. The vision encoder has its own.
    """
    n_ctx = _context(layout, n_ctx)
    n_head = layout.n_head or layout.n_embd // max(1, layout.head_dim_k)
    logits = (layout.n_vocab or DEFAULT_N_VOCAB) * n_ubatch * 4
    activations = 16 * layout.n_embd * n_ubatch * 4
    attention = n_ctx * n_ubatch * (2 if flash_attn else 4 * n_head)
    total = max(COMPUTE_FLOOR, logits + activations + attention)
    return total + (VISION_COMPUTE if vision else 0)


def plan_gpu_layers(layout: Layout, *, n_ctx: int, free_bytes: int, mmproj_bytes: int,
                    headroom_bytes: int | None = None, compute_bytes: int | None = None,
                    flash_attn: bool = True, n_ubatch: int = 512) -> OffloadPlan:
    """How many layers to offload so that the model, its KV cache and buffers fit.

    llama.cpp offloads the repeating layers from the last one down (n_gpu_layers = n puts
    layers n_layers-n .. n_layers-1 on the GPU) and keeps each layer's KV cache with the
    layer; n_layers + 1 also puts the output layer there. The GPU must first hold the vision
    encoder (mmproj; it runs on the GPU when there is one), the compute buffers and the
    headroom (default: HEADROOM_FIXED + HEADROOM_FRACTION of free). n_ctx = 0 means the
    model's training context. compute_bytes defaults to estimate_compute_bytes(flash_attn,
    n_ubatch). Pure: the same inputs always give the same plan.
    """
    ctx = _context(layout, n_ctx)
    headroom = default_headroom(free_bytes) if headroom_bytes is None else headroom_bytes
    if compute_bytes is None:
        compute_bytes = estimate_compute_bytes(layout, ctx, n_ubatch=n_ubatch,
                                               flash_attn=flash_attn, vision=mmproj_bytes > 0)
    fixed = max(0, mmproj_bytes) + compute_bytes + headroom
    kv = kv_bytes_per_layer(layout, ctx)
    top = [0]  # top[n]: the last n layers with their KV cache
    for size in reversed(layout.layer_bytes):
        top.append(top[-1] + size + kv)
    output = layout.other_bytes if layout.output_bytes is None else layout.output_bytes
    needed = fixed + top[-1] + output
    budget = free_bytes - fixed
    n_layers = layout.n_layers

    if needed <= free_bytes:
        return OffloadPlan(n_layers + 1, f"{n_layers}/{n_layers} layers on the GPU: "
                           f"{format_bytes(needed)} needed, {format_bytes(free_bytes)} free",
                           needed, free_bytes)
    n = max((i for i, size in enumerate(top) if size <= budget), default=0)
    advice = (f"{format_bytes(needed)} would be needed, {format_bytes(free_bytes)} free — use a "
              f"smaller quant or a smaller --ctx-size (now {ctx}) for full speed")
    if n == n_layers:
        where = f"{n}/{n_layers} layers on the GPU, the output layer on the CPU"
    elif n > 0:
        where = f"{n}/{n_layers} layers on the GPU (the rest on the CPU)"
    elif fixed > free_bytes:
        where = (f"0/{n_layers} layers on the GPU (CPU only): the vision encoder, buffers and "
                 f"headroom alone take {format_bytes(fixed)}")
    else:
        where = f"0/{n_layers} layers on the GPU (CPU only)"
    return OffloadPlan(n, f"{where}: {advice}", needed, free_bytes)


def load_with_fewer_layers(load: Callable[[int], T], n_gpu_layers: int, n_layers: int, *,
                           log: logging.Logger = log, attempts: int = 4) -> T:
    """load(n_gpu_layers), retrying with fewer GPU layers when it fails.

    llama.cpp reports an out-of-memory GPU only as a NULL model or context, which the caller
    turns into an exception, so any exception may be one. Each retry offloads about 3/4 as
    many layers; the last of `attempts` tries runs on the CPU only (0 layers), since a slow
    server beats none. The last error is re-raised if that fails too; n_gpu_layers = 0 is
    tried once. A negative or huge n_gpu_layers means "all" (n_layers + 1).
    """
    counts = _retry_counts(n_gpu_layers, n_layers, attempts)
    for i, n in enumerate(counts):
        try:
            return load(n)
        except Exception as exc:
            if i == len(counts) - 1:
                raise
            nxt = counts[i + 1]
            then = f"retrying with {nxt}" if nxt else "retrying on the CPU only (0 GPU layers)"
            shown = "all" if n < 0 or n > n_layers else n  # -1 or 0x7FFFFFFF read as "all"
            log.warning("loading with %s GPU layers failed (%s): %s", shown, _brief(exc), then)
        # the failed attempt's frames may hold a half-built model; free its GPU memory now
        gc.collect()
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _retry_counts(n_gpu_layers: int, n_layers: int, attempts: int) -> list[int]:
    """e.g. n_gpu_layers 37 (all of 36 and the output), 4 attempts -> [37, 27, 20, 0]."""
    if n_gpu_layers == 0 or attempts <= 1:
        return [n_gpu_layers]
    counts, n = [n_gpu_layers], n_gpu_layers
    if n < 0 or n > n_layers + 1:
        n = n_layers + 1
    while len(counts) < attempts - 1:
        n = min(n - 1, n * 3 // 4)
        if n <= 0:
            break
        counts.append(n)
    return counts + [0]


def _brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def format_bytes(n: float) -> str:
    """'6.1 GiB', '512 MiB', '12 KiB', '100 B'."""
    sign, n = ("-" if n < 0 else ""), abs(n)
    if n >= GiB:
        return f"{sign}{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{sign}{n / MiB:.0f} MiB"
    if n >= KiB:
        return f"{sign}{n / KiB:.0f} KiB"
    return f"{sign}{int(n)} B"
