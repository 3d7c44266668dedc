#!/usr/bin/env bash
# Runs a grid sweep into a folder:  ./train.bash DIR [--field=value ...]
#
# Sets up .venv/ on first use.  Fields given are pinned (one value) or set
# their grid (a,b,c or all); see hparams.py.  If the sweep crashes, it is
# started again (up to BPFREE_MAX_RESTARTS times, default 5) and continues
# where it stopped; the reason of each crash is printed.  A bad setting
# (exit 2), a failed write (exit 4: a full disk) or an interrupt (Ctrl-C,
# SIGTERM) is not retried (runtime/errors.py lists the exit statuses); after an
# interrupt the sweep's one line says where it stopped, and this script
# ends by the same signal (status 130 or 143), so that a loop around it
# stops too.  Relative paths (the folder, --data_dir) are relative to
# where it is called from.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"  # the repository
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: ./train.bash SWEEP_DIR [--field=value ...]   (fields: hparams.py)" >&2
  exit 2
fi
sweep_dir="$1"; shift
"$here/scripts/ensure_env.sh" || exit $?

max_restarts="${BPFREE_MAX_RESTARTS:-5}"
stderr_log="$(mktemp)"
trap 'rm -f "$stderr_log"' EXIT

crash_reason() {  # exit status -> words, with the last error line if any
  local status="$1" reason
  if (( status > 128 )); then
    reason="killed by signal $(kill -l $((status - 128)) 2>/dev/null || echo $((status - 128)))"
  else
    reason="exit status $status"
  fi
  local last
  last="$(grep -E '^[A-Za-z_.]+(Error|Exception|Exit)\b|^error:' "$stderr_log" | tail -n 1)"
  [[ -n "$last" ]] && reason="$reason: $last"
  echo "$reason"
}

stop_by() {  # ends this script by signal $1 (its exit trap still runs)
  trap - "$1"
  kill -s "$1" $$
  exit $((128 + $(kill -l "$1")))  # (if the signal is blocked)
}
# Ctrl-C reaches every process of the terminal's group: the sweep stops and
# says where; this script waits for that.  A SIGTERM sent to this script
# alone is passed on to the sweep.
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap ':' INT

for (( attempt = 0; ; attempt++ )); do
  # tee ignores Ctrl-C, so that the sweep's last line still gets through.
  "$here/.venv/bin/python" "$here/tune.py" --sweep_dir="$sweep_dir" "$@" \
    2> >(trap '' INT TERM; exec tee "$stderr_log" >&2) &
  child=$!
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"  # (returns early when a trap runs)
  done
  wait "$child"; status=$?  # (bash keeps the status of a child it reaped)
  wait  # let tee flush the log
  case "$status" in
    0) exit 0 ;;
    2|4) exit "$status" ;;  # bad input, disk full (or unwritable): not a
                            # crash, and retrying would not help
    130) stop_by INT ;;     # Ctrl-C
    143) stop_by TERM ;;    # SIGTERM
  esac
  echo "train.bash: the sweep crashed ($(crash_reason "$status"))" >&2
  if (( attempt >= max_restarts )); then
    echo "train.bash: giving up after $max_restarts restarts; rerun the same command to continue" >&2
    exit "$status"
  fi
  echo "train.bash: restarting it ($((attempt + 1))/$max_restarts); finished trials are kept" >&2
done
