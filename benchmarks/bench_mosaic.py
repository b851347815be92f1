"""Forward time of chunk_simple_gla (or, with --op gla, chunk_gla): impl "mosaic_gpu" (Mosaic GPU) vs
"triton" vs "xla".

    python benchmarks/bench_mosaic.py [--op simple_gla|gla] [--shapes s1,s2,...] [--gate g|gamma]
                                      [--out FILE.jsonl]
    python benchmarks/bench_mosaic.py --interpret --shapes tiny   # CPU smoke test (interpret mode)

The five shapes of benchmarks/bench_gla.py (B, T, H, K, V), bf16 q, k, v, float32
g = logsigmoid(randn [B, T, H]) / 16 (or --gate gamma: RetNet's g_gamma; --op gla: g [B, T, H, K]
the same way), no initial state, the final state not requested. Per shape and impl: the median ms of a
jitted forward (block_until_ready around 10 calls, median of 5 repeats), the first-call (compile) time,
and the relative L2 error of o against "xla"; with --bwd also fwd + bwd (value_and_grad of <o, do>) and each
gradient's relative L2 error against "xla"'s. An impl that cannot serve a shape is recorded with its
reason. One JSON line per (shape, impl).
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
  p.add_argument("--op", choices=("simple_gla", "gla"), default="simple_gla")
  p.add_argument("--shapes", default="s1,s2,s3,s4,s5")
  p.add_argument("--gate", choices=("g", "gamma"), default="g")
  p.add_argument("--impls", default="mosaic_gpu,triton,xla")
  p.add_argument("--interpret", action="store_true", help="mosaic_gpu → mosaic_gpu_interpret (CPU)")
  p.add_argument("--out", default=None, help="append JSON lines here")
  p.add_argument("--bwd", action="store_true", help="also time fwd + bwd (jax.grad of <o, do>)")
  args = p.parse_args()
  if args.op == "gla" and args.gate == "gamma":
    p.error("--gate gamma is a chunk_simple_gla gate; chunk_gla takes g")

  import jax
  import jax.numpy as jnp
  from pallas_kernels.gla import chunk_gla
  from pallas_kernels.simple_gla import chunk_simple_gla

  impls = [("mosaic_gpu_interpret" if args.interpret and i == "mosaic_gpu" else i)
           for i in args.impls.split(",")]
  for name in args.shapes.split(","):
    B, T, H, K, V = SHAPES[name]
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (B, T, H, K), jnp.bfloat16)
    k = jax.random.normal(ks[1], (B, T, H, K), jnp.bfloat16)
    v = jax.random.normal(ks[2], (B, T, H, V), jnp.bfloat16)
    g_shape = (B, T, H, K) if args.op == "gla" else (B, T, H)
    g = jax.nn.log_sigmoid(jax.random.normal(ks[3], g_shape)) / 16 if args.gate == "g" else None
    g_gamma = jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32))))
    g_gamma = g_gamma if args.gate == "gamma" else None
    ref = ref_grads = None
    for impl in reversed(impls):  # xla first: the reference
      if args.op == "gla":
        fn = jax.jit(functools.partial(chunk_gla, impl=impl))
      else:
        fn = jax.jit(functools.partial(chunk_simple_gla, g_gamma=g_gamma, impl=impl))
      rec = {"op": args.op, "shape": name, "dims": [B, T, H, K, V], "gate": args.gate, "impl": impl}
      try:
        t0 = time.perf_counter()
        o, _ = jax.block_until_ready(fn(q, k, v, g))
        rec["first_call_s"] = round(time.perf_counter() - t0, 2)
        rec["fwd_ms"] = round(_time(fn, (q, k, v, g), iters=1 if args.interpret else 10,
                                    reps=1 if args.interpret else 5), 4)
        if args.bwd:  # fwd + bwd: <o, do> and its grads w.r.t. q, k, v (and g where it is an input)
          argnums = (0, 1, 2, 3) if g is not None else (0, 1, 2)
          do = jax.random.normal(jax.random.key(7), o.shape, o.dtype)
          # value_and_grad: the value needs o, so the forward runs too (grad alone of a loss linear in o
          # would let XLA drop it)
          bwd = jax.jit(jax.value_and_grad(
              lambda q, k, v, g: jnp.sum((fn(q, k, v, g)[0] * do).astype(jnp.float32)), argnums=argnums))
          t0 = time.perf_counter()
          _, grads = jax.block_until_ready(bwd(q, k, v, g))
          rec["bwd_first_call_s"] = round(time.perf_counter() - t0, 2)
          grads = [x.astype(jnp.float32) for x in grads]
          if impl == "xla":
            ref_grads = grads
          if ref_grads is not None:  # relative L2 of each gradient (dq, dk, dv[, dg]) against xla's
            rec["rel_err_grads_vs_xla"] = [round(float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)), 6)
                                           for a, b in zip(grads, ref_grads)]
          rec["fwd_bwd_ms"] = round(_time(bwd, (q, k, v, g), iters=1 if args.interpret else 10,
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
