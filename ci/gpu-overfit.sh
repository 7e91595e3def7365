#!/usr/bin/env bash
# The GPU overfit job: the `small` preset's overfit regression case on CUDA.
# Fails when there is no CUDA device (the suite refuses to pass by skipping), when the run
# does not overfit, or when it is worse than tests/overfit/baselines/small-cuda.json (the
# comparison is skipped, and says so, until that baseline is committed).
# Extra arguments go to pytest, e.g. `bash ci/gpu-overfit.sh --overfit-update-baseline`.
# The per-test numbers land in overfit-results.json (a CI artifact).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh dev
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT=true
plugin=()
# The package registers its pytest plugin under pytest11; load it by hand if it does not.
if ! .venv/bin/python -c "import sys; from importlib.metadata import entry_points; \
sys.exit(0 if any(e.name == 'healthcheck' for e in entry_points(group='pytest11')) else 1)"; then
    plugin=(-p healthcheck.pytest_plugin)
fi
.venv/bin/python -m pytest ${plugin[@]+"${plugin[@]}"} -m overfit --overfit-device cuda --overfit-preset small \
    --overfit-results "${OVERFIT_RESULTS:-overfit-results.json}" -rs "$@"
