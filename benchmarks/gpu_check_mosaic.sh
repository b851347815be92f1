#!/bin/bash
# The Mosaic GPU kernels and the scanned 340M step in two device calls, from the repo root:
#
#   run(command='STAGES=tests bash benchmarks/gpu_check_mosaic.sh', timeout_s=600)
#   run(command='STAGES="bench train" bash benchmarks/gpu_check_mosaic.sh', timeout_s=600)
#
# 1. tests: the gpu-marked tests of the Mosaic kernels (simple GLA forward + backward, GLA forward) on the
#    compiled kernels vs "xla" → $OUT/tests.log.
# 2. bench: benchmarks/bench_mosaic.py --bwd (forward and fwd+bwd ms per impl, errors vs xla) for
#    chunk_simple_gla (g, then g_gamma) and chunk_gla (g) at the five bench shapes → $OUT/mosaic.jsonl,
#    and benchmarks/mosaic_table.py's table + MEASURED_FASTER entries → $OUT/mosaic_table.md.
# 3. train: benchmarks/bench_train.py on the scanned GLA-340M preset (remat dots_and_op_out, the preset's)
#    and the same with dots_saveable, batch 16 × 2048 → $OUT/train.json.
# Budgets (seconds; environment overrides): TESTS_BUDGET=300 BENCH_BUDGET=180 (per op) TRAIN_BUDGET=220.
# On the H200 (2026-12-02) 7 of the 17 gpu tests ran in 120 s, so all need an estimated ~5 min (each gradient case compiles the xla
# reference and four kernel passes), and one op's bench ~40 s per shape (the first backward calls compile for
# 4-20 s each), so a ≤ 10 min call holds "tests" or "bench", not both: STAGES="tests", then STAGES="bench train".
# 4. onetest: pytest -x -rA of TEST_IDS (node ids) → $OUT/onetest.log. 5. profile: benchmarks/profile_train.py on
#    the 340M step, batch 16 × 2048 → $OUT/profile.{json,md}. 6. passes: benchmarks/bench_gla_mosaic_passes.py
#    (each chunk_gla Mosaic pass alone, PASS_SHAPES) → $OUT/passes.jsonl. 7. ptxas: the registers / spills of
#    each Mosaic kernel (MOSAIC_GPU_DUMP_PTXAS=1) → $OUT/ptxas.log. None is in the default STAGES.
# IMPLS / BENCH_SHAPES narrow the bench (bench_mosaic.py --impls / --shapes); TABLE_IMPL=mosaic_gpu_fwd makes the
# table's ratios and MEASURED_FASTER entries those of the pair (mosaic_table.py --impl). STAGES="tests bench train" (default) picks stages; OPS="simple_gla:g simple_gla:gamma gla:g" (default) the bench's op:gate pairs. Everything printed goes to $OUT/run.log.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gla_mosaic_out}
mkdir -p "$OUT"
LOG="$OUT/run.log"
export PYTHONPATH=$PWD
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
  cat COMMIT 2>/dev/null || git log --oneline -1
  date -u
} > "$LOG" 2>&1
cat "$LOG"
T0=$(date +%s)
for stage in ${STAGES:-tests bench train}; do
  echo "== $stage at $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
  case $stage in
    tests)
      timeout "${TESTS_BUDGET:-300}" python3 -m pytest -p no:xdist -q -m gpu -rA \
        tests/pallas_kernels/test_simple_gla_mosaic.py tests/pallas_kernels/test_gla_mosaic.py \
        > "$OUT/tests.log" 2>&1
      echo "tests rc=$?" | tee -a "$LOG"; grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/tests.log" | tail -40 | tee -a "$LOG" ;;
    onetest)  # TEST_IDS="file::test[id] ..." with the full failure output
      timeout "${ONETEST_BUDGET:-120}" python3 -m pytest -p no:xdist -q -m gpu -rA -x ${TEST_IDS:?} \
        > "$OUT/onetest.log" 2>&1
      echo "onetest rc=$?" | tee -a "$LOG"; grep -E "^E |Error|PASSED|FAILED|passed|failed" "$OUT/onetest.log" | tail -40 | tee -a "$LOG" ;;
    passes)  # each Mosaic pass of chunk_gla alone (benchmarks/bench_gla_mosaic_passes.py)
      timeout "${PASSES_BUDGET:-150}" python3 benchmarks/bench_gla_mosaic_passes.py --shapes "${PASS_SHAPES:-s1,s4}" \
        --out "$OUT/passes.jsonl" 2>&1 | grep -v -i warn | tee -a "$LOG" | tail -30 ;;
    ptxas)  # ptxas's resource report (registers, spills, stack) of every Mosaic kernel the passes bench and
      # the simple-GLA bench at PTXAS_SHAPES compile → $OUT/ptxas.log (summary lines in run.log)
      for cmd in "benchmarks/bench_gla_mosaic_passes.py --shapes ${PTXAS_SHAPES:-s1}" \
                 "benchmarks/bench_mosaic.py --op simple_gla --gate g --bwd --impls mosaic_gpu --shapes ${PTXAS_SHAPES:-s1}"; do
        MOSAIC_GPU_DUMP_PTXAS=1 timeout "${PTXAS_BUDGET:-150}" python3 $cmd >> "$OUT/ptxas.log" 2>&1
      done
      grep -i -E "entry function|registers|spill|stack frame|\"ms\"" "$OUT/ptxas.log" | cut -c1-200 | tee -a "$LOG" | tail -60 ;;
    profile)  # where the scanned 340M step's time goes (benchmarks/profile_train.py)
      timeout "${PROFILE_BUDGET:-200}" python3 benchmarks/profile_train.py --model gla_340m --batch 16 --seq 2048 \
        --steps 5 --warmup 2 --top 40 --out "$OUT/profile.json" 2>&1 | grep -v -i warn > "$OUT/profile.md"
      echo "profile rc=$?" | tee -a "$LOG"; head -75 "$OUT/profile.md" | tee -a "$LOG" ;;
    bench)
      for spec in ${OPS:-simple_gla:g simple_gla:gamma gla:g}; do
        timeout "${BENCH_BUDGET:-180}" python3 benchmarks/bench_mosaic.py --op "${spec%%:*}" --gate "${spec#*:}" \
          --bwd --out "$OUT/mosaic.jsonl" ${IMPLS:+--impls $IMPLS} ${BENCH_SHAPES:+--shapes $BENCH_SHAPES} \
          2>&1 | grep -v -i warn | tee -a "$LOG" | tail -15
      done
      python3 benchmarks/mosaic_table.py "$OUT/mosaic.jsonl" ${TABLE_IMPL:+--impl $TABLE_IMPL} --run "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) $(date -u +%F) $(cat COMMIT 2>/dev/null | cut -c1-7)" \
        > "$OUT/mosaic_table.md" 2>&1; cat "$OUT/mosaic_table.md" | tee -a "$LOG" ;;
    train)
      timeout "${TRAIN_BUDGET:-220}" python3 benchmarks/bench_train.py --model gla_340m --batch 16 --seq 2048 \
        --steps 10 --warmup 2 --impl auto --remat-policy dots_and_op_out dots_saveable --out "$OUT/train.json" \
        2>&1 | grep -v -i warn | tee -a "$LOG" | tail -25 ;;
  esac
done
echo "== done at $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
