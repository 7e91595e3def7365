#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with the given extras, CPU torch.
# Usage: bash ci/setup.sh [EXTRAS]     e.g. bash ci/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
extras="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>/dev/null || true
target="."
[ -n "$extras" ] && target=".[$extras]"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c ci/constraints-cpu.txt -e "$target" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
"$venv/bin/python" -c "import ris_model, healthcheck" \
    || { echo "setup failed: the project did not install into $venv" >&2; exit 1; }
