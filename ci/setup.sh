#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with the given extras, CPU torch.
# Usage: bash ci/setup.sh [EXTRAS]     e.g. bash ci/setup.sh dev
# CONSTRAINTS=path overrides the constraints file; CONSTRAINTS= (empty) uses none (GPU machines).
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
constraints="${CONSTRAINTS-ci/constraints-cpu.txt}"
constraint_args=()
[ -n "$constraints" ] && constraint_args=(-c "$constraints")
log="$(mktemp)"
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "${constraint_args[@]}" -e "$target" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    echo "setup failed: pip could not install the project (log above)" >&2
    exit 1
fi
rm -f "$log"
"$venv/bin/python" -c "import ris_model, healthcheck" \
    || { echo "setup failed: the project did not install into $venv" >&2; exit 1; }
