"""Time each Mosaic GPU pass of chunk_gla alone (forward, and the backward's dv / dq / dk passes) on one
GPU, with the intra-chunk form forced or by span, to see where the op's fwd + bwd time goes.

    python benchmarks/bench_gla_mosaic_passes.py [--shapes s1,s4] [--out passes.jsonl]

Inputs as benchmarks/bench_mosaic.py (bf16, g = logsigmoid(randn) / 16). One JSON line per
(shape, pass, variant): the median ms of benchmarks/bench_gla.py's timer. Variants marked "k128" / "part128"
run with the ops module's MAX_K_COMPILED / GRAD_PART set to 128 (launches of at most 128 key / value
columns, summed) where the shape is wider: the register budget of one launch.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gla import _time  # noqa: E402
from bench_mosaic import SHAPES  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shapes", default="s1,s4")
  p.add_argument("--out", default=None)
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  from pallas_kernels.common.checks import check_gla_inputs, default_scale
  from pallas_kernels.gla.mosaic_gpu import ops as mops

  for name in args.shapes.split(","):
    B, T, H, K, V = SHAPES[name]
    ks = jax.random.split(jax.random.key(0), 5)
    q, k = (jax.random.normal(x, (B, T, H, K), jnp.bfloat16) for x in ks[:2])
    v, do = (jax.random.normal(x, (B, T, H, V), jnp.bfloat16) for x in ks[2:4])
    g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, T, H, K))) / 16
    info = check_gla_inputs(q, k, v, g)
    runs = {}  # label -> (jitted fn, operands, ops-module globals to set while it compiles and runs)
    for path in ("auto", "exact"):
      for bv in (64, 128):
        cfg = mops.Config(info=info, scale=default_scale(None, K), output_final_state=False,
                          chunk_size=64, block_v=bv, interpret=False, path=path)
        runs[f"fwd bv{bv} {path}"] = (jax.jit(functools.partial(mops._forward, cfg)),
                                      (q, k, v, g, None, None), {})
        if K > 128:
          runs[f"fwd bv{bv} {path} k128"] = (jax.jit(functools.partial(mops._forward, cfg)),
                                             (q, k, v, g, None, None), {"MAX_K_COMPILED": 128})
      cfg = mops.Config(info=info, scale=default_scale(None, K), output_final_state=False,
                        chunk_size=64, block_v=64, interpret=False, path=path)
      runs[f"grad {path}"] = (jax.jit(functools.partial(mops._grad_pass, cfg)), (do, v, k, g, None, None), {})
      if V > 128:
        runs[f"grad {path} part128"] = (jax.jit(functools.partial(mops._grad_pass, cfg)),
                                        (do, v, k, g, None, None), {"GRAD_PART": 128})
      bwd = lambda q, k, v, g, do, cfg=cfg: mops._bwd_rule(cfg, (q, k, v, g, None, None), (do, None))[:4]
      runs[f"bwd {path}"] = (jax.jit(bwd), (q, k, v, g, do), {})
      if K > 128 or V > 128:
        runs[f"bwd {path} k128 part128"] = (jax.jit(lambda *a, f=bwd: f(*a)), (q, k, v, g, do),
                                            {"MAX_K_COMPILED": 128, "GRAD_PART": 128})
    for label, (fn, operands, patch) in runs.items():
      rec = {"shape": name, "dims": [B, T, H, K, V], "pass": label}
      saved = {n: getattr(mops, n) for n in patch}
      try:
        for n, val in patch.items():
          setattr(mops, n, val)
        jax.block_until_ready(fn(*operands))
        rec["ms"] = round(_time(fn, operands, iters=10, reps=5), 4)
      except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported, not fatal
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
      finally:
        for n, val in saved.items():
          setattr(mops, n, val)
      print(json.dumps(rec), flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
  main()
