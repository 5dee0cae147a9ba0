#!/usr/bin/env bash
# Set up the environment, make sure Postgres and Redis are up, run the test suite.
# Under CI=true a Postgres/Redis that will not start stops the run: the tests that need them would fail anyway
# (tests/support/service.py require_postgres/require_redis); locally they are skipped with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! bash scripts/services.sh; then
  case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
    1|true|yes)
      echo "error: Postgres/Redis not available (CI=true: the tests that need them must run, not skip)" >&2
      exit 1 ;;
    *) echo "warning: Postgres/Redis not available; tests that need them will be skipped" >&2 ;;
  esac
fi
# Two pytest-xdist workers by default, one torch thread each (tests/conftest.py): the machine's 2 cores stay
# ~97% busy (a serial run leaves them idle while tests wait on their subprocesses). SEAL_TEST_WORKERS=0 runs
# serially. --dist loadfile: a module's tests share one worker (and its module-scoped servers).
exec .venv/bin/python -m pytest -n "${SEAL_TEST_WORKERS:-2}" --dist loadfile "$@"
