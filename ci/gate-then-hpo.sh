#!/usr/bin/env bash
# The preflight gate on the study's config, then HPO on it. HPO refuses to start unless
# gate.json passed for the same config hash, so a failed gate stops the job here.
# Env: PRESET (small), TRIALS (20), EPOCHS (10), STUDY_DIR (studies/ci), DEVICE (auto),
#      STORAGE (optional optuna database URL shared by several workers).
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${PRESET:-small}"
study_dir="${STUDY_DIR:-studies/ci}"
device="${DEVICE:-auto}"
bash ci/setup.sh  # on a GPU runner set CONSTRAINTS= (empty) to keep the CUDA build of torch
.venv/bin/healthcheck gate --preset "$preset" --run-dir "$study_dir" --device "$device"
storage_args=()
[ -n "${STORAGE:-}" ] && storage_args=(--storage "$STORAGE")
.venv/bin/ris-model hpo --preset "$preset" --study-dir "$study_dir" --trials "${TRIALS:-20}" \
    --epochs "${EPOCHS:-10}" --device "$device" --gate require "${storage_args[@]}"
