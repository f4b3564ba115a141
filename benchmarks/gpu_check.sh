#!/usr/bin/env bash
# The accelerator check as one command: the bench of the four study models at the
# CPU's batch (64), at a batch that fills a GPU (512) and at 512 in bfloat16, with the
# TFLOP/s and share of the chip's peak, JAX's device memory and, where TensorFlow is
# installed, the input pipeline's images/s against the steps' and what TensorFlow holds
# of the GPU (it must hold nothing). Results go to $OUT (or runs/accelerator_check).
#
# It runs from a checkout without an install (PYTHONPATH). A machine that has JAX but
# lacks some of fer_jax's pure-Python dependencies (e.g. ml-collections) and cannot
# reach a package index can take them as wheels in .whl/, e.g. downloaded elsewhere with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections==1.1.0
# Settings: MODELS, EXPERIMENTS (the time-to-accuracy recipes' networks, "fast_5min
# fast_15min"; found in the checkout without an install; empty: none), BATCHES ("64 512"; bfloat16 is
# timed at the last), ROUNDS (3), SECONDS_PER_MEASUREMENT (2).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/accelerator_check}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fer_jax_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/fer_jax_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
models=${MODELS:-simple_cnn_v1 deep_cnn_v1 cbam_cnn resnet18}
experiments=${EXPERIMENTS-fast_5min fast_15min}
batches=${BATCHES:-64 512}
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_MEASUREMENT:-2}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm --format=csv 2>/dev/null \
        || echo "nvidia-smi: not available"
    python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
} 2>&1 | tee "$out/machine.txt"

pipeline=0
if python3 -c "import tensorflow" 2>/dev/null; then pipeline=28709; fi
last=${batches##* }
status=0
for batch in $batches; do
    dtypes="float32"
    [ "$batch" = "$last" ] && dtypes="float32 bfloat16"
    for dtype in $dtypes; do
        echo "=== batch $batch, $dtype ($(date -u +%H:%M:%S))" | tee -a "$out/bench.txt"
        python3 -m fer_jax.bench --models $models ${experiments:+--experiments $experiments} \
            --batch-size "$batch" --compute-dtype "$dtype" \
            --rounds "$rounds" --seconds "$seconds" --no-torch --pipeline-images "$pipeline" \
            2>&1 | tee -a "$out/bench.txt" || status=1
    done
done
nvidia-smi --query-gpu=memory.used --format=csv 2>/dev/null | tee -a "$out/machine.txt"
exit $status
