#!/usr/bin/env bash
# One command: set up .venv (first run only) and serve on http://127.0.0.1:7860/.
#   bash start.sh                               # the largest model that fits (downloaded if need be)
#   bash start.sh --model 8b | M.gguf [--mmproj P.gguf] [--host 0.0.0.0] [--port 7860] ...
#   bash start.sh --demo                        # the generated tiny model (random weights)
#   bash start.sh --help                        # every option (each also reads VLSERVE_*)
#   bash start.sh --offline-bundle PATH [...]   # no network: install from a `vlserve bundle`
#                                               # (directory or .tar.gz) and serve its model
set -euo pipefail
for a in "$@"; do
    case "$a" in -h|--help) cat <<'USAGE'
bash start.sh [--offline-bundle PATH] [SERVE OPTIONS]

Sets up .venv on the first run (llama-cpp-python built for CUDA, Metal or CPU), then runs
`vlserve serve` with the options below. Without --model it serves the largest model that fits
this machine's memory: one in models/, else a catalog model, downloaded (`vlserve models`
lists them). Offline with no model, --demo serves a generated tiny model.

  --offline-bundle PATH  install from a `vlserve bundle` directory or .tar.gz (no network)
                         and serve its model

USAGE
        break ;;
    esac
done
bundle="" args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --offline-bundle)
            [ $# -ge 2 ] || {
                echo "start.sh: --offline-bundle needs a PATH (a bundle directory or .tar.gz)" >&2
                exit 2; }
            bundle="$2"; shift 2 ;;
        --offline-bundle=*) bundle="${1#--offline-bundle=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ -n "$bundle" ]; then   # relative to where start.sh was run from
    [ -e "$bundle" ] || { echo "start.sh: no offline bundle at $bundle" >&2; exit 2; }
    bundle="$(cd "$(dirname "$bundle")" && pwd)/$(basename "$bundle")"
fi
cd "$(dirname "$0")"
source scripts/bootstrap.sh
if [ -z "$bundle" ]; then
    vlserve_bootstrap
else
    models="$(vlserve_bootstrap_bundle "$bundle")"
    given="${VLSERVE_MODEL:-}"
    for a in ${args[@]+"${args[@]}"}; do
        case "$a" in --model|--model=*) given=1 ;; esac
    done
    if [ -z "$given" ]; then   # serve the bundle's model
        args=(--model "$(echo "$models" | sed -n 1p)" --mmproj "$(echo "$models" | sed -n 2p)"
              ${args[@]+"${args[@]}"})
    fi
fi
exec .venv/bin/vlserve serve ${args[@]+"${args[@]}"}
