#!/bin/bash
# The op family's GPU check (issue 10) in one device call, from the repo root:
#
#   run(command="bash benchmarks/gpu_check_family.sh", carry=[".whl", ".fla_autotune.tgz"], timeout_s=600)
#
# 1. tests: `pytest -m gpu` on the simple_gla / linear_attn test files (test_simple_gla_fla.py: ours
#    impl="triton" vs fla's chunk_simple_gla, chunk_retention, chunk_linear_attn, cu_seqlens).
# 2. jax: benchmarks/bench_simple_gla.py jax (ours, xla, our GLA, jla; saves the float32 reference).
# 3. fla: benchmarks/bench_simple_gla.py fla (a torch process after the JAX one; autotune narrowed to
#    FLA_CONFIGS configs per kernel, 4-warp ones first: nothing of simple_gla is in the carried cache).
# 4. report.md: the markdown table for benchmarks/RESULTS.md (also printed at the end).
# Budgets (seconds, environment): TEST_BUDGET=150 (a hard timeout), JAX_BUDGET=210 and FLA_BUDGET=140
# (the benchmark starts no (mode, shape) unit that would end past it; hard timeout = budget + 15 s).
# With ~25 s of setup the call takes ~8.5 min, at most 9.4. Units cut by a budget show as
# "skipped (budget)" in the report; a second call covers them, e.g.
#   MODES=gamma,la_norm PHASES="jax fla" bash benchmarks/gpu_check_family.sh
# and the jsonl files of both calls concatenated into one folder make one table
# (python benchmarks/bench_simple_gla.py report --out DIR). Other knobs: PHASES ("tests jax fla"),
# SHAPES, MODES (unit order: mode-major), IMPLS, FLA_CONFIGS (3; 0 = full autotune), TEST_K, TESTS_PATHS.
# Outputs in $OUT: env.txt, tests.log, bench_jax.log, bench_fla.log, jax.jsonl, fla.jsonl, report.md and
# fla_autotune_family.tgz (every Triton autotune result, the carried GLA ones included: carry it as
# .fla_autotune.tgz next time to skip fla's tuning at the same narrowing).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gla_family_out}
WORK=/tmp/glafamily
PHASES=" ${PHASES:-tests jax fla} "
SHAPES=${SHAPES:-s1,s2,s3,s4,s5,t16k}
MODES=${MODES:-g,la,gamma,la_norm}
JAX_BUDGET=${JAX_BUDGET:-210}
FLA_BUDGET=${FLA_BUDGET:-140}
SITE=${SITE:-/tmp/site}
if [[ $PHASES == *" jax "* ]]; then rm -rf "$WORK"; fi  # a fresh run; fla alone reuses the saved reference
mkdir -p "$OUT" "$WORK"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:$SITE
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
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

if [[ $PHASES == *" tests "* ]]; then
  timeout "${TEST_BUDGET:-150}" python3 -m pytest -v -p no:xdist -s -m gpu --durations=0 \
    ${TEST_K:+-k "$TEST_K"} \
    ${TESTS_PATHS:-tests/pallas_kernels/test_simple_gla*.py tests/pallas_kernels/test_linear_attn*.py} \
    > "$OUT/tests.log" 2>&1
  since "tests rc=$?"
  grep -E "PASSED|FAILED|ERROR|passed|failed|skipped| ours .* fla " "$OUT/tests.log" | tail -60 | cut -c1-200
fi
if [[ $PHASES == *" jax "* ]]; then
  timeout $(( JAX_BUDGET + 15 )) python3 benchmarks/bench_simple_gla.py jax --out "$WORK" \
    --shapes "$SHAPES" --modes "$MODES" --impls "${IMPLS:-}" --budget "$JAX_BUDGET" \
    > "$OUT/bench_jax.log" 2>&1
  since "jax bench rc=$?"
fi
if [[ $PHASES == *" fla "* ]]; then
  timeout $(( FLA_BUDGET + 15 )) python3 benchmarks/bench_simple_gla.py fla --out "$WORK" \
    --shapes "$SHAPES" --modes "$MODES" --budget "$FLA_BUDGET" --fla-configs "${FLA_CONFIGS:-3}" \
    --delete-ref > "$OUT/bench_fla.log" 2>&1
  since "fla bench rc=$?"
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$OUT/fla_autotune_family.tgz" -T -)
  echo "autotune results kept: $(tar tzf "$OUT/fla_autotune_family.tgz" | wc -l)"
fi
cp "$WORK"/*.jsonl "$OUT/" 2>/dev/null
python3 benchmarks/bench_simple_gla.py report --out "$WORK" > "$OUT/report.md" 2>&1
for f in bench_jax bench_fla; do
  grep -E "Error|Traceback" "$OUT/$f.log" 2>/dev/null | head -5 | cut -c1-300
done
cat "$OUT/report.md"
since "done"
