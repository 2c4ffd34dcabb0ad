"""Tests for vlserve.library.gpu: memory detection, GGUF layout and the layer offload planner.

Fast, no GPU: nvidia-smi, sysctl and /proc/meminfo are canned, the GGUFs are generated.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import types
from pathlib import Path

import gguf
import numpy as np
import pytest

from vlserve.library import gpu
from vlserve.library.gpu import (GiB, Layout, Memory, MiB, OffloadPlan, default_headroom, detect_memory,
                         estimate_compute_bytes, format_bytes, gpu_offload_supported,
                         kv_bytes_per_layer, load_with_fewer_layers, plan_gpu_layers, read_layout)

from vlserve.library.tinymodel import make_model  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Layouts

def synthetic(n_layers: int = 10, layer: int = 100 * MiB, other: int = 50 * MiB,
              layer_bytes: tuple[int, ...] | None = None, **kw) -> Layout:
    """KV cache of 1 MiB per layer at n_ctx 4096 (one KV head of 64+64 f16)."""
    fields = {"n_layers": n_layers, "layer_bytes": layer_bytes or (layer,) * n_layers,
              "other_bytes": other, "n_embd": 1024, "n_head_kv": 1, "head_dim_k": 64,
              "head_dim_v": 64, "context_length": 4096, "arch": "llama"}
    return Layout(**{**fields, **kw})


def qwen(n_layers: int, total: float, n_embd: int, n_head: int) -> Layout:
    """A Qwen3-VL Q4_K_M text GGUF: token_embd Q4_K, output Q6_K, the rest in equal layers."""
    n_vocab = 151_936
    embd, output = n_vocab * n_embd * 144 // 256, n_vocab * n_embd * 210 // 256
    layer = (int(total) - embd - output) // n_layers
    return Layout(n_layers=n_layers, layer_bytes=(layer,) * n_layers, other_bytes=embd + output,
                  n_embd=n_embd, n_head_kv=8, head_dim_k=128, head_dim_v=128,
                  context_length=262_144, arch="qwen3vl", n_head=n_head, n_vocab=n_vocab,
                  output_bytes=output + n_embd * 4)


QWEN_8B = qwen(36, 4.7e9, 4096, 32)
QWEN_32B = qwen(64, 19e9, 5120, 64)
MMPROJ_8B, MMPROJ_32B = int(1.16e9), int(1.2e9)  # f16 vision towers
RTX_4090_FREE = 23_000 * MiB  # 24 GB card, a desktop on it
LAPTOP_6GB_FREE = 5_600 * MiB


def plan(layout: Layout = None, *, free: int, mmproj: int = 0, headroom: int = 0,
         compute: int = 0, n_ctx: int = 4096) -> OffloadPlan:
    return plan_gpu_layers(layout or synthetic(), n_ctx=n_ctx, free_bytes=free,
                           mmproj_bytes=mmproj, headroom_bytes=headroom, compute_bytes=compute)


# ---------------------------------------------------------------------------------------------
# The planner

# Synthetic: 10 layers of 100 MiB + 1 MiB KV, output (other_bytes) 50 MiB: 1060 MiB in all.
@pytest.mark.parametrize("free, mmproj, headroom, compute, expected", [
    (2000, 0, 0, 0, 11),      # everything fits: all layers and the output layer
    (1060, 0, 0, 0, 11),      # exactly
    (1059, 0, 0, 0, 10),      # all repeating layers, the output layer stays on the CPU
    (1010, 0, 0, 0, 10),
    (1009, 0, 0, 0, 9),       # the largest n that fits
    (505, 0, 0, 0, 5),
    (504, 0, 0, 0, 4),
    (100, 0, 0, 0, 0),        # not even one layer
    (0, 0, 0, 0, 0),
    (-5, 0, 0, 0, 0),
    (1160, 100, 0, 0, 11),    # mmproj counted
    (1159, 100, 0, 0, 10),
    (1260, 0, 200, 0, 11),    # headroom counted
    (1259, 0, 200, 0, 10),
    (605, 0, 0, 300, 3),      # compute buffer counted: 305 MiB left = 3 layers
    (500, 600, 0, 0, 0),      # the vision tower alone does not fit
])
def test_plan_table(free, mmproj, headroom, compute, expected):
    p = plan(free=free * MiB, mmproj=mmproj * MiB, headroom=headroom * MiB, compute=compute * MiB)
    assert p.n_gpu_layers == expected
    assert p.needed == (1060 + mmproj + headroom + compute) * MiB
    assert p.available == free * MiB


def test_plan_reasons():
    all_fit = plan(free=2000 * MiB)
    assert all_fit.reason == "10/10 layers on the GPU: 1.0 GiB needed, 2.0 GiB free"
    partial = plan(free=505 * MiB)
    assert partial.reason.startswith("5/10 layers on the GPU (the rest on the CPU): "
                                     "1.0 GiB would be needed, 505 MiB free")
    assert "smaller quant" in partial.reason and "--ctx-size (now 4096)" in partial.reason
    assert "output layer on the CPU" in plan(free=1059 * MiB).reason
    assert plan(free=100 * MiB).reason.startswith("0/10 layers on the GPU (CPU only)")
    assert "alone take 600 MiB" in plan(free=500 * MiB, mmproj=600 * MiB).reason
    for p in (all_fit, partial):
        assert "\n" not in p.reason


def test_plan_offloads_from_the_last_layer_down():
    # llama.cpp offloads the last n layers: a big last layer must fit before small first ones
    layout = synthetic(n_layers=4, layer_bytes=(10 * MiB, 10 * MiB, 10 * MiB, 100 * MiB))
    assert plan(layout, free=40 * MiB).n_gpu_layers == 0
    assert plan(layout, free=101 * MiB).n_gpu_layers == 1
    assert plan(layout, free=112 * MiB).n_gpu_layers == 2


def test_plan_output_bytes_replace_other_bytes():
    # other_bytes counts the CPU-only token embedding too; output_bytes is what really moves
    layout = synthetic(other=500 * MiB, output_bytes=50 * MiB)
    assert plan(layout, free=1060 * MiB).n_gpu_layers == 11
    assert plan(synthetic(other=500 * MiB), free=1060 * MiB).n_gpu_layers == 10


def test_bigger_context_fewer_layers():
    layout = QWEN_8B
    counts = [plan_gpu_layers(layout, n_ctx=ctx, free_bytes=LAPTOP_6GB_FREE,
                              mmproj_bytes=MMPROJ_8B).n_gpu_layers
              for ctx in (2048, 4096, 8192, 16384, 32768, 65536, 131072)]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] < counts[0] // 4  # 512 MiB of KV per layer at 131072 tokens


def test_context_zero_means_training_context():
    layout = synthetic()
    assert plan(layout, free=800 * MiB, n_ctx=0) == plan(layout, free=800 * MiB, n_ctx=4096)
    assert kv_bytes_per_layer(layout, 0) == kv_bytes_per_layer(layout, 4096) == MiB


@pytest.mark.parametrize("layout, mmproj", [(synthetic(), 0), (synthetic(), 300 * MiB),
                                            (QWEN_8B, MMPROJ_8B), (QWEN_32B, MMPROJ_32B)])
def test_plan_monotonic_in_free_memory(layout, mmproj):
    """More free memory never means fewer layers (default headroom and compute estimate)."""
    last = 0
    top = layout.n_layers + 1
    step = max(MiB, (sum(layout.layer_bytes) + 8 * GiB) // 997)
    for free in range(0, sum(layout.layer_bytes) + 10 * GiB, step):
        n = plan_gpu_layers(layout, n_ctx=8192, free_bytes=free, mmproj_bytes=mmproj).n_gpu_layers
        assert last <= n <= top, free
        last = n
    assert last == top  # and in the end everything fits


def test_default_headroom_and_compute_are_counted():
    layout, free = QWEN_8B, 12 * GiB
    p = plan_gpu_layers(layout, n_ctx=16384, free_bytes=free, mmproj_bytes=MMPROJ_8B)
    compute = estimate_compute_bytes(layout, 16384, vision=True)
    weights = sum(layout.layer_bytes) + layout.output_bytes
    kv = 36 * kv_bytes_per_layer(layout, 16384)
    assert p.needed == weights + kv + MMPROJ_8B + compute + default_headroom(free)
    assert default_headroom(free) == 512 * MiB + int(free * 0.05)


def test_compute_estimate():
    layout = QWEN_8B
    fa = estimate_compute_bytes(layout, 16384)
    assert fa >= 512 * MiB
    assert estimate_compute_bytes(layout, 16384, vision=True) == fa + 512 * MiB
    no_fa = [estimate_compute_bytes(layout, ctx, flash_attn=False) for ctx in (4096, 16384, 65536)]
    assert no_fa == sorted(no_fa) and no_fa[0] < no_fa[-1]
    # without flash attention the f32 scores of 32 heads dominate: 1 GiB at 16k tokens
    assert no_fa[1] >= fa + 900 * MiB
    assert estimate_compute_bytes(synthetic(n_embd=64), 512) == 512 * MiB  # the floor


def test_kv_bytes_per_layer():
    # Qwen3-VL-8B: 8 KV heads of 128 (K) + 128 (V), f16: 64 MiB per layer at 16k tokens
    assert kv_bytes_per_layer(QWEN_8B, 16384) == 64 * MiB
    assert kv_bytes_per_layer(QWEN_8B, 16384, bytes_per_elem=1) == 32 * MiB  # q8_0-ish


def test_realistic_8b_on_24gb_all_fit():
    p = plan_gpu_layers(QWEN_8B, n_ctx=16384, free_bytes=RTX_4090_FREE, mmproj_bytes=MMPROJ_8B)
    assert p.n_gpu_layers == 37, p.reason
    assert 8 * GiB < p.needed < 12 * GiB  # 4.4 GiB weights + 2.3 GiB KV + vision + buffers
    assert p.reason.startswith("36/36 layers on the GPU: ")
    # even at 64k tokens (9 GiB of KV) it all fits
    assert plan_gpu_layers(QWEN_8B, n_ctx=65536, free_bytes=RTX_4090_FREE,
                           mmproj_bytes=MMPROJ_8B).n_gpu_layers == 37


def test_realistic_8b_on_6gb_partial():
    p = plan_gpu_layers(QWEN_8B, n_ctx=16384, free_bytes=LAPTOP_6GB_FREE, mmproj_bytes=MMPROJ_8B)
    assert 5 <= p.n_gpu_layers < 36, p.reason
    assert p.reason.startswith(f"{p.n_gpu_layers}/36 layers on the GPU (the rest on the CPU)")
    # at 4k tokens the KV cache shrinks by 1.7 GiB and more layers fit
    small = plan_gpu_layers(QWEN_8B, n_ctx=4096, free_bytes=LAPTOP_6GB_FREE,
                            mmproj_bytes=MMPROJ_8B)
    assert p.n_gpu_layers < small.n_gpu_layers < 36


def test_realistic_32b_on_24gb_partial():
    p = plan_gpu_layers(QWEN_32B, n_ctx=32768, free_bytes=RTX_4090_FREE, mmproj_bytes=MMPROJ_32B)
    assert 30 <= p.n_gpu_layers < 64, p.reason  # 8 GiB of KV at 32k tokens on top of 17.7 GiB
    assert p.needed > RTX_4090_FREE
    at_8k = plan_gpu_layers(QWEN_32B, n_ctx=8192, free_bytes=RTX_4090_FREE,
                            mmproj_bytes=MMPROJ_32B)
    assert at_8k.n_gpu_layers > p.n_gpu_layers
    # a 48 GB card takes all of it
    assert plan_gpu_layers(QWEN_32B, n_ctx=32768, free_bytes=47 * GiB,
                           mmproj_bytes=MMPROJ_32B).n_gpu_layers == 65


def test_layout_checks_layer_count():
    with pytest.raises(ValueError, match="3 layer sizes for 4 layers"):
        synthetic(n_layers=4, layer_bytes=(1, 2, 3))


# ---------------------------------------------------------------------------------------------
# load_with_fewer_layers

class FakeLoader:
    """Fails (like a NULL model from llama.cpp) above `limit` GPU layers."""

    def __init__(self, limit: int):
        self.limit, self.calls = limit, []

    def __call__(self, n: int) -> str:
        self.calls.append(n)
        if n > self.limit:
            raise RuntimeError(f"Failed to load model from file (n_gpu_layers={n})")
        return f"model@{n}"


@pytest.mark.parametrize("limit", [36, 30, 25, 20, 12, 1, 0])
def test_fewer_layers_until_it_fits(limit, caplog):
    load = FakeLoader(limit)
    with caplog.at_level(logging.WARNING, logger="vlserve.gpu"):
        result = load_with_fewer_layers(load, 37, 36)
    n = load.calls[-1]
    assert result == f"model@{n}" and n <= limit
    assert load.calls == sorted(load.calls, reverse=True) and len(load.calls) <= 4
    assert len(caplog.records) == len(load.calls) - 1
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_retry_sequence_and_messages(caplog):
    load = FakeLoader(0)
    with caplog.at_level(logging.WARNING, logger="vlserve.gpu"):
        assert load_with_fewer_layers(load, 36, 36) == "model@0"
    assert load.calls == [36, 27, 20, 0]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == ("loading with 36 GPU layers failed (Failed to load model from file "
                           "(n_gpu_layers=36)): retrying with 27")
    assert messages[-1].endswith("retrying on the CPU only (0 GPU layers)")


def test_all_layers_sentinel_is_retried_from_the_layer_count(caplog):
    load = FakeLoader(25)
    with caplog.at_level(logging.WARNING, logger="vlserve.gpu"):
        load_with_fewer_layers(load, 0x7FFFFFFF, 36)
    assert load.calls == [0x7FFFFFFF, 27, 20]
    assert caplog.records[0].getMessage().startswith("loading with all GPU layers failed")
    calls = []

    def load(n):  # -1 is llama-cpp-python's "all"
        calls.append(n)
        if n < 0 or n > 1:
            raise MemoryError("CUDA out of memory")
        return n
    assert load_with_fewer_layers(load, -1, 2) == 1 and calls == [-1, 2, 1]


def test_no_retry_when_the_first_load_works(caplog):
    load = FakeLoader(100)
    with caplog.at_level(logging.WARNING):
        assert load_with_fewer_layers(load, 37, 36) == "model@37"
    assert load.calls == [37] and not caplog.records


def test_cpu_only_is_not_retried():
    load = FakeLoader(-1)  # even 0 fails: a corrupt file, not memory
    with pytest.raises(RuntimeError, match="n_gpu_layers=0"):
        load_with_fewer_layers(load, 0, 36)
    assert load.calls == [0]


def test_reraises_the_last_error_when_everything_fails(caplog):
    load = FakeLoader(-1)
    with pytest.raises(RuntimeError, match="n_gpu_layers=0"):
        load_with_fewer_layers(load, 37, 36)
    assert load.calls == [37, 27, 20, 0]
    load = FakeLoader(-1)
    with pytest.raises(RuntimeError, match="n_gpu_layers=37"):
        load_with_fewer_layers(load, 37, 36, attempts=1)
    assert load.calls == [37]
    load = FakeLoader(-1)
    with pytest.raises(RuntimeError):
        load_with_fewer_layers(load, 37, 36, attempts=2)
    assert load.calls == [37, 0]


def test_custom_logger_and_small_counts(caplog):
    load = FakeLoader(0)
    with caplog.at_level(logging.WARNING, logger="engine"):
        load_with_fewer_layers(load, 2, 36, log=logging.getLogger("engine"))
    assert load.calls == [2, 1, 0]
    assert {r.name for r in caplog.records} == {"engine"}


# ---------------------------------------------------------------------------------------------
# Memory detection

MEMINFO = """\
MemTotal:       32768000 kB
MemFree:         1000000 kB
MemAvailable:   20000000 kB
Buffers:          500000 kB
"""


def fake_run(outputs: dict[str, object], calls: list | None = None):
    """subprocess.run for canned commands: str = stdout, int = exit code, exception = raised."""
    def run(args, **kwargs):
        assert kwargs.get("timeout"), "every command needs a timeout"
        if calls is not None:
            calls.append(args)
        out = outputs.get(args[0] if args[0] != "sysctl" else args[-1], FileNotFoundError(args[0]))
        if isinstance(out, BaseException):
            raise out
        if isinstance(out, int):
            return subprocess.CompletedProcess(args, out, stdout="", stderr="failed")
        return subprocess.CompletedProcess(args, 0, stdout=out, stderr="")
    return run


@pytest.fixture
def meminfo(tmp_path) -> str:
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO)
    return str(path)


def detect(outputs, meminfo_path, env=None, **kw) -> Memory:
    kw.setdefault("system", "linux")
    kw.setdefault("machine", "x86_64")
    return detect_memory(run=fake_run(outputs), meminfo_path=meminfo_path, env=env or {}, **kw)


CPU = Memory("cpu", 32768000 * 1024, 20000000 * 1024, "system RAM")


def test_one_nvidia_gpu(meminfo):
    mem = detect({"nvidia-smi": "NVIDIA GeForce RTX 4090, 24564, 23012\n"}, meminfo)
    assert mem == Memory("cuda", 24564 * MiB, 23012 * MiB, "NVIDIA GeForce RTX 4090")


def test_two_nvidia_gpus_are_summed(meminfo):
    out = "NVIDIA GeForce RTX 3090, 24576, 24000\nNVIDIA GeForce RTX 3090, 24576, 20000\n"
    assert detect({"nvidia-smi": out}, meminfo) == Memory(
        "cuda", 2 * 24576 * MiB, 44000 * MiB, "2x NVIDIA GeForce RTX 3090")
    mixed = "NVIDIA A100-SXM4-80GB, 81920, 80000\nTesla T4, 15360, 15000\n"
    assert detect({"nvidia-smi": mixed}, meminfo).name == "NVIDIA A100-SXM4-80GB + Tesla T4"


def test_cuda_visible_devices(meminfo):
    out = "GPU A, 8192, 8000\nGPU B, 16384, 16000\nGPU C, 4096, 4000\n"
    smi = {"nvidia-smi": out}
    assert detect(smi, meminfo, env={"CUDA_VISIBLE_DEVICES": "1"}).name == "GPU B"
    assert detect(smi, meminfo, env={"CUDA_VISIBLE_DEVICES": "2,0"}).free == 12000 * MiB
    assert detect(smi, meminfo, env={"CUDA_VISIBLE_DEVICES": "0,7,1"}).name == "GPU A"
    assert detect(smi, meminfo, env={"CUDA_VISIBLE_DEVICES": "GPU-1234abcd"}).free == 28000 * MiB
    assert detect(smi, meminfo, env={"CUDA_VISIBLE_DEVICES": ""}) == CPU
    assert detect(smi, meminfo, env={"CUDA_VISIBLE_DEVICES": "-1"}) == CPU


@pytest.mark.parametrize("smi", [
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
    "",
    "NVIDIA GeForce RTX 4090, [N/A], [N/A]\n",
    "a, b\n\n,,\n, 100, 50\nGPU, 100, 200\nGPU, inf, nan\nGPU, 1e400, 5\n",
    9,                                               # exit code of a driver failure
    FileNotFoundError("nvidia-smi"),                 # no NVIDIA driver
    PermissionError("nvidia-smi"),
    subprocess.TimeoutExpired("nvidia-smi", 5),      # a hung driver
])
def test_no_usable_nvidia_smi_falls_back_to_ram(smi, meminfo):
    assert detect({"nvidia-smi": smi}, meminfo) == CPU


def test_garbage_lines_are_skipped(meminfo):
    out = "Some warning\nNVIDIA L4, 23034, 22000\nNVIDIA L4, [N/A], [N/A]\n"
    assert detect({"nvidia-smi": out}, meminfo) == Memory("cuda", 23034 * MiB, 22000 * MiB,
                                                          "NVIDIA L4")


def test_meminfo(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO)
    assert detect({}, str(path)) == CPU
    path.write_text("MemTotal: 1000 kB\nMemFree: 300 kB\n")  # old kernels: no MemAvailable
    assert detect({}, str(path)) == Memory("cpu", 1000 * 1024, 300 * 1024, "system RAM")


def test_no_meminfo_uses_sysconf(tmp_path):
    mem = detect({}, str(tmp_path / "missing"))
    assert mem.kind == "cpu" and mem.name == "system RAM"
    assert 0 <= mem.free <= mem.total
    if sys.platform.startswith("linux"):
        assert mem.total > 0


def test_garbage_meminfo_never_raises(tmp_path):
    path = tmp_path / "meminfo"
    path.write_bytes(b"\xff\xfe garbage \x00\n MemTotal: lots\n")
    mem = detect({}, str(path))
    assert mem.kind == "cpu" and 0 <= mem.free <= mem.total


def apple(monkeypatch, memsize: str | int | BaseException, brand="Apple M2 Max"):
    monkeypatch.setattr(gpu.sys, "platform", "darwin")
    monkeypatch.setattr(gpu.platform, "machine", lambda: "arm64")
    calls: list = []
    run = fake_run({"hw.memsize": memsize, "machdep.cpu.brand_string": brand}, calls)
    return calls, run


def test_apple_silicon_large(monkeypatch, meminfo):
    calls, run = apple(monkeypatch, f"{64 * GiB}\n")
    mem = detect_memory(run=run, meminfo_path=meminfo)
    assert mem == Memory("metal", 64 * GiB, 48 * GiB, "Apple M2 Max")  # 75% above 36 GB
    assert all(args[0] == "sysctl" for args in calls)  # no nvidia-smi on a Mac


def test_apple_silicon_small(monkeypatch, meminfo):
    _, run = apple(monkeypatch, f"{16 * GiB}\n", brand=1)
    mem = detect_memory(run=run, meminfo_path=meminfo)
    assert mem == Memory("metal", 16 * GiB, int(16 * GiB * 0.66), "Apple Silicon")
    _, run = apple(monkeypatch, f"{36 * GiB}\n")
    assert detect_memory(run=run, meminfo_path=meminfo).free == int(36 * GiB * 0.66)


@pytest.mark.parametrize("memsize", ["", "lots\n", 1, OSError("sysctl")])
def test_apple_without_sysctl_falls_back_to_ram(monkeypatch, meminfo, memsize):
    _, run = apple(monkeypatch, memsize)
    assert detect_memory(run=run, meminfo_path=meminfo) == CPU


def test_intel_mac_is_cpu(meminfo):
    assert detect({"hw.memsize": str(16 * GiB)}, meminfo, system="darwin") == CPU


@pytest.mark.parametrize("result", [types.SimpleNamespace(returncode=0, stdout=None),
                                    types.SimpleNamespace(returncode=0), object(), None])
def test_runner_returning_odd_objects_never_raises(meminfo, result):
    def run(args, **kwargs):
        return result
    assert detect_memory(run=run, meminfo_path=meminfo, system="linux", env={}) == CPU


def test_gpu_offload_supported(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    assert gpu_offload_supported() is False
    fake = types.SimpleNamespace(llama_supports_gpu_offload=lambda: True)
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    assert gpu_offload_supported() is True
    fake.llama_supports_gpu_offload = lambda: 1 / 0
    assert gpu_offload_supported() is False


# ---------------------------------------------------------------------------------------------
# read_layout

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return make_model(tmp_path_factory.mktemp("tiny"))


def test_read_layout_tiny_model(tiny):
    model, _ = tiny
    layout = read_layout(model)
    assert (layout.arch, layout.n_layers, layout.n_embd) == ("qwen3vl", 3, 64)
    assert (layout.n_head, layout.n_head_kv, layout.head_dim_k, layout.head_dim_v) == (4, 2, 16, 16)
    assert layout.context_length == 4096
    assert len(layout.layer_bytes) == 3 and len(set(layout.layer_bytes)) == 1
    reader = gguf.GGUFReader(model)  # the reference reader agrees on every tensor's size
    tensors = {t.name: int(t.n_bytes) for t in reader.tensors}
    assert sum(layout.layer_bytes) + layout.other_bytes == sum(tensors.values())
    assert sum(layout.layer_bytes) + layout.other_bytes <= model.stat().st_size
    assert layout.layer_bytes[0] == sum(v for k, v in tensors.items() if k.startswith("blk.0."))
    assert layout.output_bytes == tensors["output.weight"] + tensors["output_norm.weight"]
    assert layout.n_vocab == reader.tensors[0].shape[1]
    assert kv_bytes_per_layer(layout, 4096) == 4096 * 2 * (16 + 16) * 2


def test_read_layout_plans_the_tiny_model(tiny):
    layout = read_layout(tiny[0])
    p = plan_gpu_layers(layout, n_ctx=0, free_bytes=8 * GiB, mmproj_bytes=tiny[1].stat().st_size)
    assert p.n_gpu_layers == 4


def test_read_layout_refuses_the_mmproj(tiny):
    with pytest.raises(ValueError, match=r"mmproj-qwen3vl-tiny-f32\.gguf \(clip\)"):
        read_layout(tiny[1])


@pytest.mark.parametrize("content", [b"", b"hello world, not a model" * 10, b"GGUF",
                                     b"GGUF\x01\x00\x00\x00" + b"\x00" * 32])
def test_read_layout_refuses_non_gguf(tmp_path, content):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"weights\.bin"):
        read_layout(path)


def test_read_layout_truncated(tiny, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny[0].read_bytes()[:3000])  # inside the tokenizer metadata
    with pytest.raises(ValueError, match=r"cut\.gguf is not a readable GGUF"):
        read_layout(path)


def test_read_layout_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_layout(tmp_path / "nope.gguf")


def write_gguf(path: Path, *, endianess=gguf.GGUFEndian.LITTLE, tied: bool = False,
               head_count_kv=2, key_length: bool = True) -> Path:
    """A 2-layer llama GGUF with odd but legal metadata."""
    w = gguf.GGUFWriter(path, "llama", endianess=endianess)
    w.add_context_length(2048)
    w.add_embedding_length(32)
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(head_count_kv)
    if key_length:
        w.add_key_length(8)
        w.add_value_length(8)
    w.add_token_list([f"t{i}" for i in range(20)])  # a string array, skipped by the reader
    w.add_token_scores([0.0] * 20)
    tensors = {"token_embd.weight": (20, 32), "output_norm.weight": (32,)}
    if not tied:
        tensors["output.weight"] = (20, 32)
    for i in range(2):
        tensors[f"blk.{i}.attn_q.weight"] = (32, 32)
        tensors[f"blk.{i}.ffn_up.weight"] = (64, 32)
    tensors["blk.2.nextn.weight"] = (16,)  # a block past block_count: not a repeating layer
    for name, shape in tensors.items():
        w.add_tensor(name, np.zeros(shape, np.float32))  # the writer swaps bytes itself
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_read_layout_written_gguf(tmp_path):
    layout = read_layout(write_gguf(tmp_path / "m.gguf"))
    layer = (32 * 32 + 64 * 32) * 4
    assert layout == Layout(n_layers=2, layer_bytes=(layer, layer),
                            other_bytes=(20 * 32 * 2 + 32 + 16) * 4, n_embd=32, n_head_kv=2,
                            head_dim_k=8, head_dim_v=8, context_length=2048, arch="llama",
                            n_head=4, n_vocab=20, output_bytes=(20 * 32 + 32) * 4)


def test_read_layout_big_endian(tmp_path):
    little = read_layout(write_gguf(tmp_path / "le.gguf"))
    assert read_layout(write_gguf(tmp_path / "be.gguf", endianess=gguf.GGUFEndian.BIG)) == little


def test_read_layout_tied_embeddings_and_fallbacks(tmp_path):
    layout = read_layout(write_gguf(tmp_path / "t.gguf", tied=True, head_count_kv=[2, 4],
                                    key_length=False))
    assert layout.output_bytes == (20 * 32 + 32) * 4  # llama.cpp copies token_embd to the GPU
    assert layout.n_head_kv == 4                       # per-layer list: the largest
    assert layout.head_dim_k == layout.head_dim_v == 32 // 4


# ---------------------------------------------------------------------------------------------
# format_bytes

@pytest.mark.parametrize("n, text", [
    (int(6.1 * GiB), "6.1 GiB"), (GiB, "1.0 GiB"), (512 * MiB, "512 MiB"), (MiB, "1 MiB"),
    (12 * 1024, "12 KiB"), (1023, "1023 B"), (0, "0 B"), (-2 * GiB, "-2.0 GiB"),
    (int(23.9 * GiB), "23.9 GiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text
