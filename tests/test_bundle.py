"""The offline bundle, for real: `vlserve bundle` on this machine, then `start.sh
--offline-bundle` in a copy of the checkout with pip's network off, a real gunicorn server and
one chat completion with an image. Building the bundle needs the package index (pip wheel)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import requests
from conftest import ROOT, data_url, free_port, user
from vlserve.library.tinymodel import make_model

from vlserve.bundle import sha256

START_TIMEOUT = 300  # venv creation + offline install + model load


def vlserve(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlserve", *args], capture_output=True,
                          text=True, check=check, cwd=ROOT)


def offline_env() -> dict:
    """pip can reach nothing: no index (and a dead one as a trap), no config, no find-links."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VLSERVE_", "PIP_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != venv_bin)
    env.update(PIP_NO_INDEX="1", PIP_INDEX_URL="http://127.0.0.1:9/", PIP_CONFIG_FILE=os.devnull,
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               # The interpreter the bundle was made for (a venv's python names its base one).
               PYTHON=getattr(sys, "_base_executable", sys.executable))
    return env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return make_model(tmp_path_factory.mktemp("bundle-model"))


@pytest.fixture(scope="module")
def bundle_dir(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "vlserve-offline"
    model, mmproj = tiny
    run = vlserve("bundle", str(out), "--model", str(model), "--mmproj", str(mmproj), check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


@pytest.fixture(scope="module")
def bundle_tar(tiny, bundle_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle-tar") / "vlserve-offline-tar"
    model, mmproj = tiny
    vlserve("bundle", str(out), "--model", str(model), "--mmproj", str(mmproj), "--tar",
            "--wheels-from", str(bundle_dir / "wheels"))
    return out.with_name(out.name + ".tar.gz")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The checkout's files as a fresh clone would have them (plus uncommitted work): no .venv,
    no models."""
    dest = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def start(checkout: Path, *args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(["bash", "start.sh", *args], cwd=checkout, env=offline_env(),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the whole process group (gunicorn's master and worker), then make sure it is
    gone."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def test_bundle_contents(bundle_dir, tiny):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert m["python_tag"] == f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert m["platform_tag"] and m["system"] and m["machine"]
    assert m["llama_cpp_python"]["version"] == "0.3.36"
    assert m["llama_cpp_python"]["backend"] in ("cpu", "cuda", "metal", "vulkan", "hip", "sycl")
    wheels = {p.name.split("-")[0] for p in (bundle_dir / "wheels").glob("*.whl")}
    assert {"vlserve", "llama_cpp_python", "flask", "gunicorn", "numpy", "pillow", "pip",
            "setuptools", "wheel"} <= wheels
    assert not {"pytest", "openai"} & wheels, "the dev extra does not belong in a bundle"
    files = {f["path"]: f for f in m["files"]}
    assert set(files) == {p.relative_to(bundle_dir).as_posix()
                          for p in bundle_dir.glob("*/*")}
    for src in tiny:
        entry = files[f"models/{src.name}"]
        assert entry["size"] == src.stat().st_size and entry["sha256"] == sha256(src)
    assert m["model"] == f"models/{tiny[0].name}" and m["mmproj"] == f"models/{tiny[1].name}"
    assert os.access(bundle_dir / "install.sh", os.X_OK)
    assert "start.sh --offline-bundle" in (bundle_dir / "README.txt").read_text()


def test_vlserve_wheel_is_complete(bundle_dir):
    """Everything in the package (data files too) is in the wheel the bundle installs."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                             "vlserve"], cwd=ROOT, capture_output=True, check=True).stdout
    package = {n for n in listed.decode().split("\0") if n and (ROOT / n).is_file()}
    (whl,) = (bundle_dir / "wheels").glob("vlserve-*.whl")
    with zipfile.ZipFile(whl) as zf:
        missing = package - set(zf.namelist())
    assert not missing, (f"not in the vlserve wheel: {sorted(missing)}; declare data files in "
                         "setup.cfg [options.package_data]")


def test_tarball(bundle_tar, bundle_dir):
    with tarfile.open(bundle_tar) as tf:
        names = tf.getnames()
        manifest = json.load(tf.extractfile(names[0]))
    top = bundle_tar.name.removesuffix(".tar.gz")
    assert names[:3] == [f"{top}/manifest.json", f"{top}/install.sh", f"{top}/README.txt"]
    assert {f"{top}/{f['path']}" for f in manifest["files"]} == set(names[3:])
    same = json.loads((bundle_dir / "manifest.json").read_text())
    assert [(f["path"], f["sha256"]) for f in manifest["files"]] == \
        [(f["path"], f["sha256"]) for f in same["files"]]


def test_existing_output_is_refused(bundle_dir, tiny):
    run = vlserve("bundle", str(bundle_dir), "--model", str(tiny[0]), "--mmproj", str(tiny[1]),
                  check=False)
    assert run.returncode != 0 and "already exists" in run.stderr


def test_mismatched_bundle_is_refused(bundle_dir, checkout, tmp_path):
    fake = tmp_path / "py27-bundle"
    shutil.copytree(bundle_dir, fake, copy_function=os.link)
    m = json.loads((fake / "manifest.json").read_text())
    m.update(python_version="2.7.18", python_tag="cp27")
    (fake / "manifest.json").unlink()
    (fake / "manifest.json").write_text(json.dumps(m))
    had_venv = (checkout / ".venv").exists()
    run = subprocess.run(["bash", "start.sh", "--offline-bundle", str(fake), "--no-warmup"],
                         cwd=checkout, env=offline_env(), capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode != 0
    assert "does not fit this machine" in run.stderr and "Python 2.7.18" in run.stderr, run.stderr
    assert had_venv or not (checkout / ".venv").exists(), "refused before making a venv"


def test_offline_round_trip(bundle_dir, checkout, tmp_path):
    port = free_port()
    t0 = time.monotonic()
    proc = start(checkout, "--offline-bundle", str(bundle_dir), "--port", str(port),
                 "--no-warmup", "--threads", "2", log=tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            log = (tmp_path / "server.log").read_text()
            assert proc.poll() is None, log
            assert time.monotonic() - t0 < START_TIMEOUT, "not ready in time:\n" + log
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        print(f"offline install + start: {time.monotonic() - t0:.1f}s")
        r = requests.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "any", "max_tokens": 8, "temperature": 0,
            "messages": [user("What is in this image?", ("img", data_url()))]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
        served = requests.get(url + "/v1/models", timeout=5).json()["data"][0]["id"]
        model = json.loads((bundle_dir / "manifest.json").read_text())["model"]
        assert served.startswith(Path(model).stem), (served, model)
    finally:
        stop(proc)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the server's process group is left

    # What runs is the bundle's wheel, installed for real (not the checkout, not editable).
    where = subprocess.run([str(checkout / ".venv/bin/python"), "-c",
                            "import vlserve; print(vlserve.__file__)"], cwd="/",
                           capture_output=True, text=True, check=True).stdout
    assert "site-packages" in where
    for f in (bundle_dir / "models").iterdir():
        assert sha256(checkout / "models" / f.name) == sha256(f)

    # A second start with the same bundle installs nothing.
    t0 = time.monotonic()
    run = subprocess.run(["bash", "start.sh", "--offline-bundle", str(bundle_dir), "--help"],
                         cwd=checkout, env=offline_env(), capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0 and "Usage: vlserve serve" in run.stdout, run.stderr
    assert "installing" not in run.stderr and time.monotonic() - t0 < 20


def test_tarball_start(bundle_tar, checkout):
    """start.sh takes the .tar.gz: it extracts it beside the checkout, installs from it and
    leaves the (identical) models alone. Runs after the round trip: .venv is there already
    (its stamp goes: this bundle's manifest may equal the directory bundle's)."""
    (checkout / ".venv/.vlserve-installed").unlink(missing_ok=True)
    before = {p.name: p.stat().st_ino for p in (checkout / "models").glob("*.gguf")}
    run = subprocess.run(["bash", "start.sh", f"--offline-bundle={bundle_tar}", "--help"],
                         cwd=checkout, env=offline_env(), capture_output=True, text=True,
                         timeout=240, check=False)
    assert run.returncode == 0 and "Usage: vlserve serve" in run.stdout, run.stderr
    assert "extracting" in run.stderr and "already in place" in run.stderr, run.stderr
    assert {p.name: p.stat().st_ino for p in (checkout / "models").glob("*.gguf")} == before
    assert not list(checkout.glob(".bundle-*")), "the extraction is cleaned up"
