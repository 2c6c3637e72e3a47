#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine and runs them.
# Usage: bash scripts/test.sh [pytest args...]
# The tests get a virtualenv of their own ($FLOWQD_TEST_VENV, default .venv-test):
# the example plugin they install (node type `reverse`) and the test tools stay
# out of the .venv that the README's first command makes for running flowqd.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runs a command as root: directly, through sudo (asking for a password only on
# a terminal), or not at all (returns 1).
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
        sudo "$@"
    else return 1
    fi
}

# Installs Debian packages; fails (returns 1) without root or sudo.
apt_install() {
    echo "== installing $* (Debian packages)"
    as_root apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Installs what the tests cannot run without, or stops saying what to install.
need() {
    apt_install "$@" || {
        echo "scripts/test.sh: could not install $* (needs root or sudo):" \
             "install it as root, then run this again" >&2
        exit 1
    }
}

PY=${PYTHON:-python3}
VENV=${FLOWQD_TEST_VENV:-.venv-test}

command -v redis-server >/dev/null 2>&1 || need redis-server
# Debian splits venv's pip bootstrap into python3-venv.
if [ ! -x "$VENV/bin/python" ] && ! "$PY" -c "import ensurepip" >/dev/null 2>&1; then
    need python3-venv
fi

# The dashboard's browser test drives Debian's Chromium (never a downloaded one).
if [ ! -x /usr/bin/chromium ] && ! apt_install chromium; then
    echo "== chromium missing and not installable: the dashboard's browser test will be skipped"
fi
if [ -x /usr/bin/chromium ]; then
    # With the browser present, a browser test that cannot run is a failure, not a skip.
    export REQUIRE_BROWSER_TESTS=1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PY" -m venv "$VENV"
fi
echo "== installing flowqd with its test extras and the example plugin into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" \
    -e plugins/flowqd-example

echo "== ruff"
"$VENV/bin/ruff" check flowqd tests plugins bench
"$VENV/bin/ruff" format --check flowqd tests plugins bench
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
exec "$VENV/bin/python" -m pytest "$@"
