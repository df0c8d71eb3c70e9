#!/usr/bin/env bash
# The GPU path in one short run (issue 12), for a machine with an NVIDIA GPU, CuPy and PyTorch.
# Sections, in this order:
#   env        nvidia-smi, versions, `zgrad env`
#   ipc, zmq, nccl  processes sharing the GPU (benchmarks/gpu_multiproc.py): CUDA IPC through
#              the queue, 2 zmq ranks on CUDA tensors, nccl at world size 1. Seconds each, so
#              they come first: a slow section later cannot squeeze them out
#   bench      the timing table (benchmarks/bench_gpu.py): MLP, CNN, transformer training steps
#              in zgrad eager / fused / autocast / CUDA graph beside PyTorch on the same GPU, and
#              an elementwise op's bandwidth against a device-to-device copy
#   train_*    the digits MLP and the digits CNN trained on the GPU through the launcher
#   tests      the GPU test subset (pytest -m gpu: every test that carries requires_cupy) but
#              tests/shm and tests/runtime, on 4 workers; tests_mp: those two, in one process
#              (-v: a section stopped at its limit still names each test that finished). Last
#              of the GPU sections: kernel compiles on a fresh machine make them the slowest,
#              and the table and the trainings must not be squeezed out by them
#   cpu_smoke  a few CPU test files: CuPy being installed changes nothing for them
# Each section has a time limit and the run a deadline (DEADLINE_S, 480 s; about 5 minutes
# expected): a section that fails or times out is reported and the rest go on; exit status 1
# when any did. Everything lands in $OUT (7 files):
#   summary.json    every section's status and the numbers    gpu_check.log  all the output
#   pytest_gpu.log  pytest_cpu.log  bench.json  bench.log (tracebacks, loss traces)
#   multiproc.jsonl
# A rehearsal on a CPU machine first: `python3 -m pytest -q --fake-gpu -m gpu` runs the GPU
# tests on tests/fakecuda (a strict CPU stand-in for CuPy: plumbing, not numbers), and
# `GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh` this script's own plumbing.
# The device machine lacks pyzmq and omegaconf: carry .whl/ (the device tool's README; the
# wheels are in /work/main/.whl) and they are installed into /tmp/site first:
#     bash benchmarks/gpu_check.sh          (device tool: carry [".whl"], timeout_s 540)
set -u
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} \
        || echo "gpu_check: installing .whl/*.whl failed; going on without them"
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
OUT=${OUT:-/tmp/gpucheck_out}
WORK=/tmp/gpucheck
DEADLINE_S=${DEADLINE_S:-480}
# GPU_CHECK_DEVICE=cpu runs the plumbing on a machine without a GPU (the GPU tests skip, the
# bench runs --smoke): a check of this script, not of the GPU path
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BENCH_SMOKE=
[ "$DEVICE" = cpu ] && BENCH_SMOKE=--smoke
mkdir -p "$OUT" "$WORK"
rm -rf "$WORK"/* "$OUT"/multiproc.jsonl
LOG=$OUT/gpu_check.log
: >"$LOG"
: >"$WORK/sections.tsv"
T0=$(date +%s)

say() { echo "$*" | tee -a "$LOG"; }

# section NAME CAP_S COMMAND...: runs COMMAND under `timeout` (CAP_S, or what is left before the
# deadline), its output to the screen and the log; one line per section in sections.tsv
section() {
    local name=$1 cap=$2
    shift 2
    local left=$((DEADLINE_S - ($(date +%s) - T0)))
    if [ "$left" -lt 15 ]; then
        say "=== $name: skipped, ${left}s left before the ${DEADLINE_S}s deadline"
        printf '%s\tskipped\t0\n' "$name" >>"$WORK/sections.tsv"
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    say "=== $name (limit ${cap}s) $(date -u +%H:%M:%S)"
    local s0 rc
    s0=$(date +%s)
    timeout -k 10 "$cap" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local status=ok
    [ "$rc" = 0 ] || status="failed (exit $rc)"
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && status="timed out after ${cap}s"
    say "=== $name: $status in $(($(date +%s) - s0))s"
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - s0))" >>"$WORK/sections.tsv"
}

# pytest_part LOGFILE ARGS...: pytest with its full output in LOGFILE (written as it runs, so
# kept when the section times out); prints failures, skips (a GPU test that skips here did not
# run) and the summary line
pytest_part() {
    local log=$1 start
    shift
    touch "$log"
    start=$(($(wc -l <"$log") + 1))
    python3 -m pytest -v -rfEs -p no:cacheprovider --timeout 120 "$@" >>"$log" 2>&1
    local rc=$?
    tail -n +"$start" "$log" | grep -E "^(FAILED|ERROR)" | tail -30
    tail -n +"$start" "$log" | grep -E "^SKIPPED" | head -10
    tail -n 1 "$log"
    return $rc
}
export -f pytest_part

# the single-process GPU tests spread over 4 workers (compiling kernels dominates on a fresh
# machine); the multi-process ones (shm, runtime) in one process, since their /dev/shm leak
# checks would see the other workers' segments
XDIST=
python3 -c "import xdist" 2>/dev/null && XDIST="-n 4"

train() {
    python3 -m launcher run --nproc-per-node 1 --run-dir "$WORK/run_$1" configs/$1.yaml \
        train.device=$DEVICE logging.progress=false || return
    python3 - "$1" "$WORK/run_$1/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[2]))
print(f"{sys.argv[1]}: final test accuracy {s['final_test_accuracy']:.4f}, "
      f"{s['step']} steps, {s['train_time_s']:.1f} s of training")
PY
}
export -f train
export OUT WORK DEVICE BENCH_SMOKE XDIST
MPJSON="--json $OUT/multiproc.jsonl"

section env 40 bash -c 'rc=0; nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv || rc=1; python3 -c "import sys, numpy, torch, cupy; print(sys.version.split()[0],
    \"numpy\", numpy.__version__, \"torch\", torch.__version__, \"cupy\", cupy.__version__,
    \"gpus\", cupy.cuda.runtime.getDeviceCount())" || rc=1; python3 -m launcher env || rc=1
    exit $rc'
section ipc 30 python3 benchmarks/gpu_multiproc.py ipc --device "$DEVICE" $MPJSON
section zmq 45 python3 benchmarks/gpu_multiproc.py zmq --device "$DEVICE" $MPJSON
section nccl 30 python3 benchmarks/gpu_multiproc.py nccl --device "$DEVICE" $MPJSON
# its table is printed again at the end, so that the last lines of the output hold it
section bench 180 bash -c 'set -o pipefail; python3 benchmarks/bench_gpu.py --device "$DEVICE" \
    $BENCH_SMOKE --json "$OUT/bench.json" --log "$OUT/bench.log" | tee "$WORK/bench.txt"'
section train_mlp 60 bash -c 'train digits_mlp'
section train_cnn 60 bash -c 'train digits_cnn'
rm -f "$OUT/pytest_gpu.log"
section tests 120 bash -c 'pytest_part "$OUT/pytest_gpu.log" -m gpu $XDIST tests \
    --ignore=tests/shm --ignore=tests/runtime'
# about 20 tests that start processes (a few seconds each) and two short zgrad run trainings;
# 60 s per test, so that one hung test (a collective that never completes) leaves the rest
section tests_mp 120 bash -c 'pytest_part "$OUT/pytest_gpu.log" -m gpu --timeout 60 \
    tests/shm tests/runtime'
section cpu_smoke 45 bash -c 'rm -f "$OUT/pytest_cpu.log"; pytest_part "$OUT/pytest_cpu.log" \
    -m "not gpu" tests/tensor/test_fidelity.py tests/tensor/test_amp.py \
    tests/tensor/test_tensor.py tests/shm/test_storage.py'

# summary.json: every section's status, the accuracies, the multi-process results, the bench
python3 - "$WORK" "$OUT" <<'PY' 2>&1 | tee -a "$LOG"
import glob, json, os, re, sys
work, out = sys.argv[1:]
s = {"sections": {}, "train": {}, "multiproc": [], "bench": None}
for line in open(os.path.join(work, "sections.tsv")):
    name, status, secs = line.rstrip("\n").split("\t")
    s["sections"][name] = {"status": status, "seconds": int(secs)}
for p in sorted(glob.glob(os.path.join(work, "run_*", "summary.json"))):
    s["train"][os.path.basename(os.path.dirname(p))[4:]] = json.load(open(p))
mp = os.path.join(out, "multiproc.jsonl")
if os.path.exists(mp):
    s["multiproc"] = [json.loads(x) for x in open(mp) if x.strip()]
bj = os.path.join(out, "bench.json")
if os.path.exists(bj):
    b = json.load(open(bj))
    s["bench"] = {"goals": b.get("goals"), "meta": b.get("meta"),
                  "ratios": {m: v.get("ratios") for m, v in b.get("models", {}).items()}}
for name in ("gpu", "cpu"):
    p = os.path.join(out, f"pytest_{name}.log")
    if os.path.exists(p):
        lines = [x.strip(" =\n") for x in open(p)
                 if re.match(r"^=* ?\d+ (passed|failed|skipped|deselected|error).* in [\d.]+s", x)]
        s["sections"].setdefault("tests" if name == "gpu" else "cpu_smoke", {})["pytest"] = lines
json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=1)
if os.path.exists(os.path.join(work, "bench.txt")):
    print("\n=== the bench table again" + open(os.path.join(work, "bench.txt")).read())
print("\n=== summary")
for k, v in s["sections"].items():
    print(f"  {k:10s} {v.get('status', '-'):28s} {v.get('seconds', 0):4d}s  "
          f"{' | '.join(v.get('pytest', []))}")
for k, v in s["train"].items():
    print(f"  {k}: final test accuracy {v.get('final_test_accuracy', float('nan')):.4f}")
for r in s["multiproc"]:
    nums = ", ".join(f"{k} {v:.2f}" for k, v in r.items() if isinstance(v, float))
    print(f"  {r['check']}: {'ok' if r.get('ok') else 'FAILED'} ({nums})")
for k, v in ((s["bench"] or {}).get("goals") or {}).items():
    print(f"  goal {k}: {'-' if v is None else ('met' if v else 'NOT met')}")
PY
say "total $(($(date +%s) - T0))s"
# exit 1 when any section failed, timed out or was skipped
awk -F'\t' '$2 != "ok" {bad = 1} END {exit bad}' "$WORK/sections.tsv"
