#!/usr/bin/env bash
# Runs a grid sweep into a folder:  ./train.bash DIR [--field=value ...]
# Sets up .venv/ on first use.  Fields given are pinned (one value) or set
# their grid (a,b,c or all); see hparams.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: ./train.bash SWEEP_DIR [--field=value ...]   (fields: hparams.py)" >&2
  exit 2
fi
sweep_dir="$1"; shift
scripts/ensure_env.sh
exec .venv/bin/python tune.py --sweep_dir="$sweep_dir" "$@"
