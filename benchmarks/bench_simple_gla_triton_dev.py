"""Development benchmark of the simple-GLA Pallas Triton kernels on a GPU (not the issue's final bench).

    PYTHONPATH=. python3 benchmarks/bench_simple_gla_triton_dev.py [--variants] [--out DIR]

1. correctness of the compiled kernels (every gate kind, bf16 and f32, docs, h0) against GLA's float32
   naive spec with g broadcast over K, on small shapes;
2. fwd and fwd+bwd time (bf16 q, k, v, do; f32 g = logsigmoid(randn)/16), median of 7 samples of 10
   calls after warm-up, of ours (scalar / constant / none gates) and of our GLA Triton at the same shape;
3. with --variants, block-size variants of ours and a per-kernel breakdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = {"s1": (8, 2048, 16, 128, 128), "s4": (8, 2048, 4, 256, 512), "s5": (8, 2048, 4, 128, 256),
          "tiny": (1, 128, 2, 32, 32)}
OUT = None
SMOKE = False


def emit(rec):
  print(json.dumps(rec), flush=True)
  if OUT:
    with open(os.path.join(OUT, "bench.jsonl"), "a") as f:
      f.write(json.dumps(rec) + "\n")


def timeit(fn, *args, reps=10, samples=7):
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(samples):
    t0 = time.perf_counter()
    for _ in range(reps):
      out = fn(*args)
    jax.block_until_ready(out)
    ts.append((time.perf_counter() - t0) / reps * 1e3)
  return statistics.median(ts)


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def correctness():
  from pallas_kernels.gla import naive_recurrent_gla
  from pallas_kernels.simple_gla.triton import chunk_simple_gla_triton

  def oracle(q, k, v, g=None, *, g_gamma=None, **kw):
    B, T, H, K = q.shape
    if g_gamma is not None:
      g = jnp.broadcast_to(g_gamma, (B, T, H))
    gk = jnp.zeros(q.shape, jnp.float32) if g is None else jnp.broadcast_to(g[..., None], q.shape)
    return naive_recurrent_gla(q, k, v, gk, **kw)

  def og(fn, q, k, v, g, gg, h0, seg, do, dht):
    def f(q, k, v, g, h0):
      return fn(q, k, v, g, g_gamma=gg, initial_state=h0, output_final_state=True, segment_ids=seg)
    (o, ht), vjp = jax.vjp(f, q, k, v, g, h0)
    return (o, ht, *vjp((do.astype(o.dtype), dht)))

  cases = [(2, 1024, 4, 128, 128, "bfloat16"), (1, 500, 2, 256, 512, "bfloat16"),
           (2, 777, 2, 64, 96, "float32"), (1, 8192, 2, 64, 64, "bfloat16")]
  if SMOKE:
    cases = [(1, 100, 2, 16, 32, "float32")]
  for B, T, H, K, V, dt in cases:
    ks = jax.random.split(jax.random.key(1), 9)
    q = jax.random.normal(ks[0], (B, T, H, K)).astype(dt)
    k = jax.random.normal(ks[1], (B, T, H, K)).astype(dt)
    v = jax.random.normal(ks[2], (B, T, H, V)).astype(dt)
    g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H)))
    g = jnp.where(jax.random.bernoulli(ks[8], 0.01, g.shape), -jnp.inf, g)
    h0 = jax.random.normal(ks[4], (B, H, K, V))
    seg = (jnp.cumsum(jax.random.bernoulli(ks[5], 3.0 / T, (B, T)), axis=1) % 3).astype(jnp.int32)
    do = jax.random.normal(ks[6], (B, T, H, V)).astype(dt)
    dht = jax.random.normal(ks[7], (B, H, K, V))
    up = lambda x: x.astype(jnp.float32)
    for gate in ("scalar", "constant", "none"):
      gs = g if gate == "scalar" else None
      gg = jnp.log(1 - 2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32))) if gate == "constant" else None
      try:
        got = jax.jit(functools.partial(og, chunk_simple_gla_triton))(q, k, v, gs, gg, h0, seg, do, dht)
        ref = jax.jit(functools.partial(og, oracle))(up(q), up(k), up(v), gs, gg, h0, seg, up(do), dht)
        names = ("o", "ht", "dq", "dk", "dv", "dg", "dh0")
        errs = {n: rel(a, b) for n, a, b in zip(names, got, ref) if a is not None and b is not None}
        nan = any(not np.isfinite(np.asarray(x, np.float32)).all() for x in got if x is not None)
        emit({"kind": "check", "shape": [B, T, H, K, V], "dtype": dt, "gate": gate, "nan": nan,
              "errs": {n: float(f"{e:.2e}") for n, e in errs.items()}})
      except Exception as e:  # noqa: BLE001
        emit({"kind": "check", "shape": [B, T, H, K, V], "gate": gate,
              "error": f"{type(e).__name__}: {str(e)[:800]}"})


def inputs(shape, seed=0):
  B, T, H, K, V = shape
  rng = np.random.default_rng(seed)
  bf = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32), jnp.bfloat16)
  q, k, v, do = bf(B, T, H, K), bf(B, T, H, K), bf(B, T, H, V), bf(B, T, H, V)
  x = rng.standard_normal((B, T, H), dtype=np.float32)
  g = jnp.asarray(-np.logaddexp(0, -x) / 16, jnp.float32)
  xk = rng.standard_normal((B, T, H, K), dtype=np.float32)
  gk = jnp.asarray(-np.logaddexp(0, -xk) / 16, jnp.float32)
  gg = jnp.log(1 - 2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32)))
  return q, k, v, do, g, gk, gg


def fwd_bwd(fn):
  def f(q, k, v, g, do):
    o, vjp = jax.vjp(lambda q, k, v, g: fn(q, k, v, g)[0], q, k, v, g)
    return vjp(do)
  return jax.jit(f)


def fwd(fn):
  return jax.jit(lambda q, k, v, g, do: fn(q, k, v, g)[0])


def bench(names, variants: bool):
  from pallas_kernels.gla.triton import chunk_gla_triton
  from pallas_kernels.simple_gla.triton import chunk_simple_gla_triton
  from pallas_kernels.simple_gla.triton.common import BlockSizes
  from pallas_kernels.common.triton.tiles import padded_dim

  for name in names:
    shape = SHAPES[name]
    B, T, H, K, V = shape
    q, k, v, do, g, gk, gg = inputs(shape)
    impls = {
        "simple_scalar": (lambda q, k, v, g, **kw: chunk_simple_gla_triton(q, k, v, g, **kw), g),
        "simple_constant": (lambda q, k, v, g, **kw: chunk_simple_gla_triton(q, k, v, g_gamma=gg, **kw),
                            None),
        "simple_none": (lambda q, k, v, g, **kw: chunk_simple_gla_triton(q, k, v, **kw), None),
        "gla": (lambda q, k, v, g, **kw: chunk_gla_triton(q, k, v, g, **kw), gk),
    }
    if variants:
      base = BlockSizes.get_default(B, H, padded_dim(K), padded_dim(V), T)
      vs = {
          "g64_w4": dict(grads_bk=min(K, 64), grads_bv=min(V, 64), grads_warps=4),
          "g128_w4": dict(grads_bk=min(K, 128), grads_bv=min(V, 128), grads_warps=4),
          "fwd_fused": dict(fwd_parallel=False),
          "fwd_par": dict(fwd_parallel=True),
      }
      for vn, kw in vs.items():
        bs = dataclasses.replace(base, **kw)
        impls[f"simple_scalar_{vn}"] = (
            functools.partial(lambda q, k, v, g, bs=bs, **kw: chunk_simple_gla_triton(
                q, k, v, g, block_sizes=bs, **kw)), g)
    for iname, (fn, gate) in impls.items():
      rec = {"kind": "time", "shape": name, "dims": shape, "impl": iname}
      for mode, wrap in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        if mode == "fwd" and iname.startswith("simple_scalar_") and "fwd" not in iname:
          continue  # backward-only variants
        try:
          t0 = time.perf_counter()
          c = wrap(fn)
          rec[f"{mode}_ms"] = round(timeit(c, q, k, v, gate, do), 4)
          rec[f"{mode}_first_s"] = round(time.perf_counter() - t0, 1)
        except Exception as e:  # noqa: BLE001
          rec[f"{mode}_error"] = f"{type(e).__name__}: {str(e)[:500]}"
      emit(rec)


def main():
  global OUT, SMOKE
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT"))
  ap.add_argument("--shapes", default="s1,s4")
  ap.add_argument("--variants", action="store_true")
  ap.add_argument("--no-check", action="store_true")
  ap.add_argument("--interpret", action="store_true", help="CPU smoke test of this script")
  a = ap.parse_args()
  OUT = a.out
  SMOKE = a.interpret
  if a.interpret:
    import pallas_kernels.gla.triton as gt
    import pallas_kernels.simple_gla.triton as st
    st.chunk_simple_gla_triton = functools.partial(st.chunk_simple_gla_triton, interpret=True)
    gt.chunk_gla_triton = functools.partial(gt.chunk_gla_triton, interpret=True)
  emit({"kind": "meta", "jax": jax.__version__, "device": str(jax.devices()[0].device_kind),
        "date": datetime.datetime.now().isoformat(timespec="seconds")})
  if not a.no_check:
    correctness()
  bench(a.shapes.split(","), a.variants)


if __name__ == "__main__":
  main()
