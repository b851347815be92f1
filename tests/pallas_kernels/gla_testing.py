"""Shared helpers for the GLA op tests: inputs, one vjp call returning every output and gradient,
relative errors. Kernel tests (triton, tpu) reuse these."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.gla import naive_recurrent_gla

NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "dh0")


@dataclasses.dataclass(frozen=True)
class Case:
  T: int
  K: int = 16
  V: int = 16
  gate: str = "normal"  # "weak" = logsigmoid(x)/16, "normal" = logsigmoid(x), "strong" ≈ −20 per token
  h0: bool = True
  seg: bool = False
  dtype: str = "float32"
  B: int = 2
  H: int = 2

  @property
  def id(self):
    return (f"T{self.T}_K{self.K}_V{self.V}_{self.gate}{'_h0' if self.h0 else ''}"
            f"{'_seg' if self.seg else ''}_{self.dtype}_B{self.B}H{self.H}")


def make_inputs(case: Case, seed: int = 0):
  """q, k, v, g, h0 (or None), segment_ids (or None), do, dht: random, never zeros."""
  ks = jax.random.split(jax.random.key(seed), 8)
  B, T, H, K, V = case.B, case.T, case.H, case.K, case.V
  dt = jnp.dtype(case.dtype)
  q = jax.random.normal(ks[0], (B, T, H, K)).astype(dt)
  k = jax.random.normal(ks[1], (B, T, H, K)).astype(dt)
  v = jax.random.normal(ks[2], (B, T, H, V)).astype(dt)
  x = jax.random.normal(ks[3], (B, T, H, K))
  if case.gate == "weak":
    g = jax.nn.log_sigmoid(x) / 16
  elif case.gate == "normal":
    g = jax.nn.log_sigmoid(x)
  elif case.gate == "strong":
    g = -20.0 + jax.random.uniform(ks[3], (B, T, H, K))
  else:
    raise ValueError(case.gate)
  h0 = jax.random.normal(ks[4], (B, H, K, V)) if case.h0 else None
  seg = None
  if case.seg:  # documents of random length; ids repeat later on purpose (a change is a new document)
    starts = jax.random.bernoulli(ks[5], min(0.5, 6.0 / T), (B, T))
    seg = (jnp.cumsum(starts, axis=1) % 3).astype(jnp.int32)
  do = jax.random.normal(ks[6], (B, T, H, V)).astype(dt)
  dht = jax.random.normal(ks[7], (B, H, K, V))
  return q, k, v, g, h0, seg, do, dht


def outputs_and_grads(fn, q, k, v, g, h0, seg, do, dht, **kw):
  """(o, final_state, dq, dk, dv, dg, dh0) of fn under jax.vjp with random cotangents (do, dht)."""
  def f(q, k, v, g, h0):
    return fn(q, k, v, g, initial_state=h0, output_final_state=True, segment_ids=seg, **kw)
  (o, ht), vjp = jax.vjp(f, q, k, v, g, h0)
  grads = vjp((do.astype(o.dtype), dht))
  return (o, ht, *grads)


@functools.lru_cache(maxsize=64)
def reference(case: Case, seed: int = 0):
  """naive_recurrent_gla in float32 on the case's inputs (bf16 inputs are upcast exactly), jitted."""
  q, k, v, g, h0, seg, do, dht = make_inputs(case, seed)
  up = lambda x: None if x is None else x.astype(jnp.float32)
  run = jax.jit(functools.partial(outputs_and_grads, naive_recurrent_gla))
  return tuple(np.asarray(x) if x is not None else None
               for x in run(up(q), up(k), up(v), up(g), h0, seg, up(do), dht))


def rel_err(x, ref) -> float:
  """‖x − ref‖ / ‖ref‖ in float64 (a NaN anywhere gives NaN, which fails every bound)."""
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm((x - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-30))


def assert_all_close(got, ref, tol: dict[str, float] | float, skip=()):
  """Every output and gradient within its relative bound; the message lists all errors."""
  errs = {}
  for name, a, b in zip(NAMES, got, ref):
    if name in skip or b is None:
      continue
    errs[name] = rel_err(a, b)
  bad = {n: e for n, e in errs.items()
         if not e <= (tol[n] if isinstance(tol, dict) else tol)}  # `not <=` so that NaN fails
  assert not bad, f"relative errors over bound: {bad}; all: {errs}"
  return errs


def check_packed_equals_separate(fn):
  """`fn(q, k, v, g, initial_state=, output_final_state=True, segment_ids=)` on a packed batch gives
  what the specification gives on each document alone (a 1-token document, a boundary on a chunk
  edge, ids that repeat later, the initial state feeding only the first document)."""
  case = Case(T=90, K=16, V=16, h0=True, B=1, H=2)
  q, k, v, g, h0, _, _, _ = make_inputs(case)
  bounds = [0, 20, 21, 64, 90]
  seg = jnp.concatenate([jnp.full((1, b - a), i % 2, jnp.int32)
                         for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))], axis=1)
  o, ht = fn(q, k, v, g, initial_state=h0, output_final_state=True, segment_ids=seg)
  for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
    sl = lambda x: x[:, a:b]
    o_i, ht_i = naive_recurrent_gla(sl(q), sl(k), sl(v), sl(g), output_final_state=True,
                                    initial_state=h0 if i == 0 else None)
    np.testing.assert_allclose(o[:, a:b], o_i, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ht, ht_i, rtol=1e-5, atol=1e-5)
