#!/usr/bin/env bash
# The rules the code keeps, checked by tools (configured in pyproject.toml): ruff
# (pyflakes, pycodestyle, isort, bugbear, pyupgrade), mypy (strict on the core a verdict
# rests on) and the import contracts of the package layering. Runs in the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${VENV:-.venv}/bin"
status=0
echo "lint: ruff"; "$py/ruff" check --quiet . || status=1
echo "lint: mypy"; "$py/mypy" --no-error-summary || status=1
echo "lint: import contracts"; "$py/lint-imports" --no-cache >/dev/null || { "$py/lint-imports" --no-cache | sed -n '/Broken contracts/,$p'; status=1; }
[ "$status" -eq 0 ] && echo "lint: clean"
exit "$status"
