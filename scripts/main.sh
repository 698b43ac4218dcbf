#!/usr/bin/env bash
# The README's main command: set up .venv if needed, then run the end-to-end
# pipeline (panel -> featurize -> train on Ray Train -> MLflow register ->
# screen) on its offline default data. Extra arguments go to the `run` job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pipelines run "$@"
