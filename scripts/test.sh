#!/usr/bin/env bash
# Set up the environment, make sure Postgres and Redis are up, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh || echo "warning: Postgres/Redis not available; tests that need them will be skipped" >&2
exec .venv/bin/python -m pytest "$@"
