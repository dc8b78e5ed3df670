#!/usr/bin/env bash
# The CUDA checks, as one prepared script for a GPU machine; run from the repository root.
#
#   scripts/cuda_check.sh tests          # CUDA params of the test suite on the tiny fixtures + per-op invariance
#   scripts/cuda_check.sh model [FILE]   # the real SmolLM2: fidelity, batch invariance, perplexity, bench b1/16/64
#
# Python packages missing there (gguf) come as wheels in .whl/ (installed into /tmp/site). `model` takes the
# model file as FILE, or assembles it from two parts under 64 MiB, build/p0 and dist/p1 (checked against
# MODEL_SHA256), carried in two calls back to back (carry ["build", ".whl"], then ["dist"]): folders that
# .gitignore ignores stay on a warm machine between calls, those only .git/info/exclude ignores did not. Every log
# goes to $OUT (default /tmp/cuda_check_out). Each command has its own time limit. Without a GPU the tests skip
# their CUDA params and the checks print a skip line, so the script also dry-runs on a CPU-only machine.
set -u -o pipefail
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/cuda_check_out}
mkdir -p "$OUT"
MODE=${1:-tests}
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # SmolLM2-135M-Instruct.Q4_1.gguf
TEXT=dist/GPL-3
[ -f "$TEXT" ] || TEXT=/usr/share/common-licenses/GPL-3

if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 2; }
fi
export PYTHONPATH=$PWD:/tmp/site

run() {  # run LIMIT_S NAME CMD...: one step, its output into $OUT/NAME.log and on stdout
    local limit=$1 name=$2
    shift 2
    echo "=== $name: $* (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: rc=$rc in $((SECONDS - t0))s"
    echo "$name rc=$rc $((SECONDS - t0))s" >>"$OUT/summary.txt"
}

case "$MODE" in
tests)
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
        $PY -c "import torch, gguf, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
        grep -m1 'model name' /proc/cpuinfo; nproc; command -v cc gcc || echo "no C compiler"
    } 2>&1 | tee "$OUT/env.log"
    run 90 ops $PY scripts/cuda_check.py ops
    run 330 pytest $PY -m pytest -q -p no:cacheprovider -o faulthandler_timeout=120 --tb=short -rfE -k cuda \
        tests/test_dequant.py tests/test_kernels.py tests/test_sampling.py tests/test_models.py \
        tests/test_generate.py tests/test_engine.py
    ;;
model)
    FILE=${2:-}
    if [ -z "$FILE" ]; then
        mkdir -p .dev/home/models
        FILE=.dev/home/models/SmolLM2-135M-Instruct.Q4_1.gguf
        [ -f "$FILE" ] || cat build/p0 dist/p1 >"$FILE" || { echo "model parts missing"; ls -la build dist; exit 3; }
        echo "$MODEL_SHA256  $FILE" | sha256sum -c - || { rm -f "$FILE"; ls -la build dist; exit 3; }
    fi
    DEVICE=${DEVICE:-cuda}  # DEVICE=cpu MODEL_ARGS="--ctx 256 ..." dry-run the steps on a tiny model here
    # shellcheck disable=SC2086
    run 150 model $PY scripts/cuda_check.py model "$FILE" --text "$TEXT" --device "$DEVICE" ${MODEL_ARGS:-}
    for b in 1 16 64; do
        run 70 "bench_b$b" $PY -m forwardpass.cli bench "$FILE" --device "$DEVICE" --batch "$b" --json ${BENCH_ARGS:-}
    done
    [ -n "${SKIP_PYTEST_REAL:-}" ] || FORWARDPASS_HOME=$PWD/.dev/home run 90 pytest_real $PY -m pytest -q -p no:cacheprovider --tb=short -rfE \
        tests/test_engine_real.py -k "smollm2 and cuda"
    ;;
*)
    echo "usage: $0 tests | model [FILE]"
    exit 2
    ;;
esac
cat "$OUT/summary.txt"
