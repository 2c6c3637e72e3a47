#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine and runs them.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing redis-server (Debian package)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

# The dashboard's browser test drives Debian's Chromium (never a downloaded one).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo"; else SUDO="none"; fi
    if [ "$SUDO" = none ]; then
        echo "== chromium missing and no root or sudo: the dashboard's browser test will be skipped"
    else
        echo "== installing chromium (Debian package)"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    fi
fi
if [ -x /usr/bin/chromium ]; then
    # With the browser present, a browser test that cannot run is a failure, not a skip.
    export REQUIRE_BROWSER_TESTS=1
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing flowqd with its test extras"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" -e plugins/flowqd-example

echo "== ruff"
.venv/bin/ruff check flowqd tests plugins bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
