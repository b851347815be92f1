"""`chunk_linear_attn` / `fused_recurrent_linear_attn` against the specification
(`naive_recurrent_linear_attn`): o, the final state (S and z) and the gradients dq, dk, dv, dS0, dz0,
normalize on and off, odd T, K ≠ V, packed documents with ids that repeat, initial states, f32 and bf16;
plus the normaliser `segment_cumsum`, decode == full, packed == separate, the numerator == simple_gla,
dispatch (delegation to simple_gla, lazy kernels) and input errors."""

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from pallas_kernels.common.checks import check_linear_attn_inputs
from pallas_kernels.common.cumsum import segment_cumsum
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.linear_attn import (chunk_linear_attn, fused_recurrent_linear_attn,
                                        naive_recurrent_linear_attn, on_simple_gla)
from pallas_kernels.linear_attn import ops
from pallas_kernels.simple_gla.ops import CHUNK_SIMPLE_GLA
from tests.pallas_kernels.gla_testing import rel_err

NAMES = ("o", "S", "z", "dq", "dk", "dv", "dS0", "dz0")
F32_TOL = 1e-5
BF16_TOL = {"o": 1e-2, "S": 1e-2, "z": 1e-2, "dq": 2e-2, "dk": 2e-2, "dv": 2e-2, "dS0": 1e-2,
            "dz0": 2e-2}


@dataclasses.dataclass(frozen=True)
class Case:
  T: int
  normalize: bool
  K: int = 16
  V: int = 32
  h0: bool = True
  seg: bool = True
  dtype: str = "float32"
  B: int = 2
  H: int = 2

  @property
  def id(self):
    return (f"T{self.T}_{'norm' if self.normalize else 'plain'}_K{self.K}_V{self.V}"
            f"{'_h0' if self.h0 else ''}{'_seg' if self.seg else ''}_{self.dtype}")


def make_inputs(case: Case, seed: int = 0):
  """q, k, v, S0, z0, segment_ids, do, dS, dz. With normalize, q, k (and z0) are positive (elu + 1, the
  caller's feature map) so that the denominators are well away from zero."""
  ks = jax.random.split(jax.random.key(seed), 9)
  B, T, H, K, V = case.B, case.T, case.H, case.K, case.V
  dt = jnp.dtype(case.dtype)
  fmap = (lambda x: 1 + jax.nn.elu(x)) if case.normalize else (lambda x: x)
  q = fmap(jax.random.normal(ks[0], (B, T, H, K))).astype(dt)
  k = fmap(jax.random.normal(ks[1], (B, T, H, K))).astype(dt)
  v = jax.random.normal(ks[2], (B, T, H, V)).astype(dt)
  S0 = jax.random.normal(ks[3], (B, H, K, V)) if case.h0 else None
  z0 = jax.random.uniform(ks[4], (B, H, K), minval=0.5, maxval=3.0) if case.h0 else None
  seg = None
  if case.seg:  # documents of random length; ids repeat later on purpose (a change is a new document)
    starts = jax.random.bernoulli(ks[5], min(0.5, 6.0 / T), (B, T))
    seg = (jnp.cumsum(starts, axis=1) % 3).astype(jnp.int32)
  do = jax.random.normal(ks[6], (B, T, H, V)).astype(dt)
  dS = jax.random.normal(ks[7], (B, H, K, V))
  dz = jax.random.normal(ks[8], (B, H, K))
  return q, k, v, S0, z0, seg, do, dS, dz


def outputs_and_grads(fn, normalize, q, k, v, S0, z0, seg, do, dS, dz, **kw):
  """(o, S, z, dq, dk, dv, dS0, dz0) of fn under jax.vjp with random cotangents (z, dz0: None
  without normalize)."""
  if not normalize:
    z0 = None

  def f(q, k, v, S0, z0):
    state = None if S0 is None else ((S0, z0) if normalize else S0)
    o, ht = fn(q, k, v, normalize=normalize, initial_state=state, output_final_state=True,
               segment_ids=seg, **kw)
    return o, (ht if normalize else (ht, None))

  (o, (S, z)), vjp = jax.vjp(f, q, k, v, S0, z0)
  grads = vjp((do.astype(o.dtype), (dS, dz if normalize else None)))
  return (o, S, z, *grads)


@functools.lru_cache(maxsize=64)
def reference(case: Case):
  q, k, v, S0, z0, seg, do, dS, dz = make_inputs(case)
  up = lambda x: x.astype(jnp.float32)
  run = jax.jit(functools.partial(outputs_and_grads, naive_recurrent_linear_attn, case.normalize))
  return tuple(None if x is None else np.asarray(x)
               for x in run(up(q), up(k), up(v), S0, z0, seg, up(do), dS, dz))


def assert_all_close(got, ref, tol):
  errs = {n: rel_err(a, b) for n, a, b in zip(NAMES, got, ref) if b is not None}
  bad = {n: e for n, e in errs.items() if not e <= (tol[n] if isinstance(tol, dict) else tol)}
  assert not bad, f"relative errors over bound: {bad}; all: {errs}"
  return errs


def run_impl(impl, case, **kw):
  fn = functools.partial(chunk_linear_attn, impl=impl) if impl != "fused_recurrent" else \
      fused_recurrent_linear_attn
  run = jax.jit(functools.partial(outputs_and_grads, fn, case.normalize, **kw))
  return run(*make_inputs(case))


IMPL_CASES = [
    # the chunked jnp form: every T, normalize on and off, initial state (S, z), packed documents
    *[("xla", Case(T=T, normalize=n), {}) for T in (1, 15, 64, 130) for n in (False, True)],
    # K > V, no state, no documents, another chunk size (the result must not depend on it)
    ("xla", Case(T=70, normalize=True, K=32, V=16, h0=False, seg=False), {"chunk_size": 16}),
    ("naive", Case(T=15, normalize=True), {}),
    ("naive", Case(T=130, normalize=False), {}),
    ("associative", Case(T=15, normalize=True), {}),
    ("parallel", Case(T=64, normalize=True), {}),
    ("fused_recurrent", Case(T=1, normalize=True), {}),
    ("fused_recurrent", Case(T=130, normalize=True), {}),
    ("fused_recurrent", Case(T=15, normalize=False), {}),
]
BF16_CASES = [
    ("xla", Case(T=130, normalize=True, dtype="bfloat16"), {}),
    ("xla", Case(T=64, normalize=False, dtype="bfloat16"), {}),
]


class FormsMatchSpecTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(f"{impl}_{c.id}", impl, c, kw) for impl, c, kw in IMPL_CASES])
  def test_float32(self, impl, case, kw):
    got = run_impl(impl, case, **kw)
    assert got[0].dtype == jnp.float32 and got[1].dtype == jnp.float32
    assert (got[2] is None) == (not case.normalize)
    assert_all_close(got, reference(case), F32_TOL)

  @parameterized.named_parameters(*[(f"{impl}_{c.id}", impl, c, kw) for impl, c, kw in BF16_CASES])
  def test_bfloat16(self, impl, case, kw):
    got = run_impl(impl, case, **kw)
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32  # o in v's dtype, state f32
    if case.normalize:
      assert got[2].dtype == jnp.float32
    assert all(x.dtype == jnp.bfloat16 for x in got[3:6])
    assert_all_close(got, reference(case), BF16_TOL)


def _kernel_impl(name):
  try:
    return ops.CHUNK_LINEAR_ATTN.lookup(name)
  except ImportError as e:  # a kernel module that cannot import here
    pytest.skip(f"{name} backend does not import: {e}")


class KernelBackendsTest(parameterized.TestCase):
  """The kernel implementations in interpret mode, where simple_gla has them."""

  @parameterized.parameters("triton", "tpu")
  def test_interpret_matches_spec(self, name):
    impl = _kernel_impl(name)
    if impl is None:
      self.skipTest(f"simple_gla has no {name!r} implementation in this build")
    case = Case(T=70, normalize=True, B=1)

    def fn(q, k, v, **kw):
      info = ops.CHUNK_LINEAR_ATTN.check(q, k, v, **kw)
      return impl.fn(info, q, k, v, interpret=True, **kw)

    got = jax.jit(functools.partial(outputs_and_grads, fn, True))(*make_inputs(case))
    assert_all_close(got, reference(case), F32_TOL)

  def test_triton_wrapper_exists_and_delegates(self):
    assert ops.CHUNK_LINEAR_ATTN.backends["triton"] == "pallas_kernels.linear_attn.triton:IMPLEMENTATION"
    simple = CHUNK_SIMPLE_GLA.lookup("triton")
    mine = _kernel_impl("triton")
    assert (mine is None) == (simple is None)
    if simple is not None:
      assert mine.name == "triton" and mine.platforms == simple.platforms == frozenset({"gpu"})
      q = jnp.zeros((1, 8, 1, 16))
      info = check_linear_attn_inputs(q, q, q, normalize=True)
      assert mine.check(info) == simple.check(dataclasses.replace(info, normalize=False))
      big = jnp.zeros((1, 8, 1, 1024))
      info = check_linear_attn_inputs(big, big, big, normalize=True)
      assert mine.check(info) is not None
      assert mine.check(info) == simple.check(dataclasses.replace(info, normalize=False))

  def test_on_simple_gla_delegates(self):
    """The wrapper hands simple_gla's fn a gate-less CallInfo, g=None, S0 alone and kernel options,
    takes its platforms, and asks its check."""
    calls = []

    def fake_fn(info, q, k, v, g=None, **kw):
      calls.append((info, g, kw))
      return jnp.zeros(v.shape, v.dtype), kw["initial_state"]

    fake = Implementation("triton", fake_fn, platforms=frozenset({"gpu"}),
                          check=lambda info: "too big" if info.K > 8 else None)
    wrapped = on_simple_gla(fake)
    assert wrapped.name == "triton" and wrapped.platforms == frozenset({"gpu"})
    q = jnp.ones((1, 4, 1, 16)); v = jnp.ones((1, 4, 1, 8))
    S0, z0 = jnp.ones((1, 1, 16, 8)), jnp.ones((1, 1, 16))
    kw = dict(normalize=True, initial_state=(S0, z0), output_final_state=True)
    info = check_linear_attn_inputs(q, q, v, **{k: w for k, w in kw.items() if k != "output_final_state"})
    assert wrapped.check(info) == "too big"
    o, (S, z) = wrapped.fn(info, q, q, v, interpret=True, **kw)
    (sinfo, g, skw), = calls
    assert sinfo.gate == "none" and not sinfo.normalize and sinfo.has_initial_state and g is None
    assert skw["initial_state"] is S0 and skw["interpret"] is True and skw["chunk_size"] == 64
    np.testing.assert_allclose(z, z0 + 4.0)  # the normaliser is the wrapper's own
    assert on_simple_gla(None) is None

  def test_importing_the_op_imports_no_kernel_code(self):
    code = ("import sys, pallas_kernels.linear_attn as la; "
            "bad = [m for m in sys.modules if m.startswith('pallas_kernels') and "
            "(m.endswith('triton') or '.triton.' in m or m.endswith('tpu') or '.tpu.' in m)]; "
            "assert not bad, bad")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    subprocess.run([sys.executable, "-c", code], check=True, env={**env, "JAX_PLATFORMS": "cpu"})


class DispatchTest(parameterized.TestCase):

  @parameterized.parameters("cpu", "gpu", "tpu")
  def test_auto_order_is_simple_glas(self, platform):
    assert ops.CHUNK_LINEAR_ATTN.auto_order.get(platform) == CHUNK_SIMPLE_GLA.auto_order.get(platform)

  def test_auto_on_cpu_is_xla(self):
    q = jnp.zeros((1, 8, 1, 16))
    info = check_linear_attn_inputs(q, q, q, normalize=True)
    assert ops.select_impl(info, "auto", platform="cpu").name == "xla"

  def test_impl_names_mirror_simple_gla(self):
    mine = set(ops.available_impls())
    assert {"xla", "naive", "associative", "parallel"} <= mine
    assert mine == set(CHUNK_SIMPLE_GLA.available_impls())

  def test_explicit_impl_reports_simple_glas_reason(self):
    q = jnp.zeros((1, 2100, 1, 16))
    with pytest.raises(ValueError, match="impl='parallel' cannot serve this call: the T×T parallel"):
      chunk_linear_attn(q, q, q, normalize=True, impl="parallel")

  def test_final_state_only_when_asked(self):
    q, k, v = _zeros()
    for normalize in (False, True):
      assert jax.jit(functools.partial(chunk_linear_attn, normalize=normalize))(q, k, v)[1] is None
      assert fused_recurrent_linear_attn(q, k, v, normalize=normalize)[1] is None
    _, (S, z) = fused_recurrent_linear_attn(q, k, v, normalize=True, output_final_state=True)
    assert S.shape == (2, 2, 16, 8) and z.shape == (2, 2, 16) and z.dtype == jnp.float32

  def test_numerator_is_simple_gla_without_gate(self):
    case = Case(T=70, normalize=False, K=32, V=16)
    q, k, v, S0, _, seg, do, dS, _ = make_inputs(case)

    def simple(q, k, v, S0):
      return CHUNK_SIMPLE_GLA(q, k, v, None, initial_state=S0, output_final_state=True,
                              segment_ids=seg, impl="naive")

    def mine(q, k, v, S0):
      return chunk_linear_attn(q, k, v, initial_state=S0, output_final_state=True, segment_ids=seg,
                               impl="xla")

    @jax.jit
    def outs(q, k, v, S0, do, dS):
      res = []
      for fn in (simple, mine):
        (o, S), vjp = jax.vjp(fn, q, k, v, S0)
        res.append((o, S, *vjp((do, dS))))
      return res

    for a, b in zip(*outs(q, k, v, S0, do, dS)):
      assert rel_err(a, b) <= F32_TOL


class DocumentsTest(parameterized.TestCase):

  @parameterized.parameters("xla", "fused_recurrent")
  def test_packed_equals_separate(self, impl):
    """Packed documents (a 1-token one, a boundary on a chunk edge, ids that repeat) give what each
    document gives alone; (S0, z0) feeds the first document only."""
    case = Case(T=90, normalize=True, B=1)
    q, k, v, S0, z0, _, _, _, _ = make_inputs(case)
    bounds = [0, 20, 21, 64, 90]
    seg = jnp.concatenate([jnp.full((1, b - a), i % 2, jnp.int32)
                           for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))], axis=1)
    fn = fused_recurrent_linear_attn if impl == "fused_recurrent" else chunk_linear_attn
    o, (S, z) = jax.jit(functools.partial(fn, normalize=True, output_final_state=True))(
        q, k, v, initial_state=(S0, z0), segment_ids=seg)
    spec = functools.partial(naive_recurrent_linear_attn, normalize=True, output_final_state=True)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
      o_i, (S_i, z_i) = spec(
          q[:, a:b], k[:, a:b], v[:, a:b], initial_state=(S0, z0) if i == 0 else None)
      np.testing.assert_allclose(o[:, a:b], o_i, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(S, S_i, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z, z_i, rtol=1e-6)

  def test_decode_steps_equal_full_sequence(self):
    for normalize in (True, False):
      case = Case(T=12, normalize=normalize, seg=False)
      q, k, v, S0, z0, _, _, _, _ = make_inputs(case)
      state = (S0, z0) if normalize else S0
      kw = dict(normalize=normalize, output_final_state=True)
      o_full, ht_full = jax.jit(functools.partial(chunk_linear_attn, **kw))(q, k, v,
                                                                            initial_state=state)
      step = jax.jit(functools.partial(fused_recurrent_linear_attn, **kw))
      outs = []
      for t in range(case.T):
        o_t, state = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], initial_state=state)
        outs.append(o_t)
      np.testing.assert_allclose(jnp.concatenate(outs, 1), o_full, rtol=1e-5, atol=1e-6)
      for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ht_full)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _cumsum_masked(x, seg, initial):
  """The T×T reference: z_t = Σ_{s ≤ t, same document} x_s (+ initial in the first document)."""
  doc = jnp.cumsum(jnp.pad(seg[:, 1:] != seg[:, :-1], ((0, 0), (1, 0))), axis=1)  # [B, T]
  T = x.shape[1]
  mask = (jnp.arange(T)[:, None] >= jnp.arange(T)[None, :]) & (doc[:, :, None] == doc[:, None, :])
  z = jnp.einsum("bts,bs...->bt...", mask.astype(x.dtype), x, precision="highest")
  first = (doc == 0).reshape(doc.shape + (1,) * (x.ndim - 2))
  return z + jnp.where(first, initial[:, None], 0.0)


class SegmentCumsumTest(parameterized.TestCase):

  def test_values_and_gradients_match_a_loop(self):
    x = jax.random.normal(jax.random.key(0), (2, 37, 3, 4))
    seg = (jnp.cumsum(jax.random.bernoulli(jax.random.key(1), 0.2, (2, 37)), 1) % 2).astype(jnp.int32)
    z0 = jax.random.normal(jax.random.key(2), (2, 3, 4))
    ct = jax.random.normal(jax.random.key(3), x.shape)
    @jax.jit
    def run(x, z0, ct):
      out = []
      for fn in (segment_cumsum, _cumsum_masked):
        z, vjp = jax.vjp(lambda x, z0: fn(x, seg, initial=z0), x, z0)
        out.append((z, *vjp(ct)))
      return out

    for a, b in zip(*run(x, z0, ct)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(segment_cumsum(x, None, initial=z0), jnp.cumsum(x, 1) + z0[:, None],
                               rtol=1e-6, atol=1e-6)

  def test_restart_is_exact(self):
    """A short document after a huge one sums exactly (no subtraction of a global cumsum)."""
    x = jnp.concatenate([jnp.full((1, 50, 1), 3e7), jnp.full((1, 5, 1), 0.1)], axis=1)
    seg = jnp.concatenate([jnp.zeros((1, 50), jnp.int32), jnp.ones((1, 5), jnp.int32)], axis=1)
    z = jax.jit(segment_cumsum)(x, seg)
    np.testing.assert_array_equal(z[0, 50:, 0], jnp.cumsum(jnp.full((5,), 0.1, jnp.float32)))

  def test_bfloat16_input_sums_in_float32(self):
    x = jnp.ones((1, 1000, 1), jnp.bfloat16)
    z, vjp = jax.vjp(segment_cumsum, x)
    assert z.dtype == jnp.float32 and float(z[0, -1, 0]) == 1000.0  # bf16 would stall at 256
    assert vjp(jnp.ones_like(z))[0].dtype == jnp.bfloat16


def _zeros(B=2, T=8, H=2, K=16, V=8):
  return jnp.zeros((B, T, H, K)), jnp.zeros((B, T, H, K)), jnp.zeros((B, T, H, V))


class InputErrorsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("tuple_state_without_normalize", dict(initial_state=(jnp.zeros((2, 2, 16, 8)),
                                                            jnp.zeros((2, 2, 16)))),
       "with normalize=False, initial_state must be one array"),
      ("array_state_with_normalize", dict(normalize=True, initial_state=jnp.zeros((2, 2, 16, 8))),
       "with normalize=True, initial_state must be the pair"),
      ("wrong_z_shape", dict(normalize=True, initial_state=(jnp.zeros((2, 2, 16, 8)),
                                                            jnp.zeros((2, 1, 2, 16)))),
       r"initial_state\[1\] \(z\) must have shape \[B, H, K\]"),
      ("wrong_S_shape", dict(normalize=True, initial_state=(jnp.zeros((2, 2, 8, 16)),
                                                            jnp.zeros((2, 2, 16)))),
       "initial_state must have shape"),
      ("normalize_not_bool", dict(normalize=1), "normalize must be a bool"),
      ("seg_shape", dict(segment_ids=jnp.zeros((2, 7), jnp.int32)), "segment_ids must"),
      ("scale", dict(scale=0.0), "scale must be a positive"),
  )
  def test_bad_input_raises(self, kwargs, message):
    for fn in (chunk_linear_attn, fused_recurrent_linear_attn, naive_recurrent_linear_attn):
      with pytest.raises(ValueError, match=message):
        fn(*_zeros(), **kwargs)

  def test_bad_shapes_and_options(self):
    q, k, v = _zeros()
    with pytest.raises(ValueError, match="v must have shape"):
      chunk_linear_attn(q, k, v[:, :4])
    with pytest.raises(ValueError, match="share one dtype"):
      chunk_linear_attn(q, k, v.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="chunk_size must be a positive multiple of 16"):
      chunk_linear_attn(q, k, v, chunk_size=40)
    with pytest.raises(ValueError, match="impl must be 'auto' or one of"):
      chunk_linear_attn(q, k, v, impl="cuda_magic")
    with pytest.raises(ValueError, match="impl must be 'auto' or one of"):
      fused_recurrent_linear_attn(q, k, v, impl="naive")


@pytest.mark.parametrize("impl", ["mosaic_gpu_interpret", "mosaic_gpu_fwd_interpret"])
@pytest.mark.parametrize("normalize,seg", [(False, False), (True, True)])
def test_mosaic_interpret_matches_xla_values_and_gradients(normalize, seg, impl):
  """impls "mosaic_gpu_interpret" (simple GLA's Mosaic kernel without a gate, forward and its Mosaic
  backward) and "mosaic_gpu_fwd_interpret" (the Mosaic forward, the Triton backward) against "xla" on o,
  the final state and every gradient, h0 and packed documents."""
  B, T, H, K, V = 1, 90, 2, 16, 32
  ks = jax.random.split(jax.random.key(3), 6)
  q, k = (jax.nn.elu(jax.random.normal(kk, (B, T, H, K))) + 1 for kk in ks[:2])
  v, do = (jax.random.normal(kk, (B, T, H, V)) for kk in ks[2:4])
  h0 = jax.random.normal(ks[4], (B, H, K, V))
  segment_ids = jnp.asarray([[0] * 40 + [1] * 50]) if seg else None
  h0 = None if normalize else h0  # the normalised form takes no initial state

  def run(impl):
    def f(q, k, v, h0):
      return chunk_linear_attn(q, k, v, normalize=normalize, initial_state=h0, output_final_state=True,
                               segment_ids=segment_ids, impl=impl)
    (o, ht), vjp = jax.vjp(f, q, k, v, h0)
    dht_ = jax.tree.map(lambda x: jax.random.normal(ks[5], x.shape, x.dtype), ht)  # (S[, z]) cotangent
    return (o, *jax.tree.leaves(ht), *vjp((do, dht_)))

  got, want = jax.jit(lambda: run(impl))(), jax.jit(lambda: run("xla"))()
  assert len(got) == len(want)
  for i, (a, b) in enumerate(zip(got, want)):
    if b is None:
      assert a is None, i
      continue
    assert rel_err(a, b) < 1e-5, (i, rel_err(a, b))
