#!/bin/bash
# Zoology on one GPU in device calls of <= 10 minutes (benchmarks/ZOOLOGY.md), from the repo root:
#
#   STAGES="probe" bash benchmarks/zoology_gpu.sh                      # sizes --epochs
#   STAGES="grid jrt" EPOCHS=4 BUDGET=420 WORKERS=6 bash benchmarks/zoology_gpu.sh
#   STAGES="grid" RESUME_FROM=benchmarks/zoology/results.jsonl bash benchmarks/zoology_gpu.sh   # committed rows
#   STAGES="lm" LM_STEPS=2000 bash benchmarks/zoology_gpu.sh          # carry runs/tokens (see the lm stage)
#
# Results accumulate in runs/zoology (carry it back into the next call: the sweep resumes; finished runs
# are skipped) and are copied to $OUT with the logs (every 20 s: STAGE_TIMEOUT caps a grid/jrt stage). The data sets are made on the machine (not carried).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/zoology_out}
RUNS=${RUNS:-runs/zoology}
EPOCHS=${EPOCHS:-2}
BUDGET=${BUDGET:-420}
WORKERS=${WORKERS:-4}
KINDS=${KINDS:-attention,based,gla,mamba2,retnet,linear_attn,hgrn2,hedgehog,swa}
FIXED=${FIXED:-based,gla,mamba2,retnet,linear_attn,hgrn2,hedgehog,swa}
DIMS=${DIMS:-64,128,256}
CELLS=${CELLS:-256x16,512x64}
mkdir -p "$OUT" "$RUNS"
# RESUME_FROM=benchmarks/zoology/results.jsonl: start from the committed rows (a fresh checkout has no runs/)
if [ -n "${RESUME_FROM:-}" ] && [ ! -f "$RUNS/results.jsonl" ]; then cp "$RESUME_FROM" "$RUNS/results.jsonl"; fi
export PYTHONPATH=$PWD
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  python3 -c "import tensorflow_datasets, grain; print('tfds', tensorflow_datasets.__version__, 'grain ok')" 2>&1 | tail -1
  cat COMMIT 2>/dev/null || git log --oneline -1
  date -u
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
T0=$(date +%s)
since() { echo "== $1 at $(( $(date +%s) - T0 ))s"; }
save() { cp "$RUNS"/results.jsonl "$RUNS"/results.md "$RUNS"/*.png "$OUT"/ 2>/dev/null; true; }
trap save EXIT
# copy the results out every 20 s too: a device call killed at its limit skips the EXIT trap
( while sleep 20; do save; done ) &
SAVER=$!

for stage in ${STAGES:-probe}; do
  since "$stage"
  case $stage in
    probe)
      timeout "${PROBE_BUDGET:-300}" python3 -m train.zoology --kinds gla,attention,mamba2,based --dims 256 \
        --cells 512x64 --epochs 2 --vmap-lrs --workers 4 --out /tmp/zoo_probe > "$OUT/probe.log" 2>&1
      echo "probe rc=$?"; grep -v -i "warn" "$OUT/probe.log" | tail -12
      cp /tmp/zoo_probe/results.jsonl "$OUT/probe.jsonl" 2>/dev/null ;;
    diag)  # compile vs steady-state epoch, Triton vs XLA ops, one worker
      for impl in ${DIAG_IMPLS:-auto xla}; do
        timeout "${DIAG_BUDGET:-100}" python3 -m train.zoology --kinds gla,attention --dims 64 --cells 256x16 \
          --epochs 2 ${BF16:+--bf16} --vmap-lrs --train-examples 20000 --impl $impl --out /tmp/zoo_diag_$impl --quiet \
          > "$OUT/diag_$impl.log" 2>&1
        echo "diag $impl rc=$?"; grep -v -i "warn" "$OUT/diag_$impl.log" | tail -4
        cp /tmp/zoo_diag_$impl/results.jsonl "$OUT/diag_$impl.jsonl" 2>/dev/null
      done ;;
    grid)
      timeout "${STAGE_TIMEOUT:-$(( BUDGET + 240 ))}" python3 -m train.zoology --kinds "$KINDS" --dims "$DIMS" --cells "$CELLS" \
        --epochs "$EPOCHS" ${BF16:+--bf16} --vmap-lrs --workers "$WORKERS" --time-budget "$BUDGET" --out "$RUNS" \
        > "$OUT/grid.log" 2>&1
      echo "grid rc=$?"; grep -v -i "warn" "$OUT/grid.log" | tail -70 ;;
    jrt)
      timeout "${STAGE_TIMEOUT:-$(( BUDGET + 240 ))}" python3 -m train.zoology --kinds "$FIXED" --dims "$DIMS" --cells 512x64 --jrt \
        --epochs "$EPOCHS" ${BF16:+--bf16} --vmap-lrs --workers "$WORKERS" --time-budget "$BUDGET" --out "$RUNS" \
        > "$OUT/jrt.log" 2>&1
      echo "jrt rc=$?"; grep -v -i "warn" "$OUT/jrt.log" | tail -40 ;;
    lm)
      # the GPU image has no tensorflow_datasets/grain: train from the token file exported on the CPU
      # machine (python -m train.data.tokens export --corpus stdlib --tokenizer bpe --bpe-vocab 4096
      # --out runs/tokens/stdlib_bpe4096.npz; 2.9 MB) and carried with the call
      timeout "${LM_BUDGET:-500}" python3 -m train.zoology_lm --steps "${LM_STEPS:-2000}" --bf16 \
        --tokens "${LM_TOKENS:-runs/tokens/stdlib_bpe4096.npz}" --eval-batches 1 \
        --workers "${LM_WORKERS:-3}" --out runs/zoology_lm --quiet > "$OUT/lm.log" 2>&1
      echo "lm rc=$?"; grep -v -i "warn" "$OUT/lm.log" | tail -30
      cp runs/zoology_lm/lm_results.* runs/zoology_lm/lm_curves.png "$OUT"/ 2>/dev/null ;;
  esac
  save
done
kill $SAVER 2>/dev/null
since done
