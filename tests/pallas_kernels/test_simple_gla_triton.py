"""The Pallas Triton simple-GLA kernels against the specification (interpret mode on CPU).

Outputs, final state and every gradient (dq, dk, dv, dg, dh0) for each gate kind (per-token scalar g,
constant g_gamma, none) on small shapes: T ∈ {1, 63, 64, 130}, K ≠ V (and padded K, V, 192 among them:
tiles that must not be 128 wide), packed documents whose ids repeat later, initial states, f32 and bf16,
strong decay (≈ −20 per token) and −inf entries,
the two-phase scan state passes and the sequence-parallel forward (forced through BlockSizes); input
errors. The reference is GLA's float32 `naive_recurrent_gla` with g broadcast over K (and simple GLA's
own naive spec where it exists).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from pallas_kernels.common.checks import check_simple_gla_inputs
from pallas_kernels.common.triton.tiles import padded_dim
from pallas_kernels.gla import naive_recurrent_gla
from pallas_kernels.simple_gla.triton import check_call, chunk_simple_gla_triton
from pallas_kernels.simple_gla.triton.common import BlockSizes
from tests.pallas_kernels.gla_testing import assert_all_close, rel_err

F32_TOL = {"o": 1e-5, "final_state": 1e-5, "dq": 1e-5, "dk": 1e-5, "dv": 1e-5, "dg": 1e-4,
           "dh0": 1e-5}  # dg: exponent differences of chunk cumsums (|G| up to 1280 at g ≈ −20)
BF16_TOL = {"o": 1e-2, "final_state": 1e-2, "dq": 2e-2, "dk": 2e-2, "dv": 2e-2, "dg": 3e-2,
            "dh0": 1e-2}
TOL = {"float32": F32_TOL, "bfloat16": BF16_TOL}


@dataclasses.dataclass(frozen=True)
class Case:
  T: int
  K: int = 16
  V: int = 16
  gate: str = "scalar"  # "scalar" (g [B, T, H]), "constant" (g_gamma [H]) or "none"
  decay: str = "normal"  # scalar g: "normal" = logsigmoid(x) or "strong" ≈ −20, "…_neg_inf": with −inf
  h0: bool = True
  seg: bool = False
  dtype: str = "float32"
  B: int = 1
  H: int = 2


def make_inputs(case: Case, seed: int = 0):
  """q, k, v, g (or None), g_gamma (or None), h0, segment_ids, do, dht."""
  ks = jax.random.split(jax.random.key(seed), 9)
  B, T, H, K, V = case.B, case.T, case.H, case.K, case.V
  dt = jnp.dtype(case.dtype)
  q = jax.random.normal(ks[0], (B, T, H, K)).astype(dt)
  k = jax.random.normal(ks[1], (B, T, H, K)).astype(dt)
  v = jax.random.normal(ks[2], (B, T, H, V)).astype(dt)
  g = g_gamma = None
  if case.gate == "scalar":
    x = jax.random.normal(ks[3], (B, T, H))
    strong = case.decay.startswith("strong")
    g = -20.0 + jax.random.uniform(ks[3], (B, T, H)) if strong else jax.nn.log_sigmoid(x)
    if case.decay.endswith("neg_inf"):  # a few −inf entries (a legal gate: the state is forgotten there)
      g = jnp.where(jax.random.bernoulli(ks[8], 0.05, (B, T, H)), -jnp.inf, g)
  elif case.gate == "constant":  # RetNet's per-head decays log(1 − 2^(−5−h))
    g_gamma = jnp.log(1 - 2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32)))
  h0 = jax.random.normal(ks[4], (B, H, K, V)) if case.h0 else None
  seg = None
  if case.seg:  # documents of random length; ids repeat later on purpose (a change is a new document)
    starts = jax.random.bernoulli(ks[5], min(0.5, 6.0 / T), (B, T))
    seg = (jnp.cumsum(starts, axis=1) % 3).astype(jnp.int32)
  do = jax.random.normal(ks[6], (B, T, H, V)).astype(dt)
  dht = jax.random.normal(ks[7], (B, H, K, V))
  return q, k, v, g, g_gamma, h0, seg, do, dht


def outputs_and_grads(fn, q, k, v, g, g_gamma, h0, seg, do, dht):
  """(o, final_state, dq, dk, dv, dg, dh0) of `fn` under jax.vjp with the cotangents (do, dht);
  dg is None without a per-token gate."""
  def f(q, k, v, g, h0):
    return fn(q, k, v, g, g_gamma=g_gamma, initial_state=h0, output_final_state=True,
              segment_ids=seg)
  (o, ht), vjp = jax.vjp(f, q, k, v, g, h0)
  return (o, ht, *vjp((do.astype(o.dtype), dht)))


def gla_oracle(q, k, v, g=None, *, g_gamma=None, **kw):
  """Simple GLA as GLA's float32 spec with the scalar decay broadcast over K."""
  B, T, H, K = q.shape
  if g_gamma is not None:
    g = jnp.broadcast_to(g_gamma, (B, T, H))
  gk = jnp.zeros(q.shape, jnp.float32) if g is None else jnp.broadcast_to(g[..., None], q.shape)
  return naive_recurrent_gla(q, k, v, gk, **kw)


@functools.lru_cache(maxsize=32)
def reference(case: Case, oracle=gla_oracle):
  up = lambda x: None if x is None else x.astype(jnp.float32)
  q, k, v, g, gg, h0, seg, do, dht = make_inputs(case)
  run = jax.jit(functools.partial(outputs_and_grads, oracle))
  return tuple(None if x is None else np.asarray(x)
               for x in run(up(q), up(k), up(v), g, gg, h0, seg, up(do), dht))


def _blocks(case, **overrides):
  if not overrides:
    return None
  base = BlockSizes.get_default(case.B, case.H, padded_dim(case.K), padded_dim(case.V), case.T)
  return dataclasses.replace(base, **overrides)


SCAN = dict(state_scan=True, fwd_parallel=True)  # the two-phase scans and the parallel forward
CASES = [
    ("scalar_odd_T_seg", Case(T=130, K=32, V=48, seg=True), {}),
    ("scalar_bf16_T63_v128", Case(T=63, K=16, V=128, dtype="bfloat16"), {}),
    ("scalar_T1", Case(T=1, K=16, V=32, B=2), {}),
    ("scalar_neg_inf_seg_scan", Case(T=100, K=16, V=32, decay="neg_inf", seg=True), SCAN),
    ("scalar_strong_neg_inf", Case(T=64, K=32, V=16, decay="strong_neg_inf"), {}),
    ("constant_odd_T_seg_k_tiles", Case(T=70, K=128, V=16, gate="constant", seg=True),
     dict(fwd_bk=64, grads_bk=64)),
    ("constant_bf16_scan", Case(T=70, K=32, V=48, gate="constant", dtype="bfloat16"), SCAN),
    ("none_T64_seg", Case(T=64, K=16, V=32, gate="none", seg=True), {}),
    # K or V padded to 192 (not a multiple of the 128-wide default tiles; Based's K = 153): once
    # skipped the last 64 columns (non-finite dq, dk; wrong dv; wrong o at V = 128)
    ("none_k160", Case(T=40, K=160, V=16, gate="none", h0=False, H=1), {}),
    ("none_k153_v128", Case(T=40, K=153, V=128, gate="none", H=1), {}),
    ("scalar_k153_seg", Case(T=70, K=153, V=16, seg=True, H=1), {}),
    ("scalar_k160_v160", Case(T=40, K=160, V=160, h0=False, H=1), {}),
]


class InterpretTest(parameterized.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_matches_spec(self, case, overrides):
    fn = functools.partial(chunk_simple_gla_triton, interpret=True,
                           block_sizes=_blocks(case, **overrides))
    got = jax.jit(functools.partial(outputs_and_grads, fn))(*make_inputs(case))
    assert got[0].dtype == jnp.dtype(case.dtype) and got[1].dtype == jnp.float32
    assert all(x.dtype == jnp.dtype(case.dtype) for x in got[2:5])
    ref = reference(case)
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in got if x is not None)
    if case.gate == "scalar":
      assert got[5].dtype == jnp.float32
    if case.decay.endswith("neg_inf"):  # no gradient reaches a −inf gate
      g = make_inputs(case)[3]
      np.testing.assert_array_equal(np.asarray(got[5])[np.isneginf(np.asarray(g))], 0.0)
    assert_all_close(got, ref, TOL[case.dtype], skip=() if case.gate == "scalar" else ("dg",))

    if case == CASES[0][1]:  # also against simple GLA's own spec, once it exists
      try:
        from pallas_kernels.simple_gla.naive import naive_recurrent_simple_gla
      except ImportError:
        return
      assert_all_close(got, reference(case, naive_recurrent_simple_gla), F32_TOL)


class InputTest(parameterized.TestCase):

  def test_both_gates_is_an_error(self):
    q = jnp.zeros((1, 8, 2, 16))
    with pytest.raises(ValueError, match="at most one of g"):
      chunk_simple_gla_triton(q, q, q, jnp.zeros((1, 8, 2)), g_gamma=jnp.zeros((2,)), interpret=True)

  def test_bad_gate_shapes(self):
    q = jnp.zeros((1, 8, 2, 16))
    with pytest.raises(ValueError, match="g must have shape"):
      chunk_simple_gla_triton(q, q, q, jnp.zeros((1, 8, 2, 16)), interpret=True)
    with pytest.raises(ValueError, match="g_gamma must have shape"):
      chunk_simple_gla_triton(q, q, q, g_gamma=jnp.zeros((3,)), interpret=True)

  def test_refuses_head_dims_over_512(self):
    q = jnp.zeros((1, 8, 1, 640))
    info = check_simple_gla_inputs(q, q, jnp.zeros((1, 8, 1, 16)))
    assert "K and V must be at most 512" in check_call(info)
    with pytest.raises(ValueError, match="at most 512"):
      chunk_simple_gla_triton(q, q, jnp.zeros((1, 8, 1, 16)), interpret=True)


def test_default_tiles_divide_padded_dims():  # the kernels run dim // tile tiles
  for K in range(1, 513, 7):
    for V in (16, 100, 128, 160, 192, 320, 448, 512):
      Kp, Vp = padded_dim(K), padded_dim(V)
      for BH, T in ((1, 64), (256, 64), (2, 8192)):
        b = BlockSizes.get_default(BH, 1, Kp, Vp, T)
        for f in dataclasses.fields(b):
          if f.name.endswith(("_bk", "_bv")):
            assert (Kp if f.name.endswith("_bk") else Vp) % getattr(b, f.name) == 0, (K, V, f.name)


def test_tile_that_does_not_divide_is_an_error():
  q = jnp.zeros((1, 8, 1, 160))
  blocks = dataclasses.replace(BlockSizes.get_default(1, 1, 192, 16, 64), grads_bk=128)
  with pytest.raises(ValueError, match="grads_bk=128 must divide the padded K=192"):
    chunk_simple_gla_triton(q, q, jnp.zeros((1, 8, 1, 16)), interpret=True, block_sizes=blocks)


def test_rel_err_helper_sees_nan():  # the bounds above fail on NaN (rel_err propagates it)
  assert np.isnan(rel_err(np.array([np.nan]), np.array([1.0])))


if __name__ == "__main__":
  from absl.testing import absltest
  absltest.main()


@pytest.mark.parametrize("gate,scan", [("scalar", False), ("constant", True)])
def test_sequence_parallel_forward_keeps_its_states_for_the_backward(gate, scan):
  """keep_states (default): the sequence-parallel forward's per-chunk states are the backward's
  residuals — one state pass fewer than keep_states=False, the same gradients, both the spec's."""
  case = Case(T=130, K=32, V=16, gate=gate, seg=True)
  inputs = make_inputs(case)
  blocks = _blocks(case, fwd_parallel=True, state_scan=scan)
  run = lambda keep: functools.partial(outputs_and_grads, functools.partial(
      chunk_simple_gla_triton, interpret=True, block_sizes=blocks, keep_states=keep), *inputs)
  name = "simple_gla_chunk_summaries_k" if scan else "simple_gla_chunk_state_pass"
  count = lambda keep: str(jax.make_jaxpr(run(keep))()).count(name)
  # the forward's pass alone, or with the backward's recompute (a jaxpr names a kernel 1-3 times per call)
  assert count(True) > 0 and count(False) == 2 * count(True)
  kept, recomputed = jax.jit(run(True))(), jax.jit(run(False))()
  for a, b in zip(kept, recomputed):
    if b is not None:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  assert_all_close(kept, reference(case), F32_TOL, skip=() if gate == "scalar" else ("dg",))


def test_keep_states_must_be_a_bool():
  q = jnp.zeros((1, 8, 1, 16))
  with pytest.raises(ValueError, match="keep_states must be True or False"):
    chunk_simple_gla_triton(q, q, q, interpret=True, keep_states=1)
