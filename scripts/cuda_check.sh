#!/usr/bin/env bash
# The CUDA checks, as one prepared script for a GPU machine; run from the repository root.
usage() {
    cat <<'EOF'
usage: scripts/cuda_check.sh [OPTIONS] tests
       scripts/cuda_check.sh [OPTIONS] model (FILE.gguf | --parts PART... --sha256 HEX) --text TEXT_FILE

  tests    pytest's CUDA params on the tiny fixtures, and scripts/cuda_check.py ops (per-op batch invariance)
  model    a real model: scripts/cuda_check.py model (fidelity, batch invariance, perplexity of TEXT_FILE against
           the CPU), `forwardpass bench` at batch 1, 16 and 64, and tests/test_engine_real.py's smollm2 CUDA tests
           (FILE must then be SmolLM2-135M-Instruct.Q4_1.gguf; --skip-pytest-real skips them)

options:
  --out DIR            where every log goes (default /tmp/cuda_check_out)
  --python PY          the interpreter (default python3)
  --wheels DIR         install the wheels in DIR (packages missing on the machine, e.g. gguf) into /tmp/site first
  --device DEV         model only: the device under test (default cuda; cpu dry-runs the steps on a tiny model)
  --parts PART...      model only: the model file as the concatenation of these parts (for machines that take
                       files of a limited size), checked against --sha256; written to .dev/home/models/
  --model-args ARGS    model only: extra arguments of scripts/cuda_check.py model (e.g. "--ctx 256")
  --bench-args ARGS    model only: extra arguments of forwardpass bench
  --skip-pytest-real   model only: skip tests/test_engine_real.py

Each step has its own time limit. Without a GPU the tests skip their CUDA params and the checks print a skip line,
so the script also dry-runs on a CPU-only machine.
EOF
}
set -u -o pipefail
export PYTHONUNBUFFERED=1

PY=python3 OUT=/tmp/cuda_check_out WHEELS="" DEVICE=cuda TEXT="" FILE="" SHA256="" MODEL_ARGS="" BENCH_ARGS=""
SKIP_PYTEST_REAL="" MODE="" PARTS=()
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    --out) OUT=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --text) TEXT=$2; shift 2 ;;
    --sha256) SHA256=$2; shift 2 ;;
    --model-args) MODEL_ARGS=$2; shift 2 ;;
    --bench-args) BENCH_ARGS=$2; shift 2 ;;
    --skip-pytest-real) SKIP_PYTEST_REAL=1; shift ;;
    --parts)
        shift
        while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do PARTS+=("$1"); shift; done
        ;;
    tests | model)
        [ -z "$MODE" ] || { usage >&2; exit 2; }
        MODE=$1; shift
        ;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
        [ "$MODE" = model ] && [ -z "$FILE" ] || { usage >&2; exit 2; }
        FILE=$1; shift
        ;;
    esac
done
[ -n "$MODE" ] || { usage >&2; exit 2; }
mkdir -p "$OUT"

if [ -n "$WHEELS" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
        || { echo "wheel install failed"; exit 2; }
    export PYTHONPATH=$PWD:/tmp/site
else
    export PYTHONPATH=$PWD
fi

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
    [ -n "$TEXT" ] || { echo "model needs --text TEXT_FILE" >&2; usage >&2; exit 2; }
    if [ ${#PARTS[@]} -gt 0 ]; then
        [ -z "$FILE" ] && [ -n "$SHA256" ] || { echo "--parts needs --sha256 and no FILE" >&2; exit 2; }
        mkdir -p .dev/home/models
        FILE=.dev/home/models/SmolLM2-135M-Instruct.Q4_1.gguf
        [ -f "$FILE" ] || cat "${PARTS[@]}" >"$FILE" || { echo "model parts missing"; ls -la "${PARTS[@]}"; exit 3; }
        echo "$SHA256  $FILE" | sha256sum -c - || { rm -f "$FILE"; exit 3; }
    fi
    [ -n "$FILE" ] && [ -f "$FILE" ] || { echo "no model file (FILE or --parts)" >&2; usage >&2; exit 2; }
    # shellcheck disable=SC2086
    run 150 model $PY scripts/cuda_check.py model "$FILE" --text "$TEXT" --device "$DEVICE" $MODEL_ARGS
    for b in 1 16 64; do
        # shellcheck disable=SC2086
        run 70 "bench_b$b" $PY -m forwardpass.cli bench "$FILE" --device "$DEVICE" --batch "$b" --json $BENCH_ARGS
    done
    if [ -z "$SKIP_PYTEST_REAL" ]; then
        mkdir -p .dev/home/models
        [ -f .dev/home/models/"$(basename "$FILE")" ] || cp "$FILE" .dev/home/models/ 2>/dev/null || true
        FORWARDPASS_HOME=$PWD/.dev/home run 90 pytest_real $PY -m pytest -q -p no:cacheprovider --tb=short -rfE \
            tests/test_engine_real.py -k "smollm2 and cuda"
    fi
    ;;
esac
cat "$OUT/summary.txt"
