"""Shared helpers for the simple-GLA op tests (the jnp forms here, the Triton / TPU kernels' tests too).

    case = Case(T=130, K=32, V=16, gate="scalar", strength="strong", neg_inf=True, seg=True)
    inputs = make_inputs(case)                       # Inputs(q, k, v, g, g_gamma, h0, seg, do, dht)
    got = jax.jit(functools.partial(outputs_and_grads, chunk_simple_gla))(inputs)
    assert_close(got, reference(case), tolerance(case.dtype))

`outputs_and_grads(fn, inputs)` calls `fn(q, k, v, g, g_gamma=, initial_state=, output_final_state=True,
segment_ids=)` under `jax.vjp` with the random cotangents (do, dht) and returns `Outputs(o, final_state,
dq, dk, dv, dg, dh0)`; dg is None without a per-token gate (g_gamma gets no gradient), dh0 None without
an initial state. `reference(case)` is the float32 spec (`naive_recurrent_simple_gla`) on the same inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.simple_gla import naive_recurrent_simple_gla

NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "dh0")
F32_TOL = 1e-5
# relative-RMS bounds for bf16 inputs against the float32 spec (those of the GLA tests)
BF16_TOL = {"o": 1e-2, "final_state": 1e-2, "dq": 2e-2, "dk": 2e-2, "dv": 2e-2, "dg": 3e-2,
            "dh0": 1e-2}


@dataclasses.dataclass(frozen=True)
class Case:
  """One test configuration (hashable: `reference` caches on it)."""

  T: int
  K: int = 16
  V: int = 16
  gate: str = "scalar"  # "scalar" (g [B, T, H]), "constant" (g_gamma [H]) or "none"
  # scalar: "weak" logsigmoid(x)/16, "normal" logsigmoid(x), "strong" ≈ −20 per token;
  # constant: "weak"/"normal" RetNet's log(1 − 2^(−5−h)), "strong" ≈ −20 per head
  strength: str = "normal"
  neg_inf: bool = False  # some gate entries (scalar) or one head (constant) are −inf
  h0: bool = True
  seg: bool = False  # packed documents; ids repeat later (a change of id is a new document)
  dtype: str = "float32"
  B: int = 2
  H: int = 2

  @property
  def id(self) -> str:
    return (f"T{self.T}_K{self.K}_V{self.V}_{self.gate}"
            f"{'' if self.gate == 'none' else '_' + self.strength}{'_inf' if self.neg_inf else ''}"
            f"{'_h0' if self.h0 else ''}{'_seg' if self.seg else ''}_{self.dtype}_B{self.B}H{self.H}")


class Inputs(NamedTuple):
  """A pytree (None where absent): pass it through jax.jit as one argument."""

  q: jax.Array  # [B, T, H, K]
  k: jax.Array  # [B, T, H, K]
  v: jax.Array  # [B, T, H, V]
  g: jax.Array | None  # [B, T, H] float32
  g_gamma: jax.Array | None  # [H] float32
  h0: jax.Array | None  # [B, H, K, V] float32
  seg: jax.Array | None  # [B, T] int32
  do: jax.Array  # [B, T, H, V] cotangent of o (input dtype)
  dht: jax.Array  # [B, H, K, V] cotangent of the final state (float32)


class Outputs(NamedTuple):
  o: jax.Array
  final_state: jax.Array
  dq: jax.Array
  dk: jax.Array
  dv: jax.Array
  dg: jax.Array | None
  dh0: jax.Array | None


def retnet_gamma(H: int) -> jax.Array:
  """RetNet's per-head log decay log(1 − 2^(−5−h)), [H] float32."""
  return jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32))))


def make_inputs(case: Case, seed: int = 0) -> Inputs:
  """Random inputs for the case (never zeros), the gate of its kind and strength, and cotangents."""
  ks = jax.random.split(jax.random.key(seed), 9)
  B, T, H, K, V = case.B, case.T, case.H, case.K, case.V
  dt = jnp.dtype(case.dtype)
  q = jax.random.normal(ks[0], (B, T, H, K)).astype(dt)
  k = jax.random.normal(ks[1], (B, T, H, K)).astype(dt)
  v = jax.random.normal(ks[2], (B, T, H, V)).astype(dt)
  g = g_gamma = None
  if case.gate == "scalar":
    x = jax.random.normal(ks[3], (B, T, H))
    g = {"weak": lambda: jax.nn.log_sigmoid(x) / 16, "normal": lambda: jax.nn.log_sigmoid(x),
         "strong": lambda: -20.0 + jax.random.uniform(ks[3], (B, T, H))}[case.strength]()
    if case.neg_inf:  # ~3% of the entries, plus the first token and a chunk edge of row 0, head 0
      hit = jax.random.bernoulli(ks[8], 0.03, (B, T, H))
      hit = hit.at[0, 0, 0].set(True).at[0, min(64, T - 1), 0].set(True)
      g = jnp.where(hit, -jnp.inf, g)
  elif case.gate == "constant":
    if case.strength == "strong":
      g_gamma = -20.0 + jax.random.uniform(ks[3], (H,))
    else:
      g_gamma = retnet_gamma(H)
    if case.neg_inf:
      g_gamma = g_gamma.at[H - 1].set(-jnp.inf)
  elif case.gate != "none":
    raise ValueError(f"unknown gate kind {case.gate!r}")
  h0 = jax.random.normal(ks[4], (B, H, K, V)) if case.h0 else None
  seg = None
  if case.seg:
    starts = jax.random.bernoulli(ks[5], min(0.5, 6.0 / T), (B, T))
    seg = (jnp.cumsum(starts, axis=1) % 3).astype(jnp.int32)
  do = jax.random.normal(ks[6], (B, T, H, V)).astype(dt)
  dht = jax.random.normal(ks[7], (B, H, K, V))
  return Inputs(q, k, v, g, g_gamma, h0, seg, do, dht)


def outputs_and_grads(fn, inputs: Inputs, **kw) -> Outputs:
  """o, final state and every gradient of `fn` under jax.vjp with the inputs' random cotangents.

  fn: `fn(q, k, v, g, *, g_gamma, initial_state, output_final_state, segment_ids, **kw)` — any form of
  the op (chunk_simple_gla with impl=, chunk_simple_gla_jnp, the naive forms, a kernel's entry point).
  """
  x = inputs

  def f(q, k, v, g, h0):
    return fn(q, k, v, g, g_gamma=x.g_gamma, initial_state=h0, output_final_state=True,
              segment_ids=x.seg, **kw)

  (o, ht), vjp = jax.vjp(f, x.q, x.k, x.v, x.g, x.h0)
  dq, dk, dv, dg, dh0 = vjp((x.do.astype(o.dtype), x.dht))
  return Outputs(o, ht, dq, dk, dv, dg, dh0)


def upcast(inputs: Inputs) -> Inputs:
  """Every floating input in float32 (bf16 → f32 is exact)."""
  up = lambda a: a.astype(jnp.float32) if a is not None and jnp.issubdtype(a.dtype, jnp.floating) else a
  return Inputs(*(up(a) for a in inputs))


@functools.lru_cache(maxsize=64)
def reference(case: Case, seed: int = 0) -> Outputs:
  """The spec (`naive_recurrent_simple_gla`, float32) on the case's inputs, as numpy arrays."""
  run = jax.jit(functools.partial(outputs_and_grads, naive_recurrent_simple_gla))
  out = run(upcast(make_inputs(case, seed)))
  return Outputs(*(None if a is None else np.asarray(a) for a in out))


def tolerance(dtype) -> float | dict[str, float]:
  """The relative bound for inputs of `dtype`: 1e-5 for float32, BF16_TOL otherwise."""
  return F32_TOL if jnp.dtype(dtype) == jnp.float32 else BF16_TOL


def rel_err(x, ref) -> float:
  """‖x − ref‖ / ‖ref‖ in float64 (a NaN anywhere gives NaN, which fails every bound)."""
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm((x - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-30))


def assert_close(got: Outputs, ref: Outputs, tol: float | dict[str, float] = F32_TOL, skip=()):
  """Every output and gradient finite and within its relative bound; the message lists all errors.
  A gradient that the reference has and `got` lacks (or the other way round) fails."""
  errs, bad = {}, {}
  for name, a, b in zip(NAMES, got, ref):
    if name in skip:
      continue
    if (a is None) != (b is None):
      bad[name] = f"{'missing' if a is None else 'unexpected'}"
      continue
    if b is None:
      continue
    a = np.asarray(jnp.asarray(a, jnp.float32))
    if not np.isfinite(a).all():
      bad[name] = f"{int((~np.isfinite(a)).sum())} non-finite entries"
      continue
    errs[name] = rel_err(a, b)
    bound = tol[name] if isinstance(tol, dict) else tol
    if not errs[name] <= bound:
      bad[name] = errs[name]
  assert not bad, f"over bound or broken: {bad}; all: {errs}"
  return errs
