"""Forward time of chunk_simple_gla: impl "mosaic_gpu" (Mosaic GPU) vs "triton" vs "xla".

    python benchmarks/bench_mosaic.py [--shapes s1,s2,...] [--gate g|gamma] [--out FILE.jsonl]
    python benchmarks/bench_mosaic.py --interpret --shapes tiny   # CPU smoke test (interpret mode)

The five shapes of benchmarks/bench_gla.py (B, T, H, K, V), bf16 q, k, v, float32
g = logsigmoid(randn [B, T, H]) / 16 (or --gate gamma: RetNet's g_gamma), no initial state, the final
state not requested. Per shape and impl: the median ms of a jitted forward (block_until_ready around
10 calls, median of 5 repeats), the first-call (compile) time, and the relative L2 error of o against
"xla". An impl that cannot serve a shape is recorded with its reason. One JSON line per (shape, impl).
"""

from __future__ import annotations

import argparse
import functools
import json
import time

from bench_gla import _time  # the median-of-reps timer of the GLA bench

SHAPES = {  # B, T, H, K, V (benchmarks/bench_gla.py's s1..s5)
    "s1": (8, 2048, 16, 128, 128),
    "s2": (2, 8192, 16, 128, 128),
    "s3": (4, 4096, 32, 64, 64),
    "s4": (8, 2048, 4, 256, 512),
    "s5": (8, 2048, 4, 128, 256),
    "tiny": (1, 128, 2, 32, 32),
}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shapes", default="s1,s2,s3,s4,s5")
  p.add_argument("--gate", choices=("g", "gamma"), default="g")
  p.add_argument("--impls", default="mosaic_gpu,triton,xla")
  p.add_argument("--interpret", action="store_true", help="mosaic_gpu → mosaic_gpu_interpret (CPU)")
  p.add_argument("--out", default=None, help="append JSON lines here")
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  from pallas_kernels.simple_gla import chunk_simple_gla

  impls = [("mosaic_gpu_interpret" if args.interpret and i == "mosaic_gpu" else i)
           for i in args.impls.split(",")]
  for name in args.shapes.split(","):
    B, T, H, K, V = SHAPES[name]
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (B, T, H, K), jnp.bfloat16)
    k = jax.random.normal(ks[1], (B, T, H, K), jnp.bfloat16)
    v = jax.random.normal(ks[2], (B, T, H, V), jnp.bfloat16)
    g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H))) / 16 if args.gate == "g" else None
    g_gamma = jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32))))
    g_gamma = g_gamma if args.gate == "gamma" else None
    ref = None
    for impl in reversed(impls):  # xla first: the reference
      fn = jax.jit(functools.partial(chunk_simple_gla, g_gamma=g_gamma, impl=impl))
      rec = {"shape": name, "dims": [B, T, H, K, V], "gate": args.gate, "impl": impl}
      try:
        t0 = time.perf_counter()
        o, _ = jax.block_until_ready(fn(q, k, v, g))
        rec["first_call_s"] = round(time.perf_counter() - t0, 2)
        rec["fwd_ms"] = round(_time(fn, (q, k, v, g), iters=1 if args.interpret else 10,
                                    reps=1 if args.interpret else 5), 4)
        if impl == "xla":
          ref = o.astype(jnp.float32)
        if ref is not None:
          d = o.astype(jnp.float32) - ref
          rec["rel_err_o_vs_xla"] = float(jnp.linalg.norm(d) / jnp.linalg.norm(ref))
      except ValueError as e:  # the impl cannot serve this call (or this platform): its reason
        rec["error"] = str(e)
      print(json.dumps(rec), flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
  main()
