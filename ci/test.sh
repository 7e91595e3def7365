#!/usr/bin/env bash
# The test command: sets up .venv (CPU torch), runs the lint step (ci/lint.sh), then the
# default suite (unit, property, e2e: everything not marked slow or overfit) and the CPU
# overfit case (tiny).
# Extra arguments replace that and go to pytest, e.g. `bash ci/test.sh -k config -x`.
# RESULTS_DIR=dir writes JUnit XML and the overfit JSON results there (CI artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh dev
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT=true OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
results=()
overfit_results=()
if [ -n "${RESULTS_DIR:-}" ]; then
    mkdir -p "$RESULTS_DIR"
    results=(--junitxml "$RESULTS_DIR/junit.xml")
    overfit_results=(--overfit-results "$RESULTS_DIR/overfit.json" --junitxml "$RESULTS_DIR/junit-overfit.xml")
fi
# ruff, mypy and the import contracts first: a finding fails the run
bash ci/lint.sh
# pytest exits 5 when it ran no test: with `set -e` that fails this script too.
.venv/bin/python -m pytest -m "not slow and not overfit" -q ${results[@]+"${results[@]}"}
.venv/bin/python -m pytest -m overfit --overfit-device cpu --overfit-preset tiny -q ${overfit_results[@]+"${overfit_results[@]}"}
