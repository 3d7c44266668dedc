#!/usr/bin/env bash
# Makes sure .venv/ holds exactly what Pipfile.lock pins, building it when it
# is missing, half-built (an interrupted set-up) or older than the lock file.
# Usage: scripts/ensure_env.sh [--dev]     (--dev adds the test tools)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
pipenv_version="2026.10.3"
categories="default"
[[ "${1:-}" == "--dev" ]] && categories="default develop"

# The stamp is written last, so its presence means "set-up finished".
stamp="$venv/.synced"
want="$(sha256sum "$root/Pipfile.lock" | cut -d' ' -f1) $categories"
if [[ -f "$stamp" ]] && grep -qxF "$want" "$stamp"; then
  exit 0
fi
# A full set-up also satisfies a default-only request.
if [[ "$categories" == "default" && -f "$stamp" ]] \
    && grep -qxF "${want% default} default develop" "$stamp"; then
  exit 0
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11); found: $("$python" --version 2>&1 || echo none)" >&2
  exit 1
fi

echo "Setting up .venv/ from Pipfile.lock (first run only, about 2 minutes)..." >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pipenv==$pipenv_version"
dev_flag=()
[[ "$categories" == *develop* ]] && dev_flag=(--dev)
(cd "$root" && PIPENV_VENV_IN_PROJECT=1 PIPENV_VERBOSITY=-1 PIPENV_NOSPIN=1 \
   "$venv/bin/pipenv" sync "${dev_flag[@]}" >&2)
echo "$want" > "$stamp"
echo "Set-up done." >&2
