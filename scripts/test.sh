#!/usr/bin/env bash
# The test command (README, CI): set up .venv with the dev extras, generate the tiny model,
# run the whole suite against the real llama.cpp engine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
vlserve_bootstrap dev
.venv/bin/python scripts/make_tiny_model.py --out-dir models/tiny >/dev/null
exec .venv/bin/python -m pytest "$@"
