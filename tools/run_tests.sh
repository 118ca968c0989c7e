#!/usr/bin/env bash
# Set up (idempotent), lint (ruff, configured in pyproject.toml), run the default test suite, then
# the end-to-end `ray job submit` test in its own pytest process (it starts and stops a Ray
# cluster of its own).
#   bash tools/run_tests.sh                 # lint and both
#   bash tools/run_tests.sh [pytest args]   # just those (e.g. -m slow, -m e2e, tests/test_vocab.py)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh
py="${VIRTUAL_ENV:-$root/.venv}/bin/python"
if [ "$#" -gt 0 ]; then
    exec "$py" -m pytest "$@"
fi
"$py" -m ruff check .
"$py" -m pytest -ra
"$py" -m pytest -ra -m e2e
