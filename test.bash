#!/usr/bin/env bash
# Runs the whole test suite:  ./test.bash [pytest args]
# Sets up .venv/ (with the test tools) on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/ensure_env.sh
exec .venv/bin/python -m pytest "$@"
