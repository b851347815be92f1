#!/bin/bash
# One device call for the GLA kernels: per-kernel breakdown, the benchmark (ours / xla / jla in one JAX
# process, then fla in a torch process, fully autotuned), the report table, and the gpu-marked tests.
#   run from the repo root with .whl (and, if present, .fla_autotune.tgz) carried:  bash benchmarks/gpu_check.sh
# PHASES picks what runs (default: breakdown jax fla tests); budgets (seconds) and shape lists are
# environment variables so that one call can be re-aimed. Logs and results go to $OUT.
#
# fla autotunes every Triton kernel on its first call per key (minutes). With TRITON_CACHE_DIR set, Triton
# stores the winning configs (`*.autotune.json`); they are packed into $OUT/fla_autotune.tgz, and a later
# call that carries that file as .fla_autotune.tgz skips the autotuning (fla's first-call number is then compile only).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gla_out}
WORK=/tmp/glabench
PHASES=" ${PHASES:-breakdown jax fla tests} "
mkdir -p "$OUT" "$WORK"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site
export TRITON_CACHE_DIR=/tmp/triton_cache
mkdir -p "$TRITON_CACHE_DIR"
if [ -f .fla_autotune.tgz ]; then tar xzf .fla_autotune.tgz -C "$TRITON_CACHE_DIR"; fi
T0=$(date +%s)
since() { echo "$1 at $(( $(date +%s) - T0 ))s"; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import jax, jaxlib, torch, triton; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'torch', torch.__version__, 'triton', triton.__version__, jax.devices())"
  date -u
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [[ $PHASES == *" breakdown "* ]]; then
  timeout "${BREAKDOWN_BUDGET:-90}" python3 benchmarks/bench_gla.py breakdown --out "$WORK" \
    --shapes "${BREAKDOWN:-s1,s2}" > "$OUT/bench_breakdown.log" 2>&1
  since "breakdown rc=$?"
fi
if [[ $PHASES == *" jax "* ]]; then
  timeout "${JAX_BUDGET:-240}" python3 benchmarks/bench_gla.py jax --out "$WORK" \
    --shapes "${SHAPES:-s1,s2,s3,s4,s5,t4k,t16k,t32k}" --variants-for "${VARIANTS-s1,s2,t16k}" \
    --impls "${IMPLS:-}" --save-ref-for "${FLA_SHAPES-s1,s2,s3,t4k,t16k,t32k,s5,s4}" \
    > "$OUT/bench_jax.log" 2>&1
  since "jax bench rc=$?"
fi
if [[ $PHASES == *" fla "* ]]; then
  timeout "${FLA_BUDGET:-250}" python3 benchmarks/bench_gla.py fla --out "$WORK" \
    --shapes "${FLA_SHAPES-s1,s2,s3,t4k,t16k,t32k,s5,s4}" > "$OUT/bench_fla.log" 2>&1
  since "fla bench rc=$?"
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$OUT/fla_autotune.tgz" -T -)
  echo "fla autotune results kept: $(tar tzf "$OUT/fla_autotune.tgz" | wc -l)"
fi
cp "$WORK"/*.jsonl "$OUT/" 2>/dev/null
python3 benchmarks/bench_gla.py report --out "$WORK" > "$OUT/report.md" 2>&1
if [[ $PHASES == *" tests "* ]]; then
  timeout "${TEST_BUDGET:-150}" python3 -m pytest -v -p no:xdist -s -m gpu --durations=0 \
    ${TEST_K:+-k "$TEST_K"} ${TESTS_PATHS:-tests/pallas_kernels} > "$OUT/tests.log" 2>&1
  since "tests rc=$?"
  grep -E "passed|failed|error|Error|ours .* fla|PARITY" "$OUT/tests.log" | tail -30
fi
tail -3 "$OUT/bench_breakdown.log" 2>/dev/null | cut -c1-1500
tail -3 "$OUT/bench_jax.log" 2>/dev/null | cut -c1-300
tail -3 "$OUT/bench_fla.log" 2>/dev/null | cut -c1-300
cat "$OUT/report.md"
