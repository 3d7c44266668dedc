#!/usr/bin/env bash
# The GPU path, checked in one command (under 8 minutes on a GPU machine):
#
#   benchmarks/gpu_check.sh [--data_dir=DIR] [--out=DIR]
#
# prints
#   1. the devices TensorFlow sees;
#   2. benchmarks/speed.py on the wide MLP and on a CNN (resnet20; the smoke
#      version: 16C5-P2-64), every rule, in
#      float32 and in mixed precision (mixed_float16 on a GPU,
#      mixed_bfloat16 on a CPU), as ratios to BP with samples/s (mixed
#      precision once hparams.py has a `precision` field; before, a line
#      says it is not available);
#   3. one epoch of every rule on MNIST through train.py (test accuracy,
#      seconds);
#   4. a 4-trial sweep through train.bash with --workers = the number of
#      GPUs (each worker on its own GPU).
#
# Without a GPU it runs a short smoke version of the same steps (two rules,
# fewer timing rounds, a fraction of MNIST, a digits sweep on 2 workers)
# and says so: it checks the machinery, not the speed.  MNIST is read from
# --data_dir, else $BPFREE_DATA_DIR, else ../shared/data next to the
# repository.  Everything is written under --out (default: a temporary
# folder, removed at the end).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data_dir="${BPFREE_DATA_DIR:-$root/../shared/data}"
out=""
for arg in "$@"; do
  case "$arg" in
    --data_dir=*) data_dir="${arg#*=}" ;;
    --out=*) out="${arg#*=}" ;;
    *) echo "usage: benchmarks/gpu_check.sh [--data_dir=DIR] [--out=DIR]" >&2
       exit 2 ;;
  esac
done
"$root/scripts/ensure_env.sh" || exit $?
py="$root/.venv/bin/python"
if [[ -z "$out" ]]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
began=$SECONDS
failed=0
# TensorFlow's start-up notices (quiet.py hides them from the entry points)
noise='^(WARNING: All log messages before absl|[IW][0-9]{4} |E[0-9]{4} .*(cuInit|cuda_platform))'

section() { echo; echo "== $* ($((SECONDS - began)) s)"; }
check() {  # runs a step; a failure is reported and counted, not fatal
  "$@" 2>&1 | grep -v -E "$noise"
  local status=${PIPESTATUS[0]}
  if (( status )); then
    echo "FAILED (exit status $status): $*"
    failed=$((failed + 1))
  fi
}

section "devices"
devices="$("$py" - 2>&1 <<'EOF'
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf
print("  TensorFlow", tf.__version__, "built with CUDA"
      if tf.test.is_built_with_cuda() else "without CUDA")
devices = tf.config.list_physical_devices()
for device in devices:
    details = (tf.config.experimental.get_device_details(device)
               if device.device_type == "GPU" else "")
    print(f"  {device.name} {details}")
print(f"gpus={sum(d.device_type == 'GPU' for d in devices)}")
EOF
)"
grep -v -E "^gpus=|$noise" <<<"$devices"
gpus="$(grep '^gpus=' <<<"$devices" | cut -d= -f2)"
if [[ "$gpus" =~ ^[0-9]+$ ]] && (( gpus > 0 )); then
  echo "  $gpus GPU(s): the full check"
  smoke=0
  rules="all"; speed_args=(--archs=1000-1000-1000,resnet20 --repeats=5)
  precisions=(float32 mixed_float16)
  epoch_args=(); workers="$gpus"
  sweep_args=(--dataset=mnist "--data_dir=$data_dir" --arch=256-256)
else
  gpus=0
  echo "  no GPU: running the SMOKE version (the machinery, not the speed)"
  smoke=1
  rules="bp,dfa"; speed_args=(--archs=1000-1000-1000,16C5-P2-64 --steps=8
    --repeats=2)
  precisions=(float32 mixed_bfloat16); epoch_args=(--examples_frac=0.05)
  workers=2
  sweep_args=(--dataset=digits --arch=16 --use_xla=false)
fi

has_precision="$("$py" -c "import sys; sys.path.insert(0, '$root'); \
import hparams; print(int('precision' in hparams.FIELDS_BY_NAME))")"

section "speed: benchmarks/speed.py, rules $rules"
for precision in "${precisions[@]}"; do
  if [[ "$precision" == float32 ]]; then
    extra=()
  elif [[ "$has_precision" == 1 ]]; then
    extra=(--hparam "precision=$precision")
  else
    echo "-- precision $precision: not available (no --precision in hparams.py)"
    continue
  fi
  echo "-- precision $precision"
  check "$py" "$root/benchmarks/speed.py" --rules="$rules" --skip_memory \
    "${speed_args[@]}" "${extra[@]}"
done

section "one epoch of every rule on MNIST (train.py)"
[[ "$smoke" == 1 ]] && rules_epoch=(bp dfa) || rules_epoch=(
  bp fa kp dfa dkp fdfa drtp cce mse)
for rule in "${rules_epoch[@]}"; do
  start=$SECONDS
  line="$("$py" "$root/train.py" --dataset=mnist "--data_dir=$data_dir" \
    --algorithm="$rule" --epochs=1 "${epoch_args[@]}" \
    --workdir="$out/epoch/$rule" 2>&1 | tail -n 1)"
  echo "  $rule ($((SECONDS - start)) s, the process's start-up included): ${line#*: }"
  [[ "$line" == *test_accuracy* ]] || { echo "FAILED: $rule"; failed=$((failed + 1)); }
done

section "a 4-trial sweep, --workers=$workers (train.bash)"
check "$root/train.bash" "$out/sweep" "${sweep_args[@]}" \
  --algorithm=bp,dfa --batch_norm=false,true --lr=1e-3 --epochs=1 \
  --objective=loss "--workers=$workers"

section "done"
if (( failed )); then
  echo "gpu_check: $failed step(s) FAILED"
  exit 1
fi
echo "gpu_check: every step ran$([[ "$smoke" == 1 ]] && echo ' (smoke version: no GPU)')"
