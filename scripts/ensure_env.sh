#!/usr/bin/env bash
# Makes sure .venv/ holds exactly what Pipfile.lock pins (the packages and
# the test tools), building it when it is missing, half-built (an
# interrupted set-up) or older than the lock file.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
pipenv_version="2026.10.3"

# The stamp is written last, so its presence means "set-up finished".
stamp="$venv/.synced"
want="$(sha256sum "$root/Pipfile.lock" | cut -d' ' -f1)"
if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]]; then
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
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "pipenv==$pipenv_version"
(cd "$root" && PIPENV_VENV_IN_PROJECT=1 PIPENV_VERBOSITY=-1 PIPENV_NOSPIN=1 \
   "$venv/bin/pipenv" sync --dev >&2)
echo "$want" > "$stamp"
echo "Set-up done." >&2
