"""fwd+bwd of our Triton GLA and simple-GLA ops with the sequence-parallel forward's per-chunk states kept
for the backward (`keep_states=True`, the default) vs recomputed there (`keep_states=False`).

    python benchmarks/bench_keep_states.py [--shapes s2,t16k] [--out FILE.jsonl] [--interpret]

bf16 q, k, v, do, float32 gates logsigmoid(randn)/16 (GLA: [B, T, H, K]; simple GLA: [B, T, H]); median
ms of jitted value_and_grad(<o, do>) (bench_gla's timer), the two settings interleaved over `--rounds`
rounds (medians of the rounds reported), whether the default blocks take the sequence-parallel forward,
and the largest relative difference of any gradient between the settings (0 up to summation order: the
same kernel computes h either way). One JSON line per (op, shape).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

from bench_gla import SHAPES, _time


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shapes", default="s2,t16k")
  p.add_argument("--ops", default="gla,simple_gla")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default=None)
  p.add_argument("--interpret", action="store_true", help="CPU smoke test (interpret mode, 1 call)")
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  from pallas_kernels.gla.triton import chunk_gla_triton
  from pallas_kernels.gla.triton.common import BlockSizes as GlaBlocks, padded_dim
  from pallas_kernels.simple_gla.triton import chunk_simple_gla_triton
  from pallas_kernels.simple_gla.triton.common import BlockSizes as SimpleBlocks

  for name in args.shapes.split(","):
    B, T, H, K, V = SHAPES[name]
    ks = jax.random.split(jax.random.key(0), 5)
    q, k = (jax.random.normal(kk, (B, T, H, K), jnp.bfloat16) for kk in ks[:2])
    v, do = (jax.random.normal(kk, (B, T, H, V), jnp.bfloat16) for kk in ks[2:4])
    for op in args.ops.split(","):
      gla = op == "gla"
      g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, T, H, K) if gla else (B, T, H))) / 16
      blocks = (GlaBlocks if gla else SimpleBlocks).get_default(B, H, padded_dim(K), padded_dim(V),
                                                                -(-T // 64) * 64)
      fn = chunk_gla_triton if gla else chunk_simple_gla_triton

      def step(keep):
        loss = lambda q, k, v, g: jnp.sum((fn(q, k, v, g, keep_states=keep, interpret=args.interpret)[0]
                                           * do).astype(jnp.float32))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))

      steps = {keep: step(keep) for keep in (True, False)}
      grads = {keep: jax.block_until_ready(f(q, k, v, g))[1] for keep, f in steps.items()}
      diff = max(float(jnp.linalg.norm((a.astype(jnp.float32) - b.astype(jnp.float32)).ravel())
                       / jnp.maximum(jnp.linalg.norm(b.astype(jnp.float32).ravel()), 1e-30))
                 for a, b in zip(grads[True], grads[False]))
      times = {True: [], False: []}
      for _ in range(1 if args.interpret else args.rounds):
        for keep, f in steps.items():
          times[keep].append(_time(f, (q, k, v, g), iters=1 if args.interpret else 10,
                                   reps=1 if args.interpret else 5))
      rec = {"op": op, "shape": name, "dims": [B, T, H, K, V], "fwd_parallel": blocks.fwd_parallel,
             "keep_ms": round(statistics.median(times[True]), 4),
             "recompute_ms": round(statistics.median(times[False]), 4),
             "rounds": {"keep": [round(t, 4) for t in times[True]],
                        "recompute": [round(t, 4) for t in times[False]]},
             "max_rel_diff_grads": diff}
      print(json.dumps(rec), flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
  main()
