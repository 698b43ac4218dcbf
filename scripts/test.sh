#!/usr/bin/env bash
# The README's test command: set up .venv if needed, then run every test,
# the slow integration tests (real Ray Train/Tune, MLflow registry, Ray job
# submission) included. For the fast suite only: .venv/bin/pytest
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest -m "" --timeout=900 -p no:cacheprovider "$@"
