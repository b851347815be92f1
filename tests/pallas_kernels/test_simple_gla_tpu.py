"""The simple-GLA Pallas Mosaic TPU kernels (impl="tpu") in Pallas' TPU interpreter on CPU, against the
float32 specification: outputs, final state and every gradient (dq, dk, dv, dg, dh0) for the three gate
kinds (per-token scalar g, constant g_gamma, none) over odd lengths, K ≠ V, strong decay and −inf gates,
packed documents with ids that repeat, initial states and bf16; input errors; the dispatch on a (mocked)
TPU; the kernels' lowering to Mosaic for the TPU platform.

The oracle is GLA's `naive_recurrent_gla` with the scalar gate broadcast over K (simple GLA is exactly
that; its dg is the K-sum of GLA's, which autodiff of the broadcast gives). Where
`pallas_kernels.simple_gla.naive` exists, one test also checks against its `naive_recurrent_simple_gla`.
The interpreter is slow: the fast cases are few and small; the wider matrix is marked slow.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.common.checks import check_gla_inputs, check_simple_gla_inputs
from pallas_kernels.gla import naive_recurrent_gla
from pallas_kernels.simple_gla.tpu import IMPLEMENTATION, chunk_simple_gla_tpu
from pallas_kernels.simple_gla.tpu import ops as tpu
from tests.pallas_kernels.gla_testing import assert_all_close

F32_TOL = 1e-5
BF16_TOL = {"o": 1e-2, "final_state": 1e-2, "dq": 2e-2, "dk": 2e-2, "dv": 2e-2, "dg": 3e-2,
            "dh0": 1e-2}


@dataclasses.dataclass(frozen=True)
class Case:
  T: int
  K: int = 16
  V: int = 24
  gate: str = "scalar"  # "scalar" (g [B, T, H]), "constant" (g_gamma [H]), "none"
  # scalar: "weak" logsigmoid/16, "normal" logsigmoid, "strong" ≈ −20, "inf" strong with −inf entries;
  # constant: "normal" RetNet's per-head decays, "strong" with one head −20 and one −inf
  decay: str = "normal"
  h0: bool = True
  seg: bool = False
  dtype: str = "float32"
  B: int = 2
  H: int = 2

  @property
  def id(self):
    return (f"{self.gate}_{self.decay}_T{self.T}_K{self.K}_V{self.V}{'_h0' if self.h0 else ''}"
            f"{'_seg' if self.seg else ''}_{self.dtype}_B{self.B}H{self.H}")


def make_inputs(case: Case, seed: int = 0):
  """q, k, v, g [B, T, H] or None, g_gamma [H] or None, h0 or None, segment_ids or None, do, dht."""
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
         "strong": lambda: -20.0 + jax.random.uniform(ks[3], (B, T, H)),
         "inf": lambda: jnp.where(jax.random.bernoulli(ks[8], 0.1, (B, T, H)), -jnp.inf,
                                  -20.0 + jax.random.uniform(ks[3], (B, T, H)))}[case.decay]()
  elif case.gate == "constant":
    retnet = jnp.log(1 - 2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32)))  # RetNet's per-head decays
    g_gamma = retnet if case.decay == "normal" else retnet.at[0].set(-20.0).at[-1].set(-jnp.inf)
  h0 = jax.random.normal(ks[4], (B, H, K, V)) if case.h0 else None
  seg = None
  if case.seg:  # documents of random length; ids repeat later on purpose (a change is a new document)
    starts = jax.random.bernoulli(ks[5], min(0.5, 6.0 / T), (B, T))
    seg = (jnp.cumsum(starts, axis=1) % 3).astype(jnp.int32)
  do = jax.random.normal(ks[6], (B, T, H, V)).astype(dt)
  dht = jax.random.normal(ks[7], (B, H, K, V))
  return q, k, v, g, g_gamma, h0, seg, do, dht


def outputs_and_grads(fn, q, k, v, g, g_gamma, h0, seg, do, dht):
  """(o, final_state, dq, dk, dv, dg or None, dh0) of fn(q, k, v, g, g_gamma=, ...) under jax.vjp."""
  def f(q, k, v, g, h0):
    return fn(q, k, v, g, g_gamma=g_gamma, initial_state=h0, output_final_state=True, segment_ids=seg)
  (o, ht), vjp = jax.vjp(f, q, k, v, g, h0)
  return (o, ht, *vjp((do.astype(o.dtype), dht)))


def gla_broadcast_spec(q, k, v, g, *, g_gamma=None, initial_state=None, output_final_state=False,
                       segment_ids=None):
  """simple GLA = GLA with the scalar gate broadcast over K (the constant / no gate as such a g)."""
  B, T, H, K = q.shape
  if g is None:
    g = jnp.zeros((B, T, H)) if g_gamma is None else jnp.broadcast_to(g_gamma, (B, T, H))
  return naive_recurrent_gla(q, k, v, jnp.broadcast_to(g[..., None], q.shape),
                             initial_state=initial_state, output_final_state=output_final_state,
                             segment_ids=segment_ids)


@functools.lru_cache(maxsize=64)
def reference(case: Case, spec=gla_broadcast_spec):
  """The float32 spec on the case's inputs (bf16 inputs are upcast exactly), jitted."""
  q, k, v, g, g_gamma, h0, seg, do, dht = make_inputs(case)
  up = lambda x: None if x is None else x.astype(jnp.float32)
  run = jax.jit(functools.partial(outputs_and_grads, spec))
  return tuple(None if x is None else np.asarray(x)
               for x in run(up(q), up(k), up(v), g, g_gamma, h0, seg, up(do), dht))


def _run(case: Case, **kw):
  fn = functools.partial(chunk_simple_gla_tpu, interpret=True, **kw)
  return jax.jit(functools.partial(outputs_and_grads, fn))(*make_inputs(case))


def _check(case: Case, got, spec=gla_broadcast_spec):
  if case.dtype == "bfloat16":
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32  # the op contract
    assert all(x.dtype == jnp.bfloat16 for x in got[2:5])
  for x in got:
    assert x is None or not np.isnan(np.asarray(x, np.float32)).any()
  if case.gate != "scalar":
    assert got[5] is None  # no g: no dg
  return assert_all_close(got, reference(case, spec), BF16_TOL if case.dtype == "bfloat16" else F32_TOL)


# ------------------------------------------------------------------------------------------------
# fast: a few cases that together cover the contract
# ------------------------------------------------------------------------------------------------


def test_scalar_gate_odd_T_strong_decay_inf_documents_initial_state_race_checked():
  """Kind "scalar": 3 chunks (the last one padded), K ≠ V (both padded to 128 lanes), g ≈ −20 per token
  with −inf entries (dg is cancellation-free terms of size e^-20, no NaN), packed documents with ids
  that repeat, an initial state, two heads per grid step; race detector and NaN-filled memory on."""
  case = Case(T=130, K=32, V=48, gate="scalar", decay="inf", h0=True, seg=True, B=1)
  _check(case, _run(case, detect_races=True))


def test_constant_gate_several_heads_strong_and_inf_documents():
  """Kind "constant": four heads (RetNet's decays, one −20, one −inf) in two grid steps of two heads
  (each reads its own SMEM scalar), a padded last chunk whose real length ends the decay, documents."""
  case = Case(T=63, K=16, V=32, gate="constant", decay="strong", h0=True, seg=True, B=1, H=4)
  _check(case, _run(case, detect_races=False, chunk_size=32, heads_per_block=2))


def test_no_gate_documents_initial_state():
  case = Case(T=63, K=32, V=16, gate="none", h0=True, seg=True)
  _check(case, _run(case, detect_races=False))


def test_bfloat16_scalar_gate_documents_no_initial_state():
  """bf16 operands (MXU in bf16, float32 accumulation), the kernels without their optional initial state."""
  case = Case(T=63, K=16, V=16, gate="scalar", decay="normal", h0=False, seg=True, dtype="bfloat16")
  _check(case, _run(case, detect_races=False))


def test_single_token():
  """T = 1: one chunk of one real token (decode length)."""
  case = Case(T=1, gate="scalar", decay="normal", h0=True, seg=False)
  _check(case, _run(case, detect_races=False))


@pytest.mark.skipif(importlib.util.find_spec("pallas_kernels.simple_gla.naive") is None,
                    reason="pallas_kernels.simple_gla.naive not there yet")
def test_matches_the_simple_gla_spec():
  from pallas_kernels.simple_gla import naive
  case = Case(T=40, K=16, V=24, gate="scalar", decay="normal", h0=True, seg=True, B=1)
  _check(case, _run(case, detect_races=False), spec=naive.naive_recurrent_simple_gla)


# ------------------------------------------------------------------------------------------------
# dispatch, errors, lowering
# ------------------------------------------------------------------------------------------------


def test_implementation_is_tpu_only_and_refuses_what_it_cannot_serve():
  assert IMPLEMENTATION.name == "tpu" and IMPLEMENTATION.platforms == frozenset({"tpu"})
  q = jax.ShapeDtypeStruct((1, 64, 1, 640), jnp.bfloat16)
  assert "K, V ≤ 512" in IMPLEMENTATION.check(check_simple_gla_inputs(q, q, q))
  q = jax.ShapeDtypeStruct((1, 64, 1, 64), jnp.bfloat16)
  assert "gate kind 'vector'" in IMPLEMENTATION.check(check_gla_inputs(q, q, q, q))
  assert IMPLEMENTATION.check(check_simple_gla_inputs(q, q, q, chunk_size=512)) is not None
  assert IMPLEMENTATION.check(check_simple_gla_inputs(q, q, q)) is None


@pytest.mark.skipif(importlib.util.find_spec("pallas_kernels.simple_gla.ops") is None,
                    reason="pallas_kernels.simple_gla.ops not there yet")
def test_auto_on_tpu_stays_off_the_unqualified_kernels(monkeypatch):
  """impl="auto" on a (mocked) TPU platform does not pick the TPU kernels (never run on a TPU) for any
  gate kind; an explicit impl="tpu" selects this module's implementation and runs it (interpreted)."""
  from pallas_kernels.simple_gla import ops
  op = ops.CHUNK_SIMPLE_GLA
  monkeypatch.setattr(op, "platform", lambda: "tpu")
  q = jnp.zeros((1, 8, 2, 16))
  for kw in ({"g": jnp.zeros((1, 8, 2))}, {"g_gamma": jnp.full((2,), -0.1)}, {}):
    info = check_simple_gla_inputs(q, q, q, **kw)
    assert op.select(info, "auto").name != "tpu"
    assert op.select(info, "tpu") is IMPLEMENTATION
  calls = []

  def interpreted(info, *args, **kw):
    calls.append(1)
    return IMPLEMENTATION.fn(info, *args, interpret=True, detect_races=False, **kw)

  monkeypatch.setitem(op.registry, "tpu", dataclasses.replace(IMPLEMENTATION, fn=interpreted))
  case = Case(T=40, gate="scalar", h0=True, B=1, H=1)
  q, k, v, g, _, h0, _, _, _ = make_inputs(case)
  o, ht = ops.chunk_simple_gla(q, k, v, g, initial_state=h0, output_final_state=True, impl="tpu")
  o_ref, ht_ref = gla_broadcast_spec(q, k, v, g, initial_state=h0, output_final_state=True)
  assert calls, "impl='tpu' did not go through the TPU implementation"
  np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ht, ht_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw, message", [
    ({"g": jnp.zeros((1, 8, 2)), "g_gamma": jnp.zeros((2,))}, "at most one of g"),
    ({"g": jnp.zeros((1, 8, 2, 16))}, r"g must have shape \[B, T, H\]"),
    ({"g_gamma": jnp.zeros((3,))}, r"g_gamma must have shape \[H\]"),
    ({"heads_per_block": 3}, "heads_per_block must be a positive divisor of H=2"),
    ({"chunk_size": 40}, "chunk_size must be a positive multiple of 16"),
    ({"chunk_size": 512}, "chunk_size=512 > 256"),
])
def test_bad_inputs_raise(kw, message):
  q = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ValueError, match=message):
    chunk_simple_gla_tpu(q, q, q, interpret=True, **kw)


def test_too_wide_for_the_vmem_budget_raises():
  q = jnp.zeros((1, 8, 1, 640))
  with pytest.raises(ValueError, match="budget VMEM for K, V ≤ 512"):
    chunk_simple_gla_tpu(q, q, q, interpret=True)


@pytest.mark.parametrize("gate, dtype, seg", [("scalar", "bfloat16", True), ("constant", "float32", False),
                                              ("none", "bfloat16", True)])
def test_kernels_lower_to_mosaic_for_tpu(gate, dtype, seg):
  """Cross-platform lowering on CPU runs Pallas' Mosaic lowering of the three kernels (it rejects
  primitives Mosaic lacks, e.g. cumsum) at a layer shape, four heads per grid step."""
  case = Case(T=200, K=128, V=256, gate=gate, h0=True, seg=seg, dtype=dtype, B=1, H=4)
  f = jax.jit(functools.partial(outputs_and_grads, chunk_simple_gla_tpu))
  text = f.trace(*make_inputs(case)).lower(lowering_platforms=("tpu",)).as_text()
  assert text.count("tpu_custom_call") == 3  # forward, state pass, backward


def test_no_gradient_to_g_gamma():
  """g_gamma is a constant decay (fla gives it no gradient): its cotangent is zero, never NaN."""
  case = Case(T=16, gate="constant", decay="strong", B=1, H=4)
  q, k, v, _, g_gamma, h0, _, _, _ = make_inputs(case)
  f = lambda gg: jnp.sum(chunk_simple_gla_tpu(q, k, v, g_gamma=gg, interpret=True,
                                              detect_races=False)[0])
  np.testing.assert_array_equal(jax.grad(f)(g_gamma), np.zeros(4, np.float32))


def test_options_are_hashable_and_validated():
  assert hash(tpu.TpuOptions(scale=0.25, gate="none", seq_len=8)) == hash(
      tpu.TpuOptions(scale=0.25, gate="none", seq_len=8))
  with pytest.raises(ValueError, match="gate must be one of"):
    tpu.TpuOptions(scale=0.25, gate="vector", seq_len=8)


# ------------------------------------------------------------------------------------------------
# slow: the wider matrix
# ------------------------------------------------------------------------------------------------

SLOW_CASES = [
    *[Case(T=T, gate=gate, h0=True, seg=True) for T in (1, 15, 64, 257)
      for gate in ("scalar", "constant", "none")],
    Case(T=130, K=64, V=64, gate="scalar", decay="weak"),
    Case(T=130, K=128, V=64, gate="scalar", decay="strong", seg=True),
    Case(T=63, K=64, V=256, gate="constant", h0=False, seg=True, B=1, H=8),
    Case(T=64, K=256, V=512, gate="scalar", B=1, H=1, seg=True),
    Case(T=257, K=32, V=16, gate="scalar", decay="inf", seg=True, h0=False, B=1),
    Case(T=130, K=64, V=64, gate="scalar", decay="weak", seg=True, dtype="bfloat16"),
    Case(T=130, K=32, V=64, gate="constant", decay="strong", seg=True, dtype="bfloat16", H=4),
    Case(T=257, K=32, V=128, gate="none", h0=True, dtype="bfloat16", B=1),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=lambda c: c.id)
def test_matrix(case):
  _check(case, _run(case, detect_races=False))


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [16, 128])
@pytest.mark.parametrize("gate", ["scalar", "constant"])
def test_chunk_sizes(chunk_size, gate):
  case = Case(T=150, K=32, V=16, gate=gate, decay="strong", h0=True, seg=True)
  _check(case, _run(case, detect_races=False, chunk_size=chunk_size))


@pytest.mark.slow
def test_packed_documents_equal_separate_runs():
  """A packed batch gives what the spec gives on each document alone (a 1-token document, a boundary on
  a chunk edge, ids that repeat later, the initial state feeding only the first document)."""
  case = Case(T=90, K=16, V=16, gate="scalar", h0=True, B=1, H=2)
  q, k, v, g, _, h0, _, _, _ = make_inputs(case)
  bounds = [0, 20, 21, 64, 90]
  seg = jnp.concatenate([jnp.full((1, b - a), i % 2, jnp.int32)
                         for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))], axis=1)
  o, ht = chunk_simple_gla_tpu(q, k, v, g, initial_state=h0, output_final_state=True, segment_ids=seg,
                               interpret=True, detect_races=False)
  for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
    sl = lambda x: x[:, a:b]
    o_i, ht_i = gla_broadcast_spec(sl(q), sl(k), sl(v), sl(g), output_final_state=True,
                                   initial_state=h0 if i == 0 else None)
    np.testing.assert_allclose(o[:, a:b], o_i, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ht, ht_i, rtol=1e-5, atol=1e-5)
