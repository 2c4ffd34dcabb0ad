"""The catalog (data), what is on disk (discovery, pairing, refusal of mismatched pairs) and
which model `serve` starts with. Real generated GGUFs, no network."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, make_model
from vlserve.library import catalog, cpuspeed, startup
from vlserve.library.catalog import GB, CatalogError
from vlserve.engine.llama import EngineLoadError, LlamaEngine
from vlserve.config import Settings
from vlserve.library.gpu import Memory
from vlserve.library.disk import Library, PairingError, check_pair, discover, pair_directory, resolve


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Two real model pairs of different widths: tiny (64) and small (256)."""
    out = tmp_path_factory.mktemp("pairs")
    return {"tiny": make_model(out / "tiny"), "small": make_model(out / "small", "small")}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def place(pair, folder: Path, model_name: str | None = None, mmproj_name: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    model, mmproj = pair
    m = shutil.copy(model, folder / (model_name or model.name))
    p = shutil.copy(mmproj, folder / (mmproj_name or mmproj.name))
    return Path(m), Path(p)


# ---- catalog --------------------------------------------------------------------------------

def test_builtin_catalog_has_the_family_in_both_kinds():
    known = catalog.load(None)
    sizes = {(e.params_b, e.thinking) for e in known.entries}
    assert sizes == {(p, t) for p in (2, 4, 8, 32) for t in (False, True)}
    assert (known.quant, known.mmproj) == ("Q4_K_M", "F16")
    e = known.get("8B")  # aliases are case-insensitive
    assert e.id == "qwen3-vl-8b-instruct" and e.repo == "Qwen/Qwen3-VL-8B-Instruct-GGUF"
    assert e.globs("Q4_K_M", "F16") == ("*Q4_K_M*.gguf", "mmproj*F16*.gguf")
    assert known.get("qwen3-vl-4b-thinking").thinking
    with pytest.raises(CatalogError, match="known: 2b"):
        known.get("70b")


def test_memory_needs_grow_with_size_quant_and_context():
    e = catalog.load(None).get("8b")
    assert e.memory_needed("Q4_K_M", "F16") < e.memory_needed("Q8_0", "F16") \
        < e.memory_needed("F16", "F16")
    assert e.memory_needed("Q4_K_M", "F16", 32768) - e.memory_needed("Q4_K_M", "F16", 16384) \
        == e.kv_bytes(16384)
    assert e.kv_bytes(16384) == 36 * 8 * 128 * 2 * 2 * 16384  # 2.4 GB: K and V in f16


@pytest.mark.parametrize("budget_gb, thinking, want, fits", [
    (80, False, "qwen3-vl-32b-instruct", True),
    (23.5, False, "qwen3-vl-8b-instruct", True),    # a 24 GB card: the design card's 8B
    (8, False, "qwen3-vl-4b-instruct", True),
    (5, False, "qwen3-vl-2b-instruct", True),
    (1, False, "qwen3-vl-2b-instruct", False),      # nothing fits: the smallest, flagged
    (23.5, True, "qwen3-vl-8b-thinking", True),
])
def test_choose_the_largest_that_fits(budget_gb, thinking, want, fits):
    entry, ok = catalog.load(None).choose(int(budget_gb * GB), thinking=thinking)
    assert (entry.id, ok) == (want, fits)


# On a CPU: (decode threads, free RAM, probed memory bandwidth) -> the model started. The
# estimate is min(bandwidth, threads x 15 GB/s) x 0.45 / Q4_K_M weights (2B 1.11 GB, 4B
# 2.50, 8B 5.03, 32B 19.8), usable from 5 tokens/s: the 2B needs 12.3 GB/s, the 4B 27.8,
# the 8B 55.9, the 32B 220.
CPU_TABLE = [
    # 2 cores, 24 GB: the 8B fits; slow memory: none is usable, the smallest it is
    (2, 24, 10, "qwen3-vl-2b-instruct", True),
    (2, 24, 23.1, "qwen3-vl-2b-instruct", True),    # this VM, two probes: 4B 4.2 tokens/s
    (2, 24, 35.7, "qwen3-vl-4b-instruct", True),    # the cores cap it at 30 GB/s: 4B 5.4, 8B 2.7
    (1, 16, 40, "qwen3-vl-2b-instruct", True),      # one thread: the core decides, not memory
    (4, 16, 20, "qwen3-vl-2b-instruct", True),
    (8, 32, 40, "qwen3-vl-4b-instruct", True),
    (16, 64, 60, "qwen3-vl-8b-instruct", True),     # the 32B: 1.4 tokens/s
    (16, 64, 20, "qwen3-vl-2b-instruct", True),     # many cores, slow memory: memory decides
    (64, 256, 250, "qwen3-vl-32b-instruct", True),
    (64, 256, 200, "qwen3-vl-8b-instruct", True),   # the 32B: 4.5, just short
    (64, 8, 200, "qwen3-vl-4b-instruct", True),      # fast, but only the 2B and 4B fit in RAM
    (4, 4, 20, "qwen3-vl-2b-instruct", False),      # nothing fits: the smallest, flagged
]


@pytest.mark.parametrize("threads, ram_gb, bandwidth_gbs, want, fits", CPU_TABLE)
def test_on_a_cpu_the_largest_model_that_fits_and_decodes_usably(threads, ram_gb,
                                                                   bandwidth_gbs, want, fits):
    cpu = cpuspeed.CPU(threads, bandwidth_gbs * GB)
    entry, ok = catalog.load(None).choose(int(ram_gb * GB), cpu=cpu)
    assert (entry.id, ok) == (want, fits)
    if fits:
        usable = cpu.tokens_per_s(entry.weight_bytes("Q4_K_M")) >= cpuspeed.USABLE_TOKENS_PER_S
        smallest = entry.id == "qwen3-vl-2b-instruct"
        assert usable or smallest


def test_the_start_on_a_cpu_logs_the_estimates_and_why(tmp_path, monkeypatch, caplog,
                                                       no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # the choice is named by the "download" advice
    monkeypatch.setattr(startup, "memory_budget",
                        lambda: Memory("cpu", 24 * GB, 23 * GB, "system RAM"))
    probed = []
    monkeypatch.setattr(startup, "cpu_speed",
                        lambda threads: probed.append(threads) or cpuspeed.CPU(threads, 10 * GB))
    with caplog.at_level("INFO", logger="vlserve"), pytest.raises(startup.StartupError) as info:
        startup.choose(None, None, models_dir=tmp_path, quant=None, threads=2)
    assert probed == [2]
    assert "Qwen/Qwen3-VL-2B-Instruct-GGUF" in str(info.value)
    log = caplog.text
    assert "a CPU only: 2 threads, memory 10.0 GB/s (probed)" in log
    assert "estimated decode speed here: qwen3-vl-2b-instruct 4.1, qwen3-vl-4b-instruct 1.8, " \
        "qwen3-vl-8b-instruct 0.9 tokens/s (usable: >= 5)" in log
    assert "choosing qwen3-vl-2b-instruct" in log


def test_a_gpu_still_picks_by_memory_and_probes_no_cpu(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(startup, "memory_budget", lambda: Memory("cuda", 24 * GB, 23 * GB, "GPU"))
    monkeypatch.setattr(startup, "cpu_speed", lambda threads: pytest.fail("probed on a GPU"))
    with pytest.raises(startup.StartupError, match="Qwen3-VL-8B-Instruct-GGUF"):
        startup.choose(None, None, models_dir=tmp_path, quant=None, threads=2)


def test_on_a_cpu_a_local_model_too_slow_to_use_is_passed_over(pairs, tmp_path, monkeypatch,
                                                                no_network):
    small = place(pairs["small"], tmp_path / "a")
    tiny = place(pairs["tiny"], tmp_path / "b")
    monkeypatch.setattr(startup, "memory_budget", lambda: Memory("cpu", 64 * GB, 64 * GB, "RAM"))
    weights = small[0].stat().st_size
    # a machine on which the small model would decode at 2.25 tokens/s, the tiny one faster
    monkeypatch.setattr(startup, "cpu_speed", lambda threads: cpuspeed.CPU(1, 5 * weights))
    choose = lambda: startup.choose(None, None, models_dir=tmp_path, quant=None)  # noqa: E731
    assert choose().model.resolve() == tiny[0]
    monkeypatch.setattr(startup, "cpu_speed", lambda threads: cpuspeed.CPU(1, 12 * weights))
    assert choose().model.resolve() == small[0]                       # 5.4 tokens/s


def test_the_bandwidth_probe_measures_something_plausible():
    cpu = cpuspeed.probe(2, size=8 * 2**20, rounds=2)
    assert cpu.cores == 2 and 0.1 * GB < cpu.bandwidth < 10_000 * GB


def test_user_catalog_adds_and_overrides_entries(tmp_path):
    (tmp_path / "catalog.toml").write_text('''
[defaults]
quant = "Q8_0"

[[model]]
id = "qwen3-vl-8b-instruct"
aliases = ["8b"]
repo = "my-mirror/Qwen3-VL-8B-Instruct-GGUF"
params_b = 8
layers = 36
kv_heads = 8
size_gb = { Q8_0 = 8.7 }
mmproj_gb = { F16 = 1.2 }

[[model]]
id = "my-finetune"
repo = "acme/shelf-inspector-GGUF"
params_b = 4
layers = 36
kv_heads = 8
model_pattern = "shelf-*{quant}.gguf"
''')
    known = catalog.load(tmp_path)
    assert known.quant == "Q8_0" and len(known.entries) == 9
    assert known.get("8b").repo == "my-mirror/Qwen3-VL-8B-Instruct-GGUF"
    assert known.get("my-finetune").globs("Q8_0", "F16") == ("shelf-*Q8_0.gguf",
                                                             "mmproj*F16*.gguf")
    assert str(tmp_path / "catalog.toml") in known.sources


def test_malformed_user_catalog_is_a_clear_error(tmp_path):
    (tmp_path / "catalog.toml").write_text('[[model]]\nid = "x"\n')
    with pytest.raises(CatalogError, match="'x'.*needs id, repo"):
        catalog.load(tmp_path)
    (tmp_path / "catalog.toml").write_text("[[model]\n")
    with pytest.raises(CatalogError, match="not valid TOML"):
        catalog.load(tmp_path)


# ---- what is on disk ------------------------------------------------------------------------

def test_mismatched_mmproj_is_refused_naming_both_files(pairs):
    tiny, small = pairs["tiny"], pairs["small"]
    check_pair(*tiny)
    with pytest.raises(PairingError) as info:
        check_pair(tiny[0], small[1])
    msg = str(info.value)
    assert tiny[0].name in msg and small[1].name in msg and "256" in msg and "64" in msg
    with pytest.raises(PairingError, match="is a vision projector.*pass it as --mmproj"):
        check_pair(tiny[1], tiny[0])   # swapped
    with pytest.raises(PairingError, match="is a text model, not a vision projector"):
        check_pair(tiny[0], small[0])


def test_the_engine_refuses_a_mismatched_pair_before_llama_cpp_sees_it(pairs):
    tiny, small = pairs["tiny"], pairs["small"]
    with pytest.raises(EngineLoadError, match=small[1].name):
        LlamaEngine(Settings(model=str(tiny[0]), mmproj=str(small[1]), n_ctx=512))


def test_pairing_in_one_folder_by_width_then_by_name(pairs, tmp_path):
    # Two quants of one model share its mmproj; another model's mmproj sits beside them.
    a1, pa = place(pairs["small"], tmp_path, "Qwen3VL-8B-Instruct-Q4_K_M.gguf",
                   "mmproj-Qwen3VL-8B-Instruct-F16.gguf")
    a2, _ = place(pairs["small"], tmp_path, "Qwen3VL-8B-Instruct-Q8_0.gguf",
                  "mmproj-Qwen3VL-8B-Instruct-F16.gguf")
    b, pb = place(pairs["tiny"], tmp_path, "Qwen3VL-2B-Instruct-Q4_K_M.gguf",
                  "mmproj-Qwen3VL-2B-Instruct-F16.gguf")
    # a same-width projector with a less similar name must lose
    shutil.copy(pairs["small"][1], tmp_path / "mmproj-other-model-F16.gguf")
    found, notes = pair_directory(sorted(tmp_path.glob("*.gguf")))
    assert dict(found) == {a1: pa, a2: pa, b: pb} and notes == []


def test_model_without_a_fitting_projector_is_reported_not_paired(pairs, tmp_path):
    place(pairs["tiny"], tmp_path, mmproj_name="unused.gguf")
    (tmp_path / "unused.gguf").unlink()
    shutil.copy(pairs["small"][1], tmp_path / "mmproj-small.gguf")
    found, notes = pair_directory(sorted(tmp_path.glob("*.gguf")))
    assert found == [] and "no mmproj with embedding width 64" in notes[0]


def test_discovery_walks_folders_skips_caches_and_links_catalog_entries(pairs, tmp_path):
    known = catalog.load(None)
    pulled = place(pairs["small"], tmp_path / "Qwen3-VL-8B-Instruct-GGUF",
                   "Qwen3VL-8B-Instruct-Q4_K_M.gguf", "mmproj-Qwen3VL-8B-Instruct-F16.gguf")
    dropped = place(pairs["tiny"], tmp_path / "mine")
    place(pairs["tiny"], tmp_path / "Qwen3-VL-8B-Instruct-GGUF" / ".cache" / "x")  # partials
    (tmp_path / "notes.gguf").write_bytes(b"not a gguf")
    models, _ = discover(tmp_path, known)
    by_id = {m.id: m for m in models}
    assert set(by_id) == {"Qwen3VL-8B-Instruct-Q4_K_M", "qwen3vl-tiny-f32"}
    assert (by_id["Qwen3VL-8B-Instruct-Q4_K_M"].model, by_id["qwen3vl-tiny-f32"].mmproj) \
        == (pulled[0], dropped[1])
    assert by_id["Qwen3VL-8B-Instruct-Q4_K_M"].entry == known.get("8b")
    assert by_id["qwen3vl-tiny-f32"].entry is None
    # a name resolves by id, file name, or a catalog alias whose files are here
    for name in ("qwen3vl-tiny-f32", "QWEN3VL-TINY-F32.gguf"):
        assert resolve(name, models, known).model == dropped[0]
    assert resolve(str(dropped[0]), models, known) is None   # paths are the CLI's business
    assert resolve("8b", models, known).model == pulled[0]
    assert resolve("4b", models, known) is None and resolve("nope", models, known) is None


def test_library_lists_the_started_model_first_under_its_alias(pairs, tmp_path):
    place(pairs["small"], tmp_path)
    started = place(pairs["tiny"], tmp_path / "t")
    from vlserve.library.disk import LocalModel
    lib = Library(tmp_path, catalog.load(None), LocalModel("tiny", *started, entry=None))
    assert [m.id for m in lib.models()] == ["tiny", "qwen3vl-small-f32"]
    assert lib.get("TINY").model == started[0]
    outside = Library(tmp_path / "t", None, LocalModel("x", *pairs["small"], entry=None))
    assert [m.id for m in outside.models()] == ["x", "qwen3vl-tiny-f32"]


# ---- which model serve starts with ----------------------------------------------------------

def test_a_path_finds_its_mmproj_by_name(pairs, tmp_path):
    model, mmproj = place(pairs["tiny"], tmp_path)
    shutil.copy(pairs["small"][1], tmp_path / "mmproj-qwen3vl-small-f32.gguf")
    choice = startup.choose(str(model), None, models_dir=tmp_path / "none", quant=None)
    assert (choice.model, choice.mmproj) == (model, mmproj)
    (tmp_path / mmproj.name).unlink()
    with pytest.raises(startup.StartupError, match="no matching mmproj.*--mmproj"):
        startup.choose(str(model), None, models_dir=tmp_path / "none", quant=None)


def test_a_catalog_name_with_files_on_disk_needs_no_network(pairs, tmp_path, no_network):
    pulled = place(pairs["tiny"], tmp_path / "Qwen3-VL-2B-Instruct-GGUF",
                   "Qwen3VL-2B-Instruct-Q4_K_M.gguf", "mmproj-Qwen3VL-2B-Instruct-F16.gguf")
    choice = startup.choose("2b", None, models_dir=tmp_path, quant=None)
    assert (choice.model, choice.mmproj, choice.entry.id) == (*pulled, "qwen3-vl-2b-instruct")


def test_no_model_picks_the_largest_on_disk_that_fits(pairs, tmp_path, monkeypatch, no_network):
    small = place(pairs["small"], tmp_path / "a")
    tiny = place(pairs["tiny"], tmp_path / "b")
    place(pairs["small"], tmp_path / "demo", "qwen3vl-big-f32.gguf")
    (tmp_path / "demo" / "qwen3vl-big-f32.gguf").write_bytes(
        pairs["small"][0].read_bytes() + b"\0" * 1000)   # larger than small: would win
    budget = lambda free: lambda: Memory("cpu", free, free, "RAM")  # noqa: E731
    monkeypatch.setattr(startup, "memory_budget", budget(64 * GB))
    monkeypatch.chdir(tmp_path)   # a relative models dir, as start.sh passes it
    choose = lambda: startup.choose(None, None, models_dir=Path("."), quant=None,  # noqa: E731
                                    exclude=tmp_path / "demo")
    assert choose().model.resolve() == small[0]      # the demo copy is bigger, and excluded
    monkeypatch.setattr(startup, "memory_budget", budget(1 * GB + 10_000_000))  # tiny only
    assert choose().model.resolve() == tiny[0]


def test_no_model_offline_says_what_to_download_and_offers_the_demo(tmp_path, monkeypatch,
                                                                    no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(startup, "memory_budget", lambda: Memory("cuda", 24 * GB, 23 * GB, "GPU"))
    with pytest.raises(startup.StartupError) as info:
        startup.choose(None, None, models_dir=tmp_path, quant=None)
    msg = str(info.value)
    assert "Qwen/Qwen3-VL-8B-Instruct-GGUF" in msg and "*Q4_K_M*.gguf" in msg
    assert str(tmp_path / "Qwen3-VL-8B-Instruct-GGUF") in msg and "--demo" in msg


def test_unknown_name_lists_local_and_catalog_models(pairs, tmp_path):
    place(pairs["tiny"], tmp_path)
    with pytest.raises(startup.StartupError, match="Local: qwen3vl-tiny-f32. Catalog: 2b"):
        startup.choose("gpt-5", None, models_dir=tmp_path, quant=None)


def test_serve_without_a_model_offline_exits_with_the_advice(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "serve", "--models-dir",
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "offline" in r.stderr and "bash start.sh --demo" in r.stderr


def test_models_command_lists_catalog_memory_and_disk(pairs, tmp_path):
    place(pairs["tiny"], tmp_path)
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "models", "--models-dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "qwen3-vl-32b-thinking" in r.stdout and "GB" in r.stdout
    assert "qwen3vl-tiny-f32" in r.stdout


def test_pull_then_serve_by_name_without_network(pairs, tmp_path):
    """`vlserve pull 2b` through huggingface-hub against a loopback Hub (HF_ENDPOINT, the
    mirror setting), then `serve --model 2b` offline finds the files and serves them."""
    from fakehub import FakeHub
    repo = tmp_path / "repo"
    place(pairs["tiny"], repo, "Qwen3VL-2B-Instruct-Q4_K_M.gguf",
          "mmproj-Qwen3VL-2B-Instruct-F16.gguf")
    place(pairs["small"], repo, "Qwen3VL-2B-Instruct-Q8_0.gguf",
          "mmproj-Qwen3VL-2B-Instruct-Q8_0.gguf")
    models = tmp_path / "models"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    with FakeHub() as hub:
        hub.add_repo("Qwen/Qwen3-VL-2B-Instruct-GGUF", repo)
        r = subprocess.run([sys.executable, str(ROOT / "server.py"), "pull", "2b",
                            "--models-dir", str(models)], capture_output=True, text=True,
                           env={**env, "HF_ENDPOINT": hub.url}, timeout=120)
        assert r.returncode == 0, r.stderr
        fetched = {req.path.rsplit("/", 1)[-1] for req in hub.requests if req.method == "GET"}
    folder = models / "Qwen3-VL-2B-Instruct-GGUF"
    assert sorted(p.name for p in folder.glob("*.gguf")) == [
        "Qwen3VL-2B-Instruct-Q4_K_M.gguf", "mmproj-Qwen3VL-2B-Instruct-F16.gguf"]
    assert (folder / "Qwen3VL-2B-Instruct-Q4_K_M.gguf").read_bytes() \
        == pairs["tiny"][0].read_bytes()
    assert "Qwen3VL-2B-Instruct-Q8_0.gguf" not in fetched and "serve it" in r.stdout

    from conftest import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "serve", "--model", "2b",
                             "--models-dir", str(models), "--port", str(port), "--no-warmup",
                             "--threads", "2"], env={**env, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import requests
        import time
        for _ in range(300):
            assert proc.poll() is None, proc.stderr.read()
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                if health.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        assert health.json()["model"] == "qwen3-vl-2b-instruct"
        cards = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"]
        assert cards[0]["catalog"] == "qwen3-vl-2b-instruct" and cards[0]["loaded"]
    finally:
        proc.terminate()
        proc.wait(15)
