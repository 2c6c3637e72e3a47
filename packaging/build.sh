#!/usr/bin/env bash
# Builds the one-file binary dist/flowqd from this checkout.
# Usage: bash packaging/build.sh [--distpath DIR] [--workpath DIR]
# Python: $PYTHON, else .venv/bin/python, with the packaging extra installed
# (.venv/bin/pip install -e ".[packaging]"). PyInstaller needs objdump
# (Debian's binutils package): installed here if missing, as scripts/test.sh
# does for redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
DIST=dist
WORK=build/pyinstaller
while [ $# -gt 0 ]; do
    case "$1" in
        --distpath) DIST=$2; shift 2 ;;
        --workpath) WORK=$2; shift 2 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
    echo "build.sh: PyInstaller is not installed for $PY; run: $PY -m pip install -e '.[packaging]'" >&2
    exit 1
fi
if ! command -v objdump >/dev/null 2>&1; then
    echo "== installing binutils (Debian package; PyInstaller needs objdump and strip)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq binutils >/dev/null
fi

"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" packaging/flowqd.spec
# The binary must at least start: a missing module shows here, not on a server.
"$DIST/flowqd" --version
echo "built $DIST/flowqd ($(du -h "$DIST/flowqd" | cut -f1))"
