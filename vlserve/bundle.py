"""`vlserve bundle OUT --model M.gguf --mmproj P.gguf [--tar]`: an offline install bundle.

Made on a connected machine, it holds everything needed to install vlserve and serve one model
on an air-gapped machine with the same OS, CPU architecture and Python version:

    wheels/        vlserve, every dependency (llama-cpp-python as built here), pip/setuptools/wheel
    models/        the GGUF and its mmproj (hard links when possible, else copies)
    install.sh     makes a venv and installs with pip's network off; places the models
    manifest.json  versions, python/platform tags, llama.cpp backend, every file's size and sha256
    README.txt     how to use it

On the air-gapped machine: `bash install.sh`, or in a vlserve checkout
`bash start.sh --offline-bundle PATH [serve options…]` (PATH: the directory or the .tar.gz).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import click

from . import __version__
from .library import places
from .options import option

ROOT = places.ROOT   # the folder holding the package: a checkout, or site-packages
FORMAT = 1
# The files a bundle starts with, in this order (start.sh reads a .tar.gz's head without
# decompressing the models).
HEAD = ("manifest.json", "install.sh", "README.txt")
# Never copied into the throwaway source tree the vlserve wheel is built from.
SOURCE_SKIP = {".git", ".venv", "venv", "models", "build", "dist", "__pycache__", ".pytest_cache",
               ".ruff_cache", ".mypy_cache", ".benchmarks", "node_modules", "*.egg-info",
               ".bundle-*", ".vlserve-bundle-*", "*.gguf", "*.tar.gz", "*.whl"}


@click.command("bundle", context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.argument("out", type=click.Path(path_type=Path))
@option("--model", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Text model GGUF.")
@option("--mmproj", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Vision projector (mmproj) GGUF.")
@option("--tar", is_flag=True, help="Write OUT.tar.gz instead of the directory OUT.")
@option("--wheels-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Reuse wheels collected before (e.g. another bundle's wheels/) instead of "
             "running pip wheel.")
def bundle(out: Path, model: Path, mmproj: Path, tar: bool, wheels_from: Path | None):
    """Write an offline install bundle for this platform and Python version.

    The wheels come from `pip wheel` run by this venv's Python, so the bundle fits machines
    with the same OS, CPU architecture and Python version (install.sh and start.sh refuse
    others). llama-cpp-python is the wheel pip has cached, or one it builds with $CMAKE_ARGS:
    its build is not taken from this venv. For a CUDA bundle run
    `CMAKE_ARGS=-DGGML_CUDA=on PIP_NO_CACHE_DIR=1 vlserve bundle …` (a rebuild, minutes).
    llama.cpp compiles for this machine's CPU by default; for other CPUs of the same
    architecture add -DGGML_NATIVE=off to CMAKE_ARGS.
    """
    if model.name == mmproj.name:
        raise click.UsageError("--model and --mmproj must have different file names")
    name = out.name.removesuffix(".tar.gz")
    final = out.with_name(name + ".tar.gz") if tar else out
    if final.exists() and (final.is_file() or any(final.iterdir())):
        raise click.ClickException(f"{final} already exists: remove it or choose another OUT")
    final.parent.mkdir(parents=True, exist_ok=True)
    # Staged next to OUT and moved there when complete: a failed run leaves nothing behind.
    with tempfile.TemporaryDirectory(prefix=".vlserve-bundle-", dir=final.parent) as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        collect_wheels(stage / "wheels", wheels_from)
        place_models(stage / "models", [model, mmproj])
        manifest = write_bundle_files(stage, model.name, mmproj.name)
        if tar:
            write_tar(stage, final)
        else:
            os.replace(stage, final)
    report(final, manifest)


# -- wheels -----------------------------------------------------------------------------------

def collect_wheels(dest: Path, wheels_from: Path | None) -> None:
    """Every wheel an offline `pip install vlserve` needs, plus pip, setuptools and wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    if wheels_from is not None:
        for whl in sorted(wheels_from.glob("*.whl")):
            link_or_copy(whl, dest / whl.name)
    else:
        warn_gpu_build()
        with tempfile.TemporaryDirectory(prefix="vlserve-src-") as tmp:
            src = copy_source(Path(tmp) / "vlserve")
            cmd = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check",
                   "--wheel-dir", str(dest), str(src), "pip", "setuptools", "wheel"]
            click.echo("vlserve bundle: " + " ".join(cmd), err=True)
            rc = subprocess.call(cmd)
        if rc:
            raise click.ClickException(f"pip wheel failed (exit status {rc}): see its output above")
    have = {whl.name.split("-")[0].lower() for whl in dest.glob("*.whl")}
    missing = {"vlserve", "llama_cpp_python", "pip", "setuptools", "wheel"} - have
    if missing:
        raise click.ClickException(f"no wheel for {', '.join(sorted(missing))} in {dest}")


def copy_source(dest: Path) -> Path:
    """The project without venvs, models, caches or build outputs: the vlserve wheel is built
    from this copy, so stale files in the checkout's build/ can never end up in it."""
    if places.checkout() is None:
        raise click.ClickException(f"vlserve bundle runs from a vlserve source checkout; "
                                   f"{ROOT} is not one (no setup.cfg and server.py)")

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if any(fnmatch.fnmatch(n, p) for p in SOURCE_SKIP)}
        for n in names:  # virtual environments and bundles, whatever their names
            p = Path(directory, n)
            venv = (p / "pyvenv.cfg").exists()
            if venv or (p / "manifest.json").exists() and (p / "wheels").is_dir():
                skip.add(n)
        return skip

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def warn_gpu_build() -> None:
    if llama_gpu_offload() and not os.environ.get("CMAKE_ARGS"):
        click.secho("vlserve bundle: this venv's llama-cpp-python is a GPU build, but pip wheel "
                    "takes llama-cpp-python from pip's cache or builds it with $CMAKE_ARGS (unset "
                    "here): the bundle will likely hold a CPU build. For a CUDA bundle run "
                    "CMAKE_ARGS=-DGGML_CUDA=on PIP_NO_CACHE_DIR=1 vlserve bundle …", fg="yellow",
                    err=True)


def llama_gpu_offload() -> bool | None:
    try:
        import llama_cpp
        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # noqa: BLE001 - a broken or missing install only loses a hint
        return None


def wheel_backend(whl: Path) -> str:
    """cuda, metal, vulkan, hip, sycl or cpu: which ggml backend libraries the wheel ships."""
    with zipfile.ZipFile(whl) as zf:
        names = " ".join(zf.namelist()).lower()
    for backend in ("cuda", "metal", "vulkan", "hip", "sycl", "opencl"):
        if f"libggml-{backend}" in names or f"ggml-{backend}.dll" in names:
            return backend
    return "cpu"


# -- models -----------------------------------------------------------------------------------

def place_models(dest: Path, models: list[Path]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for model in models:
        link_or_copy(model, dest / model.name)


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# -- manifest, install.sh, README.txt ---------------------------------------------------------

def write_bundle_files(stage: Path, model: str, mmproj: str) -> dict:
    manifest = make_manifest(stage, model, mmproj)
    (stage / "install.sh").write_text(INSTALL_SH)
    (stage / "install.sh").chmod(0o755)
    (stage / "README.txt").write_text(readme(manifest))
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def make_manifest(stage: Path, model: str, mmproj: str) -> dict:
    llama = next(stage.glob("wheels/llama_cpp_python-*.whl"))
    impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, sys.implementation.name)
    libc = platform.libc_ver()
    return {
        "format": FORMAT,
        "vlserve_version": wheel_version(next(stage.glob("wheels/vlserve-*.whl"))),
        "made_by_vlserve": __version__,
        "python_version": platform.python_version(),
        "python_tag": f"{impl}{sys.version_info.major}{sys.version_info.minor}",
        "platform_tag": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
        "system": platform.system(),
        "machine": platform.machine(),
        "libc": list(libc) if libc[0] else None,
        "cpu": cpu_name(),
        "llama_cpp_python": {
            "version": wheel_version(llama),
            "wheel": llama.name,
            "backend": wheel_backend(llama),
            "venv_gpu_offload": llama_gpu_offload(),
            "cmake_args": os.environ.get("CMAKE_ARGS", ""),
        },
        "model": f"models/{model}",
        "mmproj": f"models/{mmproj}",
        "files": [file_entry(stage, p) for p in sorted(stage.glob("*/*")) if p.is_file()],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def wheel_version(whl: Path) -> str:
    return whl.name.split("-")[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def file_entry(stage: Path, path: Path) -> dict:
    return {"path": path.relative_to(stage).as_posix(), "size": path.stat().st_size,
            "sha256": sha256(path)}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def readme(m: dict) -> str:
    llama = m["llama_cpp_python"]
    py = m["python_version"].rsplit(".", 1)[0]
    libc = " ".join(m["libc"]) if m["libc"] else "?"
    return f"""\
vlserve {m['vlserve_version']} offline bundle, made {m['created']}
  for Python {py} ({m['python_tag']}) on {m['system']} {m['machine']} ({m['platform_tag']}, {libc})
  llama-cpp-python {llama['version']}, {llama['backend']} build
  model:  {m['model']}
  mmproj: {m['mmproj']}

Nothing here uses the network. On a machine with the same OS, CPU architecture and Python {py}:

  bash install.sh [--venv DIR] [--models-dir DIR]      (defaults: ./.venv and ./models)
  DIR/bin/vlserve serve --model MODELS/{m['model'][7:]} --mmproj MODELS/{m['mmproj'][7:]}

or, inside a vlserve checkout (the directory or this bundle's .tar.gz):

  bash start.sh --offline-bundle /path/to/bundle [--host 0.0.0.0] [--port 7860] [...]

start.sh then makes .venv with this bundle's vlserve wheel (what runs is the vlserve of this
bundle, not the checkout's code), puts the model files in the checkout's models/ and serves
them. Pass --offline-bundle on every start (later starts are instant); without it start.sh
installs the checkout itself, which needs the network.

Notes
- pip runs with --no-index --find-links wheels (PIP_NO_INDEX=1): it never goes online.
- install.sh refuses another Python version, OS or architecture, or an older glibc, and checks
  every file's size and sha256 against manifest.json (a damaged copy is named).
- llama-cpp-python was compiled on the machine that made this bundle ({m['cpu'] or '?'}),
  by default for that exact CPU: an older CPU may stop with "Illegal instruction". Bundles for
  other CPUs: CMAKE_ARGS="-DGGML_NATIVE=off" PIP_NO_CACHE_DIR=1 vlserve bundle ...
  GPU bundles: CMAKE_ARGS="-DGGML_CUDA=on" (the target needs the same CUDA driver stack).
"""


# -- tar ----------------------------------------------------------------------------------------

def write_tar(stage: Path, final: Path) -> None:
    """OUT.tar.gz with the small files first; models are already compressed, so gzip level 1."""
    part = final.with_name(final.name + ".part")
    files = [stage / n for n in HEAD] + sorted(p for p in stage.glob("*/*") if p.is_file())
    with tarfile.open(part, "w:gz", compresslevel=1) as tf:
        for path in files:
            tf.add(path, arcname=f"{stage.name}/{path.relative_to(stage).as_posix()}",
                   recursive=False)
    os.replace(part, final)


def report(final: Path, m: dict) -> None:
    size = final.stat().st_size if final.is_file() else sum(f["size"] for f in m["files"])
    wheels = sum(f["path"].startswith("wheels/") for f in m["files"])
    click.echo(f"{final}: {size / 2**20:.1f} MiB, {wheels} wheels, vlserve "
               f"{m['vlserve_version']} for {m['python_tag']} {m['platform_tag']}, "
               f"llama-cpp-python {m['llama_cpp_python']['backend']}")
    click.echo(f"On the offline machine: bash install.sh (in the bundle), or in a vlserve "
               f"checkout: bash start.sh --offline-bundle {final.name}")


# The bundle's installer. It reads everything from manifest.json next to it; the Python part
# also serves start.sh (`install.sh --check` answers the model file names).
INSTALL_SH = r'''#!/usr/bin/env bash
# Installs vlserve from this offline bundle; pip never uses the network.
#   bash install.sh [--venv DIR] [--models-dir DIR]   (defaults: ./.venv and ./models)
#   bash install.sh --check    (does the bundle fit this machine? prints the model files)
# PYTHON=/path/to/python3 picks the interpreter for a new venv. See README.txt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$PWD/.venv" models="$PWD/models" check=""
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv="$2"; shift 2 ;;
        --venv=*) venv="${1#*=}"; shift ;;
        --models-dir) models="$2"; shift 2 ;;
        --models-dir=*) models="${1#*=}"; shift ;;
        --check) check=1; shift ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

bundle_py() {  # bundle_py PYTHON MODE [ARGS...]
    "$1" - "$here" "${@:2}" <<'PY'
import hashlib, json, os, platform, shutil, sys

here, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(os.path.join(here, "manifest.json")) as f:
    m = json.load(f)


def fail(msg, code):
    sys.stderr.write("vlserve: " + msg + "\n")
    sys.exit(code)


def vtuple(v):
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check():
    impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, sys.implementation.name)
    tag = "%s%d%d" % (impl, sys.version_info[0], sys.version_info[1])
    bad = []
    if m["python_tag"] != tag:
        bad.append("it is for Python %s (%s), this is Python %s (%s, %s)" % (
            m["python_version"], m["python_tag"], platform.python_version(), tag, sys.executable))
    if (m["system"], m["machine"]) != (platform.system(), platform.machine()):
        bad.append("it is for %s %s (%s), this machine is %s %s" % (
            m["system"], m["machine"], m["platform_tag"], platform.system(), platform.machine()))
    libc, want = platform.libc_ver(), m.get("libc") or ["", ""]
    if want[0] == "glibc" == libc[0] and vtuple(libc[1]) < vtuple(want[1]):
        bad.append("it needs glibc %s or newer, this machine has %s" % (want[1], libc[1]))
    if bad:
        fail("this offline bundle (%s) does not fit this machine: %s.\n  Make the bundle with "
             "`vlserve bundle` on a machine with the same OS, architecture and Python version "
             "(or set PYTHON=/path/to/a/matching/python3)." % (here, "; ".join(bad)), 3)
    print(os.path.basename(m["model"]))
    print(os.path.basename(m["mmproj"]))


def verify():
    for f in m["files"]:
        path = os.path.join(here, f["path"])
        if not os.path.isfile(path):
            fail("the bundle is incomplete: %s is missing; copy the bundle again" % f["path"], 4)
        if os.path.getsize(path) != f["size"] or sha256(path) != f["sha256"]:
            fail("the bundle is damaged: %s differs from manifest.json; copy it again"
                 % f["path"], 4)


def place(models):
    files = {f["path"]: f for f in m["files"]}
    for rel in (m["model"], m["mmproj"]):
        src, dst = os.path.join(here, rel), os.path.join(models, os.path.basename(rel))
        shown = os.path.join(os.path.basename(models), os.path.basename(rel))
        if os.path.exists(dst):
            if os.path.samefile(src, dst) or (os.path.getsize(dst) == files[rel]["size"]
                                              and sha256(dst) == files[rel]["sha256"]):
                sys.stderr.write("vlserve: %s is already in place\n" % shown)
                continue
            sys.stderr.write("vlserve: replacing %s (it differs from the bundle's)\n" % shown)
        tmp = dst + ".part"
        if os.path.exists(tmp):
            os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        sys.stderr.write("vlserve: placed %s\n" % shown)


if mode == "check":
    check()
elif mode == "verify":
    verify()
elif mode == "place":
    place(args[0])
elif mode == "version":
    print(m["vlserve_version"])
PY
}

py="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] && py="$venv/bin/python"
names="$(bundle_py "$py" check)"
[ -n "$check" ] && { echo "$names"; exit 0; }
mkdir -p "$(dirname "$venv")" "$models"
venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"
models="$(cd "$models" && pwd)"
version="$(bundle_py "$py" version)"
echo "vlserve: checking the bundle's files" >&2
bundle_py "$py" verify

# Only this bundle's wheels: no index, no pip.conf, no find-links from the environment.
export PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_REQUIRE_HASHES 2>/dev/null || true
[ -x "$venv/bin/python" ] || { echo "vlserve: creating $venv" >&2; "$py" -m venv "$venv"; }
pip=("$venv/bin/python" -m pip install --no-index --find-links "$here/wheels" -q)
echo "vlserve: installing vlserve $version and its dependencies from the bundle" >&2
"${pip[@]}" --upgrade pip setuptools wheel
"${pip[@]}" "vlserve==$version"
# An existing (e.g. editable) vlserve of the same version counts as installed: replace it.
"${pip[@]}" --force-reinstall --no-deps "vlserve==$version"
bundle_py "$venv/bin/python" place "$models"

model="$(echo "$names" | sed -n 1p)" mmproj="$(echo "$names" | sed -n 2p)"
echo "vlserve $version is installed in $venv. Serve the bundled model with:" >&2
echo "  $venv/bin/vlserve serve --model $models/$model --mmproj $models/$mmproj" \
     "[--host 0.0.0.0] [--port 7860]" >&2
'''
