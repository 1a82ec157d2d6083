#!/usr/bin/env bash
# One bounded run on a GPU or TPU machine: the test suite, then the accelerator benchmarks.
#
#     bash benchmarks/device_check.sh [OUT_DIR]      # about 15 minutes at most
#
# The first step alone, benchmarks/accelerators.py, takes under 5 minutes: with little device
# time, run just `python benchmarks/accelerators.py --reps 5`.
#
# Needs a Python whose jax sees the accelerator, with optax, chex, pytest, pytest-xdist,
# hypothesis and scipy installed; the package is used from this checkout (PYTHONPATH), so the
# machine needs no network. Every step has its own time limit and writes its own log to OUT_DIR
# (default: $OUT if set, else ./device_check), so a slow step cannot take the others with it.
# The memory part is compile-only; the speed parts are medians after warm-up.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-device_check}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Eight test workers share one GPU: allocate on demand instead of 75% each.
export XLA_PYTHON_CLIENT_PREALLOCATE=false HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-dev}"
python=${PYTHON:-python}

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    echo "$name: rc=$rc in $((SECONDS - start)) s (limit $limit s)" | tee -a "$out/summary.txt"
    tail -n 3 "$out/$name.txt"
}

"$python" -c "import jax; print(jax.__version__, jax.devices())" | tee "$out/summary.txt"
# The fused head's plans against naive and the 3-GEMM floor: time, memory, errors (issue 18).
step accelerators 290 "$python" benchmarks/accelerators.py --reps 5
step tests 290 "$python" -m pytest -q -n 8 -m "not slow" -p no:cacheprovider -p no:benchmark tests
step memory 130 "$python" benchmarks/linear_cross_entropy.py --no-speed \
    --heads llama3-8b gemma2-2b
step speed 75 "$python" benchmarks/linear_cross_entropy.py --no-memory --reps 5 \
    --shape 8192 4096 128256 --dtype bfloat16
step distillation 60 "$python" benchmarks/distillation.py --no-speed
step log_probs 90 "$python" benchmarks/log_probs.py --reps 5 --heads llama3-8b gemma2-2b
step core 80 "$python" benchmarks/core_losses.py --reps 5
