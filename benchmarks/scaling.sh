#!/bin/bash
# Multi-GPU scaling of the trainer's step (issue 17; benchmarks/scaling.py) in one device call, from the repo
# root, one model per call:
#
#   run(kind="nvidia-h200-x8", carry=[".whl"], timeout_s=600,
#       command="MODEL=gla_340m MESHES='fsdp=8' bash benchmarks/scaling.sh --batch-per-device 8 --seq 2048")
#
# Env: MODEL (a presets name, default gla_340m), MESHES (space-separated, default scaling.py's fsdp=N data=N
# data=N/2,tensor=2), BUDGET (s, default 540). Further arguments go to scaling.py. Results accumulate in
# runs/scaling/$MODEL/ (ignored by git, kept on a warm machine between calls: --reuse keeps the earlier
# calls' meshes, baseline and loss reference) and are copied to $OUT/$MODEL/. The persistent compilation
# cache (runs/jax_cache) makes a repeated init / compile a cache hit in a later call on the same machine.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# NVLink multicast stays off (it can take the host's shared GPUs out of service)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/gla_scaling_out}
SITE=${SITE:-/tmp/site}
MODEL=${MODEL:-gla_340m}
mkdir -p "$OUT/$MODEL" "runs/scaling/$MODEL" runs/jax_cache
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl 2>&1 | tail -2
fi
export PYTHONPATH=$PWD:$SITE
export JAX_COMPILATION_CACHE_DIR=$PWD/runs/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
  env | grep -E "^(NCCL|NVSHMEM|TORCH_SYMM)" | sort
  date -u
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout "${BUDGET:-540}" python3 benchmarks/scaling.py --model "$MODEL" ${MESHES:+--meshes $MESHES} \
  --reuse "runs/scaling/$MODEL/scaling.json" --out "runs/scaling/$MODEL" "$@" 2>&1 | tee "$OUT/$MODEL/log.txt" \
  | grep -v "^WARNING"
echo "scaling rc=${PIPESTATUS[0]}"
cp runs/scaling/$MODEL/scaling.* "$OUT/$MODEL/" 2>/dev/null
