#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite (slow tests: add `-m slow`).
#   bash tools/run_tests.sh [pytest args...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh
py="${VIRTUAL_ENV:-$root/.venv}/bin/python"
"$py" -m pytest "$@"
