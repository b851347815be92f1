"""`python -m pallas_kernels.gla`: run every GLA implementation on random data and print how closely each
agrees with the specification (outputs, final state and every gradient), with its time on this machine."""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.gla import chunk_gla, naive_recurrent_gla
from pallas_kernels.common.dispatch import current_platform
from pallas_kernels.gla.ops import available_impls

NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "dh0")


def _run(fn, q, k, v, g, h0, seg, do, dht):
  def f(q, k, v, g, h0):
    return fn(q, k, v, g, initial_state=h0, output_final_state=True, segment_ids=seg)
  (o, ht), vjp = jax.vjp(f, q, k, v, g, h0)
  return (o, ht, *vjp((do.astype(o.dtype), dht)))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--shape", default="2,300,4,64,128", help="B,T,H,K,V")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--docs", type=int, default=3, help="packed documents per row (1 = none)")
  args = p.parse_args(argv)
  B, T, H, K, V = (int(x) for x in args.shape.split(","))
  ks = jax.random.split(jax.random.key(0), 7)
  dt = jnp.dtype(args.dtype)
  q = jax.random.normal(ks[0], (B, T, H, K)).astype(dt)
  k = jax.random.normal(ks[1], (B, T, H, K)).astype(dt)
  v = jax.random.normal(ks[2], (B, T, H, V)).astype(dt)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H, K))) / 16
  h0 = jax.random.normal(ks[4], (B, H, K, V))
  seg = None if args.docs <= 1 else jnp.repeat(jnp.arange(args.docs), -(-T // args.docs))[None, :T]
  seg = None if seg is None else jnp.broadcast_to(seg, (B, T)).astype(jnp.int32)
  do = jax.random.normal(ks[5], (B, T, H, V)).astype(dt)
  dht = jax.random.normal(ks[6], (B, H, K, V))
  args_ = (q, k, v, g, h0, seg, do, dht)
  f32 = lambda x: x if x is None or x.dtype != dt else x.astype(jnp.float32)
  ref = jax.jit(functools.partial(_run, naive_recurrent_gla))(*map(f32, args_))
  print(f"GLA op, B,T,H,K,V = {B},{T},{H},{K},{V}, {args.dtype}, {args.docs} document(s) per row; "
        f"platform {current_platform()}, jax {jax.__version__}")
  print("relative L2 error vs naive_recurrent_gla (float32), and fwd+bwd time")
  print(f"{'impl':<26}" + "".join(f"{n:>12}" for n in NAMES) + f"{'ms':>10}")
  for impl in available_impls():
    if impl == "parallel" and T > 1024:
      continue
    try:
      fn = jax.jit(functools.partial(_run, functools.partial(chunk_gla, impl=impl)))
      out = jax.block_until_ready(fn(*args_))
    except ValueError as e:  # an implementation that cannot serve this call says why
      print(f"{impl:<26}  skipped: {e}")
      continue
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args_))
    ms = (time.perf_counter() - t0) * 1e3
    errs = [np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
            / np.linalg.norm(np.asarray(b, np.float64)) for a, b in zip(out, ref)]
    print(f"{impl:<26}" + "".join(f"{e:>12.2e}" for e in errs) + f"{ms:>10.1f}")


if __name__ == "__main__":
  main()
