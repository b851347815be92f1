"""The Mosaic GPU simple-GLA forward (impl "mosaic_gpu_interpret": Mosaic GPU interpret mode on CPU)
against the float32 spec (`naive_recurrent_simple_gla`).

Outputs, final state and every gradient (through the custom_vjp, whose backward runs the kernel three
more times; dg of the scalar gate from the strict dq and dk passes) for each gate kind (g, g_gamma, none), initial states, T not a multiple of 64, K ≠ V with K and V
padded to the 64-wide tiles (16, 48, 64, 96, 128) and a 128-wide V tile, packed documents, strong decay
(≈ −20 per token) with −inf entries, float32 (tight bounds: interpret mode multiplies float32 exactly)
and bf16 / fp16 (relative-RMS bounds); argument errors; dispatch (explicit-only). GPU-marked: the
compiled kernel (sm90) against "xla" at the benchmark shapes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.common.checks import check_simple_gla_inputs
from pallas_kernels.common.chunking import compensated_cumsum
from pallas_kernels.common.mosaic_gpu.layout import is_sm90
from pallas_kernels.simple_gla import ops
from pallas_kernels.simple_gla.mosaic_gpu import check_call, chunk_simple_gla_mosaic
from pallas_kernels.simple_gla.mosaic_gpu.ops import default_block_v, fwd_options
from tests.pallas_kernels.simple_gla_testing import (BF16_TOL, Case, assert_close, make_inputs,
                                                     outputs_and_grads, reference, rel_err)

F32_TOL = {"o": 1e-5, "final_state": 1e-5, "dq": 1e-5, "dk": 1e-5, "dv": 1e-5, "dg": 1e-4,
           "dh0": 1e-5}  # dg: the xla impl's bound (chunk-cumsum exponent differences)
TOL = {"float32": F32_TOL, "bfloat16": BF16_TOL, "float16": BF16_TOL}


def _run(case: Case, **kw):
  fn = functools.partial(ops.chunk_simple_gla, impl="mosaic_gpu_interpret", **kw)
  return jax.jit(functools.partial(outputs_and_grads, fn))(make_inputs(case))


CASES = [
    Case(T=130, K=16, V=16),  # three chunks, the last one partial; K, V padded 16 → 64
    Case(T=100, K=64, V=128, gate="constant"),
    Case(T=64, K=48, V=96, gate="none", h0=False),
    Case(T=70, K=32, V=32, strength="strong", neg_inf=True),  # ≈ −20 per token, −inf resets
    Case(T=130, K=16, V=32, seg=True),  # packed documents, ids that repeat
    Case(T=90, K=16, V=16, gate="constant", strength="strong", neg_inf=True, seg=True, B=1),
    Case(T=130, K=64, V=64, dtype="bfloat16"),
    Case(T=80, K=48, V=96, gate="constant", dtype="float16", B=1),
    Case(T=70, K=300, V=48, B=1, H=1),  # K > 256: the forward and dv in two parts (256 + 44)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_spec(case):
  assert_close(_run(case), reference(case), TOL[case.dtype])


def test_wide_v_tile_and_k_neq_v():
  """block_v=128 (the default tile is 64; K ≠ V with gradients: CASES' T=100, K=64, V=128)."""
  case = Case(T=70, K=64, V=128, B=1, H=1)
  inputs = make_inputs(case)
  o, ht = chunk_simple_gla_mosaic(inputs.q, inputs.k, inputs.v, inputs.g, initial_state=inputs.h0,
                                  output_final_state=True, interpret=True, block_v=128)
  ref = reference(case)
  assert rel_err(o, ref.o) < 1e-5 and rel_err(ht, ref.final_state) < 1e-5


def test_large_dims_forward():
  """K, V up to 512 in interpret mode (forward only; V tiled by 64)."""
  case = Case(T=64, K=512, V=80, B=1, H=1)
  x = make_inputs(case)
  o, ht = ops.chunk_simple_gla(x.q, x.k, x.v, x.g, initial_state=x.h0, output_final_state=True,
                               impl="mosaic_gpu_interpret")
  ref = reference(case)
  assert rel_err(o, ref.o) < 1e-5 and rel_err(ht, ref.final_state) < 1e-5


def test_no_final_state_and_default_scale():
  case = Case(T=20, K=16, V=16, h0=False, B=1, H=1)
  x = make_inputs(case)
  o, ht = ops.chunk_simple_gla(x.q, x.k, x.v, x.g, scale=0.5, impl="mosaic_gpu_interpret")
  assert ht is None
  o_ref, _ = ops.chunk_simple_gla(x.q, x.k, x.v, x.g, scale=0.5, impl="naive")
  assert rel_err(o, o_ref) < 1e-5


def test_gradients_without_final_state():
  x = make_inputs(Case(T=70, K=16, V=32, h0=False, B=1))
  grad = lambda impl: jax.jit(jax.grad(lambda q, k, v, g: ops.chunk_simple_gla(q, k, v, g, impl=impl)[0].sum(),
                                       argnums=(0, 1, 2, 3)))(x.q, x.k, x.v, x.g)
  for name, a, b in zip(("dq", "dk", "dv", "dg"), grad("mosaic_gpu_interpret"), grad("xla")):
    assert rel_err(a, b) < 1e-5, (name, rel_err(a, b))


def test_strong_decay_bf16_is_finite():
  case = Case(T=130, K=16, V=16, strength="strong", neg_inf=True, dtype="bfloat16")
  got = _run(case)
  assert all(np.isfinite(np.asarray(a, np.float32)).all() for a in got if a is not None)
  assert_close(got, reference(case), BF16_TOL)


@pytest.mark.parametrize("case", [Case(T=64, K=16, V=300, gate="none", B=1, H=1),  # V split in two parts
                                  Case(T=70, K=16, V=32, seg=True, B=1, H=1)],
                         ids=lambda c: c.id)
def test_gradients_match_xla(case):
  """The Mosaic backward (three more kernel passes; dg from the strict dq and dk passes) against the xla
  impl's vjp, to 1e-5 (test_matches_spec checks every case's gradients against the spec)."""
  got = _run(case)
  want = jax.jit(functools.partial(outputs_and_grads,
                                   functools.partial(ops.chunk_simple_gla, impl="xla")))(
      make_inputs(case))
  for name, a, b in zip(("dq", "dk", "dv", "dg", "dh0"), got[2:], want[2:]):
    if b is None:
      assert a is None, name
      continue
    assert rel_err(a, b) < 1e-5, (name, rel_err(a, b))


def test_gate_grad_bf16_does_not_drift_with_t():
  """dg of bf16 inputs at T = 1024 against the float32 spec (xla impl, float32 inputs, exact matmuls).
  dg sums q·dq' − k·dk' over all later tokens; without the strict passes' compensated state and decayed
  keys (kernel.py) the roundings each pass makes on its own state add up over T: 1.7e-2 relative L2 here
  (measured, interpret mode), compensated 2.1e-3, about the xla impl's own bf16 error."""
  B, T, H, K, V = 1, 1024, 1, 128, 128
  ks = jax.random.split(jax.random.key(0), 5)
  q, k = (jax.random.normal(x, (B, T, H, K), jnp.bfloat16) for x in ks[:2])
  v = jax.random.normal(ks[2], (B, T, H, V), jnp.bfloat16)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H))) / 16
  do = jax.random.normal(ks[4], (B, T, H, V), jnp.float32)

  def grads(impl, dtype):
    def loss(q, k, v, g):
      o, _ = ops.chunk_simple_gla(q.astype(dtype), k.astype(dtype), v.astype(dtype), g, impl=impl)
      return jnp.sum(o.astype(jnp.float32) * do)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, g)

  with jax.default_matmul_precision("highest"):
    want = grads("xla", jnp.float32)
  got = grads("mosaic_gpu_interpret", jnp.bfloat16)
  for name, a, b, bound in zip(("dq", "dk", "dv", "dg"), got, want, (5e-3, 5e-3, 5e-3, 4e-3)):
    assert rel_err(a.astype(jnp.float32), b) < bound, (name, rel_err(a.astype(jnp.float32), b))


def test_compensated_cumsum_keeps_differences_exact():
  """The gate rows' G = hi + lo: at −20 per token a chunk's float32 cumsum reaches −1280 and its adjacent
  differences are off by ~1e-4 (a 1e-4 relative error of every pair's weight); hi + lo's are not."""
  x = -(19.0 + np.random.default_rng(0).random((4, 64))).astype(np.float32)
  hi, lo = jax.jit(lambda x: compensated_cumsum(x, 1))(x)
  hi, lo = np.asarray(hi, np.float64), np.asarray(lo, np.float64)
  exact = np.cumsum(x.astype(np.float64), 1)
  assert np.abs(hi + lo - exact).max() < 1e-9
  diff = (hi[:, 1:] - hi[:, :-1]) + (lo[:, 1:] - lo[:, :-1])
  assert np.abs(diff - x[:, 1:]).max() < 1e-5 * 1e-1  # float32 precision of the ~20-sized differences
  plain = np.cumsum(x, 1)
  assert np.abs((plain[:, 1:] - plain[:, :-1]) - x[:, 1:]).max() > 1e-5  # what the plain cumsum loses


def test_backward_is_mosaic():
  """The backward of the "constant" gate runs no XLA chunk pass: its jaxpr has the kernel four times
  (forward, dq, dv, dk) and no einsum of the xla impl's chunked layout."""
  x = make_inputs(Case(T=64, K=16, V=16, gate="constant", B=1, H=1))
  f = lambda q, k, v: ops.chunk_simple_gla(q, k, v, g_gamma=x.g_gamma, impl="mosaic_gpu_interpret")[0].sum()
  count = lambda fn: str(jax.make_jaxpr(fn)(x.q, x.k, x.v)).count("simple_gla_mosaic_fwd")
  once = count(f)
  assert once > 0 and count(jax.grad(f, argnums=(0, 1, 2))) == 4 * once
  assert "dot_general" not in str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(x.q, x.k, x.v))


# ------------------------------------------------------------------------------------------------
# arguments and dispatch
# ------------------------------------------------------------------------------------------------


def _info(B=1, T=8, H=1, K=16, V=16, dtype=jnp.bfloat16, **kw):
  q = jnp.zeros((B, T, H, K), dtype)
  return check_simple_gla_inputs(q, q, jnp.zeros((B, T, H, V), dtype), **kw)


def test_errors():
  q = jnp.zeros((1, 8, 1, 16))
  with pytest.raises(ValueError, match="K and V must be at most 512"):
    chunk_simple_gla_mosaic(jnp.zeros((1, 8, 1, 520)), jnp.zeros((1, 8, 1, 520)), q, interpret=True)
  with pytest.raises(ValueError, match="block_v must be 64 or 128"):
    chunk_simple_gla_mosaic(q, q, q, interpret=True, block_v=32)
  with pytest.raises(ValueError, match="g must have shape"):
    chunk_simple_gla_mosaic(q, q, q, jnp.zeros((1, 8, 1, 16)), interpret=True)
  with pytest.raises(ValueError, match="bfloat16 or float16"):
    chunk_simple_gla_mosaic(q, q, q)  # compiled: float32 is not a wgmma operand dtype here
  with pytest.raises(ValueError, match="runs on \\['gpu'\\], not on cpu"):
    ops.chunk_simple_gla(q, q, q, impl="mosaic_gpu")


def test_check_call():
  assert check_call(_info()) is None
  assert check_call(_info(K=256, V=512)) is None  # fits the SMEM at BV = 64
  assert check_call(_info(K=512, V=512)) is None  # K > 256: launches of K ≤ 256 summed
  assert "shared memory" in check_call(_info(K=256, V=256), block_v=128)
  assert check_call(_info(K=512, V=512), interpret=True) is None
  assert "bfloat16 or float16" in check_call(_info(dtype=jnp.float32))


def test_tiles():
  assert default_block_v(_info(B=16, H=16, K=128, V=128)) == 128  # ≥ 132 programs at BV = 128
  assert default_block_v(_info(B=8, H=16, K=128, V=128)) == 64
  assert default_block_v(_info(B=8, H=4, K=256, V=512)) == 64
  opts = fwd_options(_info(T=130, K=48, V=96), 1.0, 64, True, True)
  assert (opts.T, opts.K, opts.V) == (192, 64, 128)
  assert opts.buffers == 2  # the next chunk's tiles prefetched ...
  assert fwd_options(_info(K=512, V=80), 1.0, 64, True, True).buffers == 1  # ... unless SMEM is short


def test_auto_takes_mosaic_only_where_measured(monkeypatch):
  """GPU auto order: mosaic_gpu first, passed over unless (sm90 and) its measured table lists the call's
  (gate, dtype, K, V); the interpreted form never; CPU auto stays xla."""
  from pallas_kernels.simple_gla.mosaic_gpu import ops as mops
  for order in ops.CHUNK_SIMPLE_GLA.auto_order.values():
    assert "mosaic_gpu_interpret" not in order
  assert ops.CHUNK_SIMPLE_GLA.auto_order["gpu"][:3] == ("mosaic_gpu_fwd", "mosaic_gpu", "triton")
  assert {"mosaic_gpu", "mosaic_gpu_interpret"} <= set(ops.available_impls())
  info = _info(B=2, T=256, H=2, K=128, V=128, g=jnp.zeros((2, 256, 2)))
  pick = lambda: ops.CHUNK_SIMPLE_GLA.select(info, "auto", platform="gpu").name
  monkeypatch.setattr(mops, "is_sm90", lambda: True)
  monkeypatch.setattr(mops, "MEASURED_FASTER", {})
  assert pick() == "triton"
  assert "not measured faster" in mops.auto_check(info)
  monkeypatch.setattr(mops, "MEASURED_FASTER", {("scalar", "bfloat16", 128, 128): "test"})
  assert pick() == "mosaic_gpu"
  assert mops.auto_check(_info(B=2, T=256, H=2, K=64, V=128, g=jnp.zeros((2, 256, 2)))) is not None
  monkeypatch.setattr(mops, "is_sm90", lambda: False)  # pre-Hopper: never
  assert pick() == "triton"
  # an explicit impl ignores the table (it is only auto's preference)
  monkeypatch.setattr(mops, "MEASURED_FASTER", {})
  assert ops.CHUNK_SIMPLE_GLA.select(info, "mosaic_gpu", platform="gpu").name == "mosaic_gpu"
  assert ops.CHUNK_SIMPLE_GLA.select(info, "auto", platform="cpu").name == "xla"


# ------------------------------------------------------------------------------------------------
# "mosaic_gpu_fwd": the Mosaic forward with the Triton backward (fwd_triton_bwd.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [Case(T=130, K=16, V=32, seg=True, B=1),
                                  Case(T=100, K=48, V=96, gate="constant", B=1),
                                  Case(T=70, K=32, V=32, strength="strong", neg_inf=True),
                                  Case(T=64, K=48, V=16, gate="none", h0=False, B=1, H=1),
                                  Case(T=80, K=300, V=48, dtype="bfloat16", B=1, H=1)],
                         ids=lambda c: c.id)
def test_mosaic_forward_triton_backward_matches_spec(case):
  """Output and final state from the Mosaic forward, every gradient from the Triton backward (both in
  interpret mode), against the float32 spec: each gate kind, T not a multiple of 64, K ≠ V padded,
  packed documents, strong decay with −inf, K > 256 in two forward launches, bf16."""
  fn = functools.partial(ops.chunk_simple_gla, impl="mosaic_gpu_fwd_interpret")
  got = jax.jit(functools.partial(outputs_and_grads, fn))(make_inputs(case))
  assert_close(got, reference(case), TOL[case.dtype])


def test_mosaic_forward_triton_backward_without_final_state():
  """No final state requested (no dht reaches the Triton backward) and −inf gates (floored, gradient 0
  there): the gradients of Σ o ⊙ do against the xla impl's."""
  x = make_inputs(Case(T=70, K=16, V=32, B=1))
  g = x.g.at[:, 10].set(-jnp.inf)

  def grads(impl):
    loss = lambda q, k, v, g, h0: jnp.sum(ops.chunk_simple_gla(q, k, v, g, initial_state=h0, impl=impl)[0]
                                          * x.do)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(x.q, x.k, x.v, g, x.h0)

  got = grads("mosaic_gpu_fwd_interpret")
  for name, a, b in zip(("dq", "dk", "dv", "dg", "dh0"), got, grads("xla")):
    assert np.isfinite(np.asarray(a)).all(), name
    assert rel_err(a, b) < 1e-4, (name, rel_err(a, b))
  np.testing.assert_array_equal(np.asarray(got[3][:, 10]), 0.0)


def test_auto_takes_the_pair_only_where_measured(monkeypatch):
  """The pair is first in the GPU order, taken only on sm90 at its table's (gate, dtype, K, V) and B·H."""
  from pallas_kernels.simple_gla.mosaic_gpu import fwd_triton_bwd as pair
  g = lambda B, H: jnp.zeros((B, 64, H))
  pick = lambda info: ops.CHUNK_SIMPLE_GLA.select(info, "auto", platform="gpu").name
  info = _info(B=8, T=64, H=16, K=128, V=128, g=g(8, 16))
  monkeypatch.setattr(pair, "MEASURED_FASTER", {("scalar", "bfloat16", 128, 128): (64, "test")})
  assert pick(info) == "triton"  # not an sm90 GPU here
  monkeypatch.setattr(pair, "is_sm90", lambda: True)
  assert pick(info) == "mosaic_gpu_fwd"
  assert pick(_info(B=8, T=64, H=16, K=100, V=120, g=g(8, 16))) == "mosaic_gpu_fwd"  # padded to 128
  assert pick(_info(B=2, T=64, H=16, K=128, V=128, g=g(2, 16))) == "triton"  # B·H 32 < 64 measured
  assert "measured at B·H ≥ 64" in pair.auto_check(_info(B=2, T=64, H=16, K=128, V=128, g=g(2, 16)))
  assert pick(_info(B=8, T=64, H=16, K=128, V=128, g_gamma=jnp.zeros(16))) == "triton"  # other gate
  assert pick(_info(B=8, T=64, H=16, K=128, V=128, dtype=jnp.float16, g=g(8, 16))) == "triton"
  assert pick(_info(B=8, T=64, H=16, K=128, V=128, dtype=jnp.float32, g=g(8, 16))) == "triton"
  assert "not measured faster" in pair.auto_check(_info(B=8, T=64, H=16, K=64, V=64, g=g(8, 16)))


def test_auto_takes_the_pair_at_its_recorded_shapes(monkeypatch):
  """The recorded table (H200, 2026-12-04): K = V = 64 from B·H 128 with either gate; K = V = 128 not."""
  from pallas_kernels.simple_gla.mosaic_gpu import fwd_triton_bwd as pair
  monkeypatch.setattr(pair, "is_sm90", lambda: True)
  pick = lambda info: ops.CHUNK_SIMPLE_GLA.select(info, "auto", platform="gpu").name
  g = lambda B, H: jnp.zeros((B, 64, H))
  assert pick(_info(B=4, T=64, H=32, K=64, V=64, g=g(4, 32))) == "mosaic_gpu_fwd"
  assert pick(_info(B=4, T=64, H=32, K=64, V=64, g_gamma=jnp.zeros(32))) == "mosaic_gpu_fwd"
  assert pick(_info(B=4, T=64, H=32, K=48, V=64, g=g(4, 32))) == "mosaic_gpu_fwd"  # K padded to 64
  assert pick(_info(B=2, T=64, H=32, K=64, V=64, g=g(2, 32))) == "triton"  # B·H 64 < 128
  assert pick(_info(B=4, T=64, H=32, K=64, V=64, g=g(4, 32), dtype=jnp.float16)) == "triton"
  assert pick(_info(B=8, T=64, H=16, K=128, V=128, g=g(8, 16))) == "triton"  # 1.03x: under the margin
  assert pick(_info(B=4, T=64, H=32, K=64, V=64)) == "triton"  # gate "none": not measured


def test_pair_table_is_well_formed():
  """Every recorded entry: a gate kind, a compiled dtype, K and V padded to 64 and at most 512, a B·H
  and the run it comes from."""
  from pallas_kernels.simple_gla.mosaic_gpu import fwd_triton_bwd as pair
  for (gate, dtype, K, V), (min_bh, run) in pair.MEASURED_FASTER.items():
    assert gate in ("scalar", "constant", "none") and dtype in ("bfloat16", "float16")
    assert K % 64 == 0 and V % 64 == 0 and K <= 512 and V <= 512
    assert min_bh >= 1 and "H200" in run


# ------------------------------------------------------------------------------------------------
# the compiled kernel (an sm90 GPU)
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(8, 2048, 16, 128, 128), (8, 2048, 4, 256, 512), (2, 300, 2, 48, 96)])
@pytest.mark.parametrize("gate", ["scalar", "constant"])
def test_compiled_matches_xla(shape, gate):
  if not is_sm90():
    pytest.skip("needs an sm90 (Hopper) GPU")
  B, T, H, K, V = shape
  ks = jax.random.split(jax.random.key(0), 5)
  q, k = (jax.random.normal(kk, (B, T, H, K), jnp.bfloat16) for kk in ks[:2])
  v = jax.random.normal(ks[2], (B, T, H, V), jnp.bfloat16)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H))) / 16 if gate == "scalar" else None
  g_gamma = jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(H)))) if gate == "constant" else None
  h0 = jax.random.normal(ks[4], (B, H, K, V))
  run = lambda impl: jax.jit(functools.partial(ops.chunk_simple_gla, impl=impl, g_gamma=g_gamma,
                                               initial_state=h0, output_final_state=True))(q, k, v, g)
  (o, ht), (o_ref, ht_ref) = run("mosaic_gpu"), run("xla")
  assert rel_err(o, o_ref) < 1e-2 and rel_err(ht, ht_ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("shape,gate", [((4, 2048, 8, 128, 128), "constant"), ((2, 1024, 4, 256, 512), "none"),
                                        ((2, 2048, 8, 128, 128), "scalar"),
                                        ((2, 300, 2, 48, 96), "scalar"), ((1, 777, 3, 96, 160), "constant")])
def test_compiled_gradients_match_xla(shape, gate):
  """The compiled backward (dq, dv, dk passes of the kernel; V 512 split in two) vs the xla impl's vjp,
  with h0, the final state's cotangent and packed documents."""
  if not is_sm90():
    pytest.skip("needs an sm90 (Hopper) GPU")
  B, T, H, K, V = shape
  ks = jax.random.split(jax.random.key(1), 7)
  q, k = (jax.random.normal(kk, (B, T, H, K), jnp.bfloat16) for kk in ks[:2])
  v, do = (jax.random.normal(kk, (B, T, H, V), jnp.bfloat16) for kk in ks[2:4])
  g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, T, H))) / 16 if gate == "scalar" else None
  g_gamma = jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(H)))) if gate == "constant" else None
  h0, dht = (jax.random.normal(kk, (B, H, K, V)) for kk in ks[5:7])
  seg = jnp.broadcast_to((jnp.arange(T) >= T // 3).astype(jnp.int32) + (jnp.arange(T) >= T // 2), (B, T))

  def grads(impl):
    def f(q, k, v, h0, g):
      return ops.chunk_simple_gla(q, k, v, g, g_gamma=g_gamma, initial_state=h0, output_final_state=True,
                                  segment_ids=seg, impl=impl)
    _, vjp = jax.vjp(f, q, k, v, h0, g)
    return [x for x in jax.jit(lambda: vjp((do, dht)))() if x is not None]

  names = ("dq", "dk", "dv", "dh0", "dg")
  for name, a, b in zip(names, grads("mosaic_gpu"), grads("xla")):
    assert np.isfinite(np.asarray(a, np.float32)).all(), name
    assert rel_err(a, b) < 2e-2, (name, rel_err(a, b))


@pytest.mark.gpu
@pytest.mark.parametrize("shape,gate", [((4, 2048, 8, 128, 128), "scalar"), ((2, 1000, 4, 256, 512), "constant")])
def test_compiled_mosaic_forward_triton_backward(shape, gate):
  """impl="mosaic_gpu_fwd" compiled: output, state and every gradient vs "xla", with h0, packed documents
  and the final state's cotangent."""
  if not is_sm90():
    pytest.skip("needs an sm90 (Hopper) GPU")
  B, T, H, K, V = shape
  ks = jax.random.split(jax.random.key(2), 5)
  q, k = (jax.random.normal(kk, (B, T, H, K), jnp.bfloat16) for kk in ks[:2])
  v = jax.random.normal(ks[2], (B, T, H, V), jnp.bfloat16)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H))) / 16 if gate == "scalar" else None
  g_gamma = jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(H)))) if gate == "constant" else None
  h0 = jax.random.normal(ks[4], (B, H, K, V))
  do = jax.random.normal(jax.random.key(7), v.shape, v.dtype)
  seg = jnp.broadcast_to((jnp.arange(T) >= T // 3).astype(jnp.int32), (B, T))

  def run(impl):
    def loss(q, k, v, h, g):
      o, ht = ops.chunk_simple_gla(q, k, v, g, g_gamma=g_gamma, impl=impl, initial_state=h,
                                   output_final_state=True, segment_ids=seg)
      return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(ht), (o, ht)
    argnums = (0, 1, 2, 3, 4) if g is not None else (0, 1, 2, 3)
    return jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))(q, k, v, h0, g)

  (grads, (o, ht)), (grads_ref, (o_ref, ht_ref)) = run("mosaic_gpu_fwd"), run("xla")
  assert rel_err(o, o_ref) < 1e-2 and rel_err(ht, ht_ref) < 1e-2
  for name, a, b in zip(("dq", "dk", "dv", "dh0", "dg"), grads, grads_ref):
    assert np.isfinite(np.asarray(a, np.float32)).all(), name
    assert rel_err(a, b) < 2e-2, (name, rel_err(a, b))


# ------------------------------------------------------------------------------------------------
# the compiled path, lowered deviceless on any machine (Pallas → Mosaic GPU MLIR; not ptxas, not run)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims,dtype,gate,h0,seg,block_v", [
    ((8, 2048, 16, 128, 128), jnp.bfloat16, "scalar", True, False, None),
    ((2, 256, 2, 128, 128), jnp.bfloat16, "scalar", True, False, 128),
    ((8, 2048, 4, 256, 512), jnp.bfloat16, "scalar", True, False, None),
    ((2, 300, 2, 48, 96), jnp.bfloat16, "constant", True, True, None),
    ((2, 300, 2, 16, 16), jnp.float16, "none", False, False, None),
    ((2, 300, 2, 512, 512), jnp.bfloat16, "scalar", True, True, None),  # K in two launches of 256
])
def test_lowers_for_cuda(dims, dtype, gate, h0, seg, block_v):
  B, T, H, K, V = dims
  q, v = jax.ShapeDtypeStruct((B, T, H, K), dtype), jax.ShapeDtypeStruct((B, T, H, V), dtype)
  g = jax.ShapeDtypeStruct((B, T, H), jnp.float32) if gate == "scalar" else None
  g_gamma = jnp.full((H,), -0.1) if gate == "constant" else None
  h = jax.ShapeDtypeStruct((B, H, K, V), jnp.float32) if h0 else None
  s = jax.ShapeDtypeStruct((B, T), jnp.int32) if seg else None
  info = _info(B, T, H, K, V, dtype)  # only the shapes matter to the chunk_simple_gla_mosaic checks
  assert check_call(info, block_v=block_v) is None

  def f(q, k, v, g, h, s):
    return chunk_simple_gla_mosaic(q, k, v, g, g_gamma=g_gamma, initial_state=h, segment_ids=s,
                                   output_final_state=True, block_v=block_v)

  text = jax.jit(f).trace(q, q, v, g, h, s).lower(lowering_platforms=("cuda",)).as_text()
  assert "mosaic_gpu" in text


@pytest.mark.parametrize("dims,gate", [((2, 256, 2, 128, 128), "constant"), ((2, 300, 2, 64, 512), "scalar"),
                                       ((2, 300, 2, 512, 64), "scalar")])
def test_backward_lowers_for_cuda(dims, gate):
  B, T, H, K, V = dims
  q, v = jax.ShapeDtypeStruct((B, T, H, K), jnp.bfloat16), jax.ShapeDtypeStruct((B, T, H, V), jnp.bfloat16)
  g = jax.ShapeDtypeStruct((B, T, H), jnp.float32) if gate == "scalar" else None
  g_gamma = jnp.full((H,), -0.1) if gate == "constant" else None
  h = jax.ShapeDtypeStruct((B, H, K, V), jnp.float32)

  def loss(q, k, v, g, h):
    o, ht = chunk_simple_gla_mosaic(q, k, v, g, g_gamma=g_gamma, initial_state=h, output_final_state=True)
    return o.astype(jnp.float32).sum() + ht.sum()

  lower = lambda fn: jax.jit(fn).trace(q, q, v, g, h).lower(lowering_platforms=("cuda",)).as_text()
  parts = lambda n, width=256: -(-n // width)  # launches of a pass whose own K (its q·kᵀ contraction) is n
  once = lower(loss).count("simple_gla_mosaic_fwd")
  assert once > 0 and once % parts(K) == 0
  per_launch = once // parts(K)  # the kernel's name in the text of one launch
  strict_width = 128 if gate == "scalar" else 256  # the scalar gate's strict dq and dk passes: parts of ≤ 128
  launches = 2 * parts(V, strict_width) + parts(K)  # dq and dk (K = V), dv (K = K); the unused forward is
  #                                                   dropped (the loss is linear in o and ht)
  argnums = (0, 1, 2, 3, 4) if gate == "scalar" else (0, 1, 2, 4)  # dg: from the strict dq and dk passes
  assert lower(jax.grad(loss, argnums=argnums)).count("simple_gla_mosaic_fwd") == launches * per_launch
