#!/usr/bin/env bash
# The GPU path in one short run, for a machine with an NVIDIA GPU and CuPy:
#   1. every GPU test (they skip on machines without CuPy), 2. the MLP step on the GPU.
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
python3 -m pytest -q -rs -p no:cacheprovider --timeout 120 \
    tests/tensor/test_tensor.py tests/tensor/test_ops.py -k "gpu" 2>&1 | tee ${OUT:-/tmp}/gpu_tensor.log | tail -15
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
for f in tests/shm/test_cuda_ipc.py tests/runtime/test_dist_nccl.py tests/runtime/test_dist_gpu.py; do
    [ -f "$f" ] && { python3 -m pytest -q -rs -p no:cacheprovider --timeout 120 "$f" || rc=1; }
done
python3 benchmarks/bench_mlp_step.py --device cuda --repeats 5 --steps 20 || rc=1
exit $rc
