"""The installed program is the whole product: a wheel built from this checkout, installed
into a fresh virtualenv (as pip, pipx or `uv tool install` do), serves the page, the demo model
and the benchmark from another directory, with no checkout beside it, and writes nothing
under site-packages. The demo model is generated once, atomically, however many servers start
at the same moment."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from conftest import ROOT, ServerProcess, free_port, user
from vlserve.library.disk import Library, LocalModel, read_info
from vlserve.library.places import demo_dir
from vlserve.library.tinymodel import DEMO_NAME, demo_model, make_model

PAGE = ROOT / "vlserve" / "webui"
# What a clone has: no venv, no models, no build output (the wheel is built from a copy)
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "models", "build", "dist",
                                    "*.egg-info", "__pycache__", ".pytest_cache")


class Command(ServerProcess):
    """`vlserve serve …` as given (any executable, folder and environment) on a free port."""

    def __init__(self, cmd: list[str], log_path: Path, *, cwd: Path = ROOT,
                 env: dict | None = None, wait: bool = True):
        self.port = free_port()
        self._start([*cmd, "--port", str(self.port), "--threads", "1", "--no-warmup"],
                    log_path, cwd=cwd, env=env, wait=wait)


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and mtime: a change to any shows."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", symlinks=True, ignore=NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "-w", str(tmp / "dist"),
                    str(tmp / "src")], check=True, capture_output=True, timeout=300)
    [built] = (tmp / "dist").glob("vlserve-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh virtualenv with the wheel and its dependencies, as pip resolves them (from its
    cache: the checkout's setup built the same llama-cpp-python), and an environment with a
    home of its own and no trace of the checkout."""
    tmp = tmp_path_factory.mktemp("installed")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VLSERVE_", "PYTHON", "VIRTUAL_ENV", "XDG_"))}
    env.update(HOME=str(tmp / "home"), XDG_DATA_HOME=str(tmp / "data"),
               XDG_CACHE_HOME=str(tmp / "cache"), PYTHONDONTWRITEBYTECODE="1",
               PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    [site] = (venv / "lib").glob("python3*/site-packages")
    return {"venv": venv, "env": env, "cwd": elsewhere, "site": site, "tmp": tmp}


def run(installed, *args) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=installed["cwd"], env=installed["env"], capture_output=True,
                          text=True, timeout=120)


def test_the_wheel_carries_the_page_the_demo_generator_and_the_benchmark(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    page = {f"vlserve/webui/{p.relative_to(PAGE)}" for p in PAGE.rglob("*") if p.is_file()}
    assert page and page <= names, sorted(page - names)
    assert {"vlserve/library/tinymodel.py", "vlserve/bench/__init__.py", "vlserve/__main__.py",
            "vlserve/library/catalog.toml", "vlserve/library/qwen3vl-8b-instruct.jinja"} <= names


def test_the_installed_program_serves_page_demo_and_chat_from_anywhere(installed, tmp_path):
    site_before = files_of(installed["site"])
    where = run(installed, "python", "-c", "import vlserve; print(vlserve.__file__)")
    assert where.stdout.startswith(str(installed["site"])), where   # not the checkout's
    server = Command(["vlserve", "serve", "--demo"], tmp_path / "installed.log",
                     cwd=installed["cwd"], env=installed["env"])
    try:
        page = requests.get(server.url + "/", timeout=10)
        assert page.status_code == 200
        static = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert "/static/js/main.js" in static
        for path in static + ["/static/js/chat.js"]:   # and a module main.js imports
            assert requests.get(server.url + path, timeout=10).status_code == 200, path
        r = requests.post(server.url + "/v1/chat/completions", timeout=60, json={
            "messages": [user("hello")], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "vlserve-demo-tiny", r.text
    finally:
        server.stop()
    # the demo model went to the per-user data folder, not site-packages nor the directory
    # the server was started from
    demo = installed["tmp"] / "data" / "vlserve" / "models" / "tiny"
    assert sorted(p.name for p in demo.iterdir()) == sorted(
        [f"{DEMO_NAME}-f32.gguf", f"mmproj-{DEMO_NAME}-f32.gguf"])
    assert not any(installed["cwd"].iterdir())
    bench = run(installed, "vlserve", "bench", "--help")
    assert bench.returncode == 0 and "--scenario" in bench.stdout, bench.stderr
    module = run(installed, "python", "-m", "vlserve", "--help")
    assert module.returncode == 0 and "serve" in module.stdout, module.stderr
    assert files_of(installed["site"]) == site_before   # nothing written under site-packages


def test_two_demo_servers_starting_together_both_serve_and_a_restart_rewrites_nothing(tmp_path):
    models = tmp_path / "models"
    cmd = [sys.executable, str(ROOT / "server.py"), "serve", "--demo", "--models-dir",
           str(models)]
    servers = [Command(cmd, tmp_path / f"demo{i}.log", wait=False) for i in range(2)]
    try:
        for s in servers:
            s.wait_ready()
        for s in servers:
            r = requests.post(s.url + "/v1/chat/completions", timeout=60, json={
                "messages": [user("hello")], "max_tokens": 2})
            assert r.status_code == 200, (r.text, s.log())
    finally:
        for s in servers:
            s.stop()
    written = files_of(demo_dir(models))
    assert sorted(written) == sorted([f"{DEMO_NAME}-f32.gguf", f"mmproj-{DEMO_NAME}-f32.gguf"])
    again = Command(cmd, tmp_path / "again.log")   # a third start: served as it is
    again.stop()
    assert files_of(demo_dir(models)) == written


def _write(folder: str) -> str:
    model, mmproj = make_model(folder, name=DEMO_NAME)   # always writes: a race each time
    return f"{read_info(model).kind} {read_info(mmproj).kind}"


def test_writers_racing_for_the_same_files_never_fail_nor_leave_a_half_file(tmp_path):
    """Stress: four processes write the same model files at once, again and again. With one
    shared temporary name, one writer's rename took the file from under another's
    (FileNotFoundError)."""
    with concurrent.futures.ProcessPoolExecutor(4) as pool:
        for _ in range(5):
            assert list(pool.map(_write, [str(tmp_path)] * 4)) == ["model mmproj"] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{DEMO_NAME}-f32.gguf", f"mmproj-{DEMO_NAME}-f32.gguf"])   # no temporary file left


def test_a_model_dropped_in_under_the_demo_file_name_is_its_own_model(tmp_path):
    demo = demo_model(demo_dir(tmp_path))
    copy = tmp_path / "mine"
    copy.mkdir()
    for f in demo:
        shutil.copy(f, copy / f.name)
    pinned = LocalModel("vlserve-demo-tiny", demo[0], demo[1], None)
    library = Library(tmp_path, pinned=pinned)
    ids = {m.id: m.model for m in library.models()}
    assert ids == {"vlserve-demo-tiny": demo[0], f"{DEMO_NAME}-f32": copy / demo[0].name}
    assert library.get(f"{DEMO_NAME}-f32").model == copy / demo[0].name
    assert library.get("vlserve-demo-tiny").model == demo[0]
