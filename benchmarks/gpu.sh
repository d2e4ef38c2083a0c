#!/usr/bin/env bash
# The GPU figures in one call: bash benchmarks/gpu.sh OUT [--smoke] [gpu.py options]
#
# Writes OUT/gpu.json, OUT/prepare.json, OUT/loader.json, OUT/gpu.log and OUT/nvidia-smi.txt (see
# benchmarks/gpu.py) in under 8 minutes (--budget, seconds, default 420). Installs nothing from the
# internet. --smoke runs every part at a tiny size on a CPU (tests/test_benchmarks.py does).
#
# Python: NIGHTACT_PYTHON if set, else the repo's .venv/bin/python when present, else python3. A
# GPU host without Keras or PyAV (the project's lent GPU machines have JAX with CUDA but no Keras,
# TensorFlow or PyAV) takes them as wheels from .whl/ in the repo, made beforehand on a machine
# with internet by
#     bash benchmarks/gpu.sh --fetch-wheels
# and carried along (an ignored folder). Backend: KERAS_BACKEND if set; else TensorFlow where it
# sees a GPU, else JAX.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1

if [ "${1:-}" = "--fetch-wheels" ]; then
  # Keras, the two of its needs that such a host lacks, and PyAV, for CPython 3.12 on x86-64.
  mkdir -p .whl
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "keras==3.15.1" "namex==0.1.0" "optree==0.20.0" "av==18.1.0"
fi
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bash benchmarks/gpu.sh OUT [--smoke] [gpu.py options] | --fetch-wheels" >&2
  exit 2
fi
out=$1
shift
mkdir -p "$out" || exit 1
log="$out/gpu.log"
say() { echo "gpu.sh: $*" | tee -a "$log" >&2; }

if [ -n "${NIGHTACT_PYTHON:-}" ]; then
  python=$NIGHTACT_PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import sys" 2>/dev/null; then
  python=.venv/bin/python
else
  python=python3
fi
say "python: $python ($($python --version 2>&1))"

# Found without importing them (importing Keras starts its backend: seconds).
if ! $python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('keras') and u.find_spec('av')))" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    site=$(mktemp -d /tmp/nightact-site-XXXX)
    if $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" .whl/*.whl >>"$log" 2>&1; then
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
      say "installed $(ls .whl | tr '\n' ' ')into $site"
    else
      say "MISSING: could not install the wheels in .whl/ (see $log)"
    fi
  else
    say "MISSING: keras or av is not importable and there is no .whl/ folder; on a machine with" \
      "internet run 'bash benchmarks/gpu.sh --fetch-wheels' and carry .whl"
  fi
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

if [ -z "${KERAS_BACKEND:-}" ]; then
  if timeout 60 $python -c "import tensorflow as tf, sys; sys.exit(not tf.config.list_physical_devices('GPU'))" \
      >/dev/null 2>&1; then
    export KERAS_BACKEND=tensorflow
  elif $python -c "import jax" 2>/dev/null; then
    export KERAS_BACKEND=jax
  else
    export KERAS_BACKEND=tensorflow
  fi
fi
say "KERAS_BACKEND=$KERAS_BACKEND"

if command -v nvidia-smi >/dev/null; then
  timeout 30 nvidia-smi >"$out/nvidia-smi.txt" 2>&1
  timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv >>"$out/nvidia-smi.txt" 2>&1
else
  say "no nvidia-smi on this machine"
fi

# A last guard around everything, in case a part's own limit fails to stop it (seconds).
timeout "${NIGHTACT_GPU_GUARD:-470}" $python benchmarks/gpu.py --out "$out" "$@"
status=$?
say "gpu.py ended with exit status $status"
exit $status
