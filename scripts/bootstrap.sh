# Sourced by start.sh and scripts/test.sh: make .venv and install vlserve into it with the
# right llama-cpp-python build for this machine (CUDA, Metal or CPU). Idempotent and quiet
# when nothing changed. Usage: vlserve_bootstrap [EXTRAS]   (e.g. "dev")

vlserve_backend() {
    if [ -n "${VLSERVE_BACKEND:-}" ]; then echo "$VLSERVE_BACKEND"
    elif nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        # A CUDA build needs the toolkit; a toolkit without a GPU (CI boxes) is not enough.
        if command -v nvcc >/dev/null 2>&1; then echo cuda
        else echo "vlserve: NVIDIA GPU found but no nvcc (CUDA toolkit): building for CPU" >&2; echo cpu
        fi
    elif [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = arm64 ]; then echo metal
    else echo cpu
    fi
}

vlserve_bootstrap() {
    local extras="${1:-}" root py backend stamp want
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    py="${PYTHON:-python3}"
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "vlserve needs Python 3.11 or newer (set PYTHON=/path/to/python3)" >&2
        return 1
    fi
    [ -x "$root/.venv/bin/python" ] || "$py" -m venv "$root/.venv" || return 1
    backend="$(vlserve_backend)"
    stamp="$root/.venv/.vlserve-installed"
    want="$backend $extras $(cat "$root/setup.cfg" | cksum)"
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
    # A venv set up with the dev extra (by the tests) serves just as well: no reinstall.
    [ -z "$extras" ] && [ -f "$stamp" ] \
        && [ "$(cat "$stamp")" = "$backend dev $(cat "$root/setup.cfg" | cksum)" ] && return 0

    local pip=("$root/.venv/bin/python" -m pip install --disable-pip-version-check -q)
    local cmake="" cache=()
    case "$backend" in
        cuda)  cmake="-DGGML_CUDA=on" ;;
        metal) cmake="-DGGML_METAL=on" ;;
    esac
    # pip's wheel cache ignores CMAKE_ARGS: never let a cached CPU wheel stand in for a GPU build.
    [ "$backend" = cpu ] || cache=(--no-cache-dir)
    echo "vlserve: installing into .venv (llama-cpp-python for $backend; the first build takes several minutes)" >&2
    "${pip[@]}" --upgrade pip wheel setuptools || return 1
    if [ -n "$cmake" ] && ! "$root/.venv/bin/python" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' 2>/dev/null; then
        CMAKE_ARGS="$cmake" "${pip[@]}" "${cache[@]}" --force-reinstall --no-deps "llama-cpp-python==0.3.36" || return 1
    fi
    local target="$root"
    [ -n "$extras" ] && target="$root[$extras]"
    CMAKE_ARGS="$cmake" "${pip[@]}" "${cache[@]}" -e "$target" || return 1
    echo "$want" > "$stamp"
}

# Offline: set up .venv from a bundle made by `vlserve bundle` (its directory or .tar.gz) with
# pip's network off, and put the bundle's model files in models/ (the bundle's install.sh does
# both). Prints the two model paths (relative to the checkout) for `vlserve serve`. The venv
# then runs the bundle's vlserve wheel, not this checkout's code. Refuses a bundle made for
# another Python version or platform. Later starts with the same bundle are instant.
# Usage: vlserve_bootstrap_bundle PATH
vlserve_bootstrap_bundle() (
    local bundle="$1" root py tmp="" dir names want stamp
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    py="${PYTHON:-python3}"
    [ -x "$root/.venv/bin/python" ] && py="$root/.venv/bin/python"
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "vlserve needs Python 3.11 or newer (set PYTHON=/path/to/python3)" >&2
        exit 1
    fi
    trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT
    if [ -d "$bundle" ]; then
        dir="$bundle"
    elif [ -f "$bundle" ]; then
        # A .tar.gz: its first members (manifest.json, install.sh, README.txt) are enough to
        # check it; the models are extracted only when the venv or models/ need them.
        tmp="$(mktemp -d "$root/.bundle-XXXXXX")" || exit 1
        dir="$(_vlserve_untar "$py" "$bundle" "$tmp" head)" || exit 1
    else
        echo "vlserve: no offline bundle at $bundle" >&2; exit 1
    fi
    [ -f "$dir/manifest.json" ] && [ -f "$dir/install.sh" ] || {
        echo "vlserve: $bundle is not a vlserve bundle (no manifest.json/install.sh)" >&2; exit 1; }
    names="$(PYTHON="$py" bash "$dir/install.sh" --check --venv "$root/.venv")" || exit 1
    stamp="$root/.venv/.vlserve-installed"
    want="bundle $(cksum < "$dir/manifest.json")"
    if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
           && [ -f "$root/models/$(echo "$names" | sed -n 1p)" ] \
           && [ -f "$root/models/$(echo "$names" | sed -n 2p)" ]; }; then
        if [ -n "$tmp" ]; then
            echo "vlserve: extracting $bundle" >&2
            rm -rf "$tmp" && mkdir "$tmp" && _vlserve_untar "$py" "$bundle" "$tmp" all >/dev/null \
                || exit 1
        fi
        echo "vlserve: installing into .venv from the offline bundle $bundle (no network)" >&2
        PIP_NO_INDEX=1 PYTHON="$py" bash "$dir/install.sh" --venv "$root/.venv" \
            --models-dir "$root/models" || exit 1
        echo "$want" > "$stamp"
    fi
    echo "$names" | sed 's|^|models/|'
)

# _vlserve_untar PYTHON TARBALL DEST head|all: extract a bundle's .tar.gz (all of it, or just
# its top-level files, which `vlserve bundle` writes first) into DEST; prints DEST/<bundle dir>.
_vlserve_untar() {
    "$1" - "${@:2}" <<'PY'
import os, sys, tarfile
bundle, dest, part = sys.argv[1:4]
head = {"manifest.json", "install.sh", "README.txt"}
opts = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
top = None
try:
    with tarfile.open(bundle, "r|gz") as tf:
        for member in tf:
            name = member.name.rstrip("/").split("/")
            top = top or name[0]
            if name[0] != top or ".." in name or member.name.startswith("/"):
                sys.exit("vlserve: %s is not a vlserve bundle (it holds %s)"
                         % (bundle, member.name))
            if part == "head":
                if len(name) != 2 or name[1] not in head:
                    continue
                head.discard(name[1])
            tf.extract(member, dest, **opts)
            if part == "head" and not head:
                break
except (tarfile.TarError, OSError, EOFError) as e:
    sys.exit("vlserve: cannot read the bundle %s: %s" % (bundle, e))
print(os.path.join(dest, top or ""))
PY
}
