#!/usr/bin/env bash
# The test command: sets up .venv (CPU torch) and runs the default suite.
# Extra arguments go to pytest, e.g. `bash ci/test.sh -k config -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh dev
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT=true OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
# Default suite: everything but the slow and overfit suites; pytest's exit 5 (no tests) fails too.
.venv/bin/python -m pytest -m "not slow and not overfit" -q
