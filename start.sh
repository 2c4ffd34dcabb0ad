#!/usr/bin/env bash
# One command: set up .venv (first run only) and serve on http://127.0.0.1:7860/.
#   bash start.sh                               # no model given: the generated demo model
#   bash start.sh --model M.gguf --mmproj P.gguf [--host 0.0.0.0] [--port 7860] ...
#   bash start.sh --help                        # every option (each also reads VLSERVE_*)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
vlserve_bootstrap
exec .venv/bin/vlserve serve "$@"
