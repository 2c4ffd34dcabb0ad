#!/usr/bin/env bash
# The test command (README, CI): set up .venv with the dev extras, then run the whole suite
# against the real llama.cpp engine (the tests generate their tiny models). Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
vlserve_bootstrap dev
# The page tests drive Debian's chromium through Playwright; as root on Debian/Ubuntu, install it.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    echo "vlserve: installing chromium for the page tests" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null
    echo "vlserve: installed $(dpkg-query -W -f '${Package} ${Version}' chromium 2>/dev/null)" >&2
fi
# Which browser the page tests will drive (they also name it at the end of pytest's output).
chromium="${VLSERVE_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [ -n "$chromium" ]; then
    echo "vlserve: page tests use $("$chromium" --version 2>/dev/null || echo "$chromium (no --version)")" >&2
fi
exec .venv/bin/python -m pytest "$@"
