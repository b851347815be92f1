#!/bin/bash
# The mixers' GPU check (issue 11) in one device call, from the repo root:
#
#   run(command="bash benchmarks/gpu_check_mixers.sh", carry=[".whl", ".fla_autotune.tgz"], timeout_s=600)
#
# 1. fla parity: tests/gla_jax/test_fla_parity_mixers.py (random fla models of every model type we import,
#    save_pretrained → load_fla_checkpoint, float32 logits) → $OUT/parity_mixers.json.
# 2. every kind on the GPU: tests/gla_jax/test_mixers_gpu.py (Triton op vs xla per kind, bf16 train
#    steps of each tiny model) → $OUT/mixers_gpu.json.
# 3. the trainer end to end with the Triton op per shard on a few kinds' MQAR configs (TRAIN_KINDS).
# Budgets (s): PARITY_BUDGET=300, KINDS_BUDGET=150, TRAIN_BUDGET=100.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gla_mixers_out}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:$SITE
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
mkdir -p "$TRITON_CACHE_DIR"
if [ -f .fla_autotune.tgz ]; then tar xzf .fla_autotune.tgz -C "$TRITON_CACHE_DIR"; fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import jax, jaxlib, torch, triton; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'torch', torch.__version__, 'triton', triton.__version__, jax.devices())"
  python3 -c "import importlib.metadata as m; print('fla-core', m.version('fla-core'))"
  date -u
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
T0=$(date +%s)
since() { echo "== $1 at $(( $(date +%s) - T0 ))s"; }

since parity
timeout "${PARITY_BUDGET:-300}" python3 -m pytest -v -p no:xdist -s -m gpu --durations=0 \
  tests/gla_jax/test_fla_parity_mixers.py ${PARITY_K:+-k "$PARITY_K"} > "$OUT/parity.log" 2>&1
echo "parity rc=$?"; grep -E "PARITY|passed|failed|Error" "$OUT/parity.log" | tail -30

since kinds
timeout "${KINDS_BUDGET:-150}" python3 -m pytest -v -p no:xdist -s -m gpu --durations=0 \
  tests/gla_jax/test_mixers_gpu.py > "$OUT/kinds.log" 2>&1
echo "kinds rc=$?"; grep -E "MIXERS_GPU|passed|failed|Error" "$OUT/kinds.log" | tail -40

since train
for kind in ${TRAIN_KINDS:-retnet mamba2}; do
  timeout "${TRAIN_BUDGET:-100}" python3 -m train --config "configs/mqar_${kind}.py" --set model.attn_impl=triton \
    steps=60 eval_every=60 log_every=20 progress=False plot=False tensorboard=False \
    workdir="/tmp/run_$kind" > "$OUT/train_$kind.log" 2>&1
  echo "train $kind rc=$?"; tail -4 "$OUT/train_$kind.log"
done
since done
