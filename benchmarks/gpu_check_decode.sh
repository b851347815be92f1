#!/bin/bash
# The decode kernels' GPU check in one device call (≤ 6 min), from the repo root:
#
#   run(command="bash benchmarks/gpu_check_decode.sh", carry=[".whl", ".fla_autotune.tgz"], timeout_s=600)
#
# 1. tests: the gpu-marked tests of tests/pallas_kernels/test_decode.py (the compiled Pallas decode kernels
#    and the jax-triton one vs the XLA step: values, grads, bf16, a 64-step loop; DECODE_GPU lines).
# 2. micro: one decode step of fused_recurrent_gla per impl (xla, triton, jax_triton, copy baseline) at
#    the 340M and 1.3B layer shapes, B = 64 and 1, and the V-tile × warps sweep → $OUT/micro.{json,md}.
# 3. generate: GLA-340M generate() (prompt 2048, 256 new, greedy) at B = 64 and 1 per decode impl, then
#    fla's GLAForCausalLM.generate in a torch child → $OUT/generate.{json,md} (+ generate.jax.json and
#    generate.fla.json, each child's own, kept if the stage times out).
# Every stage has its own budget (seconds; environment overrides) and the benchmark writes its JSON after
# every measurement, so a stage that fails or times out leaves what it finished and the next one runs.
# Budgets: TESTS_BUDGET=60 MICRO_BUDGET=80 GEN_JAX_BUDGET=125 FLA_BUDGET=200 (+ ~15 s slack and install): ≤ 8 min.
# fla's first generate compiles and autotunes its Triton kernels: 70 s was not enough on a cold cache
# (2026-12-02); the stage tars TRITON_CACHE_DIR to $OUT/fla_triton_cache.tgz so a later call can carry it.
# Everything the stages print goes to $OUT/run.log (7 files in $OUT in all).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gla_decode_out}
SITE=${SITE:-/tmp/site}
LOGS=/tmp/decode_logs
mkdir -p "$OUT" "$LOGS"
LOG="$OUT/run.log"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:$SITE
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
mkdir -p "$TRITON_CACHE_DIR"
if [ -f .fla_autotune.tgz ]; then tar xzf .fla_autotune.tgz -C "$TRITON_CACHE_DIR"; fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  python3 -c "import jax_triton; print('jax_triton', jax_triton.__version__)"
  python3 -c "from pallas_kernels.gla.jax_triton import decode as d; print('jax_triton decode impl:', d.IMPORT_ERROR or 'available')"
  python3 -c "from pallas_kernels.gla.ops import FUSED_RECURRENT_GLA as op; print('fused_recurrent_gla impls', op.available_impls(), 'auto order', op.auto_order)"
  date -u
} > "$LOG" 2>&1
cat "$LOG"
T0=$(date +%s)
since() { echo "== $1 at $(( $(date +%s) - T0 ))s" | tee -a "$LOG"; }
keep() { echo "---- $1" >> "$LOG"; cat "$LOGS/$1" >> "$LOG"; }

since tests
timeout "${TESTS_BUDGET:-60}" python3 -m pytest -v -p no:xdist -p no:cacheprovider -s -m gpu --durations=5 \
  tests/pallas_kernels/test_decode.py > "$LOGS/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$LOG"; keep tests.log
grep -E "DECODE_GPU|PASSED|FAILED|ERROR|Error|passed|failed" "$LOGS/tests.log" | tail -40

since micro
timeout "${MICRO_BUDGET:-80}" python3 benchmarks/bench_generate.py --no-generate --sweep --reps 3 --micro-steps 100 \
  --out "$OUT/micro.json" > "$LOGS/micro.log" 2>&1
echo "micro rc=$?" | tee -a "$LOG"; keep micro.log
if [ -f "$OUT/micro.md" ]; then cat "$OUT/micro.md"; else grep -E '^\{|Error' "$LOGS/micro.log" | tail -30; fi

since generate
JB=${GEN_JAX_BUDGET:-125}; FB=${FLA_BUDGET:-200}
timeout $(( JB + FB + 15 )) python3 benchmarks/bench_generate.py --no-micro --reps 2 --compare-fla \
  --jax-timeout "$JB" --fla-timeout "$FB" --out "$OUT/generate.json" > "$LOGS/generate.log" 2>&1
echo "generate rc=$?" | tee -a "$LOG"; keep generate.log
if [ -f "$OUT/generate.md" ]; then cat "$OUT/generate.md"; else grep -E '^\{|Error|error' "$LOGS/generate.log" | tail -30; fi
since done
tar czf "$OUT/fla_triton_cache.tgz" -C "$TRITON_CACHE_DIR" . 2>/dev/null || true
