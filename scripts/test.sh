#!/usr/bin/env bash
# The test command (README, CI): set up .venv with the dev extras, generate the tiny model,
# run the whole suite against the real llama.cpp engine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
vlserve_bootstrap dev
# The page tests drive Debian's chromium through Playwright; as root on Debian/Ubuntu, install it.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    echo "vlserve: installing chromium for the page tests" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null
fi
.venv/bin/python scripts/make_tiny_model.py --out-dir models/tiny >/dev/null
exec .venv/bin/python -m pytest "$@"
