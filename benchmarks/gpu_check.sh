#!/bin/bash
# One device call for the GLA Triton kernels: benchmark (ours / xla / jla in one JAX process, fla in a
# torch process), the report table, then the gpu-marked tests. Logs and results go to $OUT.
#   run from the repo root with .whl carried:  bash benchmarks/gpu_check.sh
# Budgets (seconds) and shape lists are environment variables so that one call can be re-aimed.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gla_out}
WORK=/tmp/glabench
mkdir -p "$OUT" "$WORK"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site
T0=$(date +%s)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import jax, jaxlib, torch, triton; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'torch', torch.__version__, 'triton', triton.__version__, jax.devices())"
  date -u
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "${BREAKDOWN:-s1}" != "none" ]; then
  timeout "${BREAKDOWN_BUDGET:-60}" python3 benchmarks/bench_gla.py breakdown --out "$WORK" \
    --shapes "${BREAKDOWN:-s1}" > "$OUT/bench_jax.log" 2>&1
fi
timeout "${JAX_BUDGET:-200}" python3 benchmarks/bench_gla.py jax --out "$WORK" \
  --shapes "${SHAPES:-s1,s2,s3,s4,s5}" --variants-for "${VARIANTS:-}" --impls "${IMPLS:-}" \
  --save-ref-for "${FLA_SHAPES-s1,s2,s3}" >> "$OUT/bench_jax.log" 2>&1
echo "jax bench rc=$? at $(( $(date +%s) - T0 ))s"
if [ -n "${FLA_SHAPES-s1,s2,s3}" ]; then
  timeout "${FLA_BUDGET:-130}" python3 benchmarks/bench_gla.py fla --out "$WORK" \
    --shapes "${FLA_SHAPES-s1,s2,s3}" > "$OUT/bench_fla.log" 2>&1
  echo "fla bench rc=$? at $(( $(date +%s) - T0 ))s"
fi
cp "$WORK"/*.jsonl "$OUT/" 2>/dev/null
python3 benchmarks/bench_gla.py report --out "$WORK" > "$OUT/report.md" 2>&1
if [ "${TESTS:-1}" = "1" ]; then
  timeout "${TEST_BUDGET:-90}" python3 -m pytest -v -p no:xdist -s -m gpu --durations=0 \
    ${TEST_K:+-k "$TEST_K"} tests/pallas_kernels/test_gla_triton.py > "$OUT/tests.log" 2>&1
  echo "tests rc=$? at $(( $(date +%s) - T0 ))s"
  grep -E "passed|failed|error|Error|ours .* fla" "$OUT/tests.log" | tail -15
fi
tail -5 "$OUT/bench_jax.log"
tail -3 "$OUT/bench_fla.log" 2>/dev/null
cat "$OUT/report.md"
