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
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        echo "vlserve needs Python 3.10 or newer (set PYTHON=/path/to/python3)" >&2
        return 1
    fi
    [ -x "$root/.venv/bin/python" ] || "$py" -m venv "$root/.venv" || return 1
    backend="$(vlserve_backend)"
    stamp="$root/.venv/.vlserve-installed"
    want="$backend $extras $(cat "$root/setup.cfg" | cksum)"
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0

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
