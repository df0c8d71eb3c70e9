#!/usr/bin/env bash
# The GPU path in one short run, for a machine with an NVIDIA GPU and CuPy:
#   1. the test suite, GPU tests included (they skip without CuPy), 2. the MLP step on the GPU.
# On the workplace's device machine pyzmq is missing: carry it as a wheel in .whl/
# (see the device tool's README) and this script installs it into /tmp/site first.
set -u
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
python3 - <<'PY'
import cupy, numpy
print("cupy", cupy.__version__, "numpy", numpy.__version__, "gpus", cupy.cuda.runtime.getDeviceCount())
PY
rc=0
# the whole suite: the GPU tests run (they skip elsewhere), and the CPU tests show that having
# CuPy installed changes nothing for them
python3 -m pytest -q -rfEs -p no:cacheprovider --timeout 120 tests 2>&1 \
    | tee ${OUT:-/tmp}/gpu_tests.log | grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" | tail -40
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
python3 benchmarks/bench_mlp_step.py --device cuda --repeats 5 --steps 20 || rc=1
# the trainer on the GPU through the launcher: the digits MLP and CNN, one worker each
# (needs omegaconf, PyYAML, tqdm, pyzmq, msgpack, safetensors there: carry them as wheels)
export PYTHONPATH=$PWD:${PYTHONPATH:-}
for cfg in digits_mlp digits_cnn; do
    python3 -m launcher run configs/$cfg.yaml --nproc-per-node 1 train.device=cuda \
        --run-dir ${OUT:-/tmp}/gpu_$cfg || rc=1
done
exit $rc
