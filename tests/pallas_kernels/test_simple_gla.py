"""Every form of the simple-GLA op against the specification (`naive_recurrent_simple_gla`): outputs,
final state and the gradients dq, dk, dv, dg, dh0 over odd lengths, K ≠ V, the three gate kinds (scalar
g incl. −20 per token and −inf entries, RetNet's g_gamma up to H = 32, none), initial states, packed
documents and bf16; plus chunk-size invariance, packed == separate, decode == full sequence, the GLA
oracle, exact zeros at g = −inf, dispatch and input errors. Also GLA's xla form at g = −inf."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from pallas_kernels.common.checks import check_simple_gla_inputs
from pallas_kernels.gla import chunk_gla, naive_recurrent_gla
from pallas_kernels.simple_gla import (chunk_simple_gla, chunk_simple_gla_jnp,
                                       fused_recurrent_simple_gla, naive_associative_simple_gla,
                                       naive_parallel_simple_gla, naive_recurrent_simple_gla, ops)
from tests.pallas_kernels.simple_gla_testing import (F32_TOL, Case, Inputs, assert_close, make_inputs,
                                                     outputs_and_grads, reference, tolerance)

FORMS = {
    "xla": functools.partial(chunk_simple_gla, impl="xla"),  # the chunked jnp form, through dispatch
    "associative": naive_associative_simple_gla,
    "parallel": naive_parallel_simple_gla,
    "fused_recurrent": fused_recurrent_simple_gla,
}

CASES = [
    # every required T; each also varies another axis (gate kind, strength, −inf, K ≠ V, documents)
    Case(T=1, h0=True, seg=True),
    Case(T=15, gate="constant", neg_inf=True, seg=True, H=4),
    Case(T=63, K=16, V=24, gate="none", seg=True),
    Case(T=64, K=256, V=512, strength="strong", neg_inf=True, seg=True, B=1, H=1),
    Case(T=130, K=32, V=48, strength="strong", neg_inf=True, seg=True),
    Case(T=257, seg=True),
    # scalar gate: short packed case (every form), weak with −inf and no initial state
    Case(T=63, seg=True),
    Case(T=100, K=16, V=32, strength="weak", neg_inf=True, h0=False),
    # constant per-head decay: RetNet for H = 32, strong
    Case(T=130, K=16, V=32, gate="constant", B=1, H=32, seg=True),
    Case(T=257, K=32, V=16, gate="constant", strength="strong", B=1),
    # no decay, no state, no documents
    Case(T=130, K=32, V=16, gate="none", h0=False),
]
BF16_CASES = [
    Case(T=130, K=64, V=64, seg=True, dtype="bfloat16"),
    Case(T=63, strength="strong", neg_inf=True, seg=True, dtype="bfloat16"),
    Case(T=257, K=32, V=64, gate="constant", H=8, dtype="bfloat16", B=1),
    Case(T=64, K=32, V=32, gate="none", seg=True, dtype="bfloat16"),
]


def _form_cases(cases):
  """Every form on every case, except where compiling the gradient would dominate the suite's CPU time:
  the associative scan beyond short small cases, the recurrent scan (the spec's twin, also checked by
  the decode tests) beyond T = 64, the T×T form beyond T = 130. The chunked form runs on every case."""
  skip = lambda form, c: ((form == "associative" and (c.T > 63 or c.K * c.V > 512))
                          or (form == "fused_recurrent" and c.T > 64)
                          or (form == "parallel" and c.T > 130))
  return [(f"{form}_{c.id}", form, c) for c in cases for form in FORMS if not skip(form, c)]


def _run(fn, inputs, **kw):
  return jax.jit(functools.partial(outputs_and_grads, fn, **kw))(inputs)


class FormsMatchSpecTest(parameterized.TestCase):

  @parameterized.named_parameters(*_form_cases(CASES))
  def test_float32(self, form, case):
    assert_close(_run(FORMS[form], make_inputs(case)), reference(case), F32_TOL)

  @parameterized.named_parameters(*_form_cases(BF16_CASES))
  def test_bfloat16(self, form, case):
    got = _run(FORMS[form], make_inputs(case))
    if form in ("xla", "fused_recurrent"):  # the op contract: o in v's dtype, state in float32
      assert got.o.dtype == jnp.bfloat16 and got.final_state.dtype == jnp.float32
    assert all(x.dtype == jnp.bfloat16 for x in (got.dq, got.dk, got.dv))
    assert_close(got, reference(case), tolerance(case.dtype))


class ChunkSizeInvarianceTest(parameterized.TestCase):

  @parameterized.parameters(
      (Case(T=100, K=32, V=16, strength="strong", neg_inf=True, seg=True),),
      (Case(T=100, K=16, V=32, gate="constant", seg=True, H=4),),
      (Case(T=100, K=16, V=16, gate="none"),))
  def test_chunk_sizes_agree(self, case):
    inputs = make_inputs(case)
    results = {C: _run(chunk_simple_gla_jnp, inputs, chunk_size=C) for C in (32, 64, 128)}
    for C in (32, 128):
      assert_close(results[C], results[64], F32_TOL)


def _slice(inputs: Inputs, a: int, b: int, first: bool) -> Inputs:
  sl = lambda x: None if x is None else x[:, a:b]
  return inputs._replace(q=sl(inputs.q), k=sl(inputs.k), v=sl(inputs.v), g=sl(inputs.g), seg=None,
                         h0=inputs.h0 if first else None)


class DocumentsTest(parameterized.TestCase):

  @parameterized.parameters(("xla", "scalar"), ("xla", "constant"), ("xla", "none"),
                            ("parallel", "constant"))
  def test_packed_equals_separate(self, impl, gate):
    """Packed documents give exactly what the spec gives on each document alone (a 1-token document,
    a boundary on a chunk edge, ids that repeat later, the initial state feeding the first only)."""
    x = make_inputs(Case(T=90, gate=gate, B=1, H=2))
    bounds = [0, 20, 21, 64, 90]
    seg = jnp.concatenate([jnp.full((1, b - a), i % 2, jnp.int32)
                           for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))], axis=1)
    run = jax.jit(functools.partial(chunk_simple_gla, output_final_state=True, impl=impl))
    o, ht = run(x.q, x.k, x.v, x.g, g_gamma=x.g_gamma, initial_state=x.h0, segment_ids=seg)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
      d = _slice(x, a, b, first=i == 0)
      o_i, ht_i = naive_recurrent_simple_gla(d.q, d.k, d.v, d.g, g_gamma=d.g_gamma,
                                             initial_state=d.h0, output_final_state=True)
      np.testing.assert_allclose(o[:, a:b], o_i, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ht, ht_i, rtol=1e-5, atol=1e-5)

  def test_no_gradient_across_documents(self):
    x = make_inputs(Case(T=80, B=1, H=1))
    seg = jnp.concatenate([jnp.zeros((1, 37), jnp.int32), jnp.ones((1, 43), jnp.int32)], axis=1)
    loss = lambda q, k, v, g: chunk_simple_gla(q, k, v, g, segment_ids=seg)[0][:, 37:].sum()
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(x.q, x.k, x.v, x.g)
    for name, d in zip("qkvg", grads):
      assert float(jnp.abs(d[:, :37]).max()) == 0.0, f"d{name} leaks into the first document"
      assert float(jnp.abs(d[:, 37:]).max()) > 0.0


class DecodeTest(parameterized.TestCase):

  @parameterized.parameters(Case(T=12, K=16, V=32, neg_inf=True), Case(T=12, gate="constant", H=3),
                            Case(T=12, gate="none"))
  def test_decode_steps_equal_full_sequence(self, case):
    x = make_inputs(case)
    full = jax.jit(functools.partial(chunk_simple_gla, output_final_state=True))
    o_full, ht_full = full(x.q, x.k, x.v, x.g, g_gamma=x.g_gamma, initial_state=x.h0)
    step = jax.jit(functools.partial(fused_recurrent_simple_gla, output_final_state=True))
    h, outs = x.h0, []
    for t in range(case.T):
      d = _slice(x, t, t + 1, first=True)
      o_t, h = step(d.q, d.k, d.v, d.g, g_gamma=d.g_gamma, initial_state=h)
      outs.append(o_t)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), o_full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, ht_full, rtol=1e-5, atol=1e-5)


class OraclesTest(parameterized.TestCase):

  def test_equals_gla_with_broadcast_gate(self):
    """simple GLA with g == GLA with g broadcast over K; dg == GLA's dg summed over K."""
    case = Case(T=70, K=16, V=24, neg_inf=True, seg=True)
    x = make_inputs(case)
    gla = lambda q, k, v, g, g_gamma, **kw: naive_recurrent_gla(
        q, k, v, jnp.broadcast_to(g[..., None], q.shape), **kw)
    got = _run(gla, x)
    assert_close(got, reference(case), F32_TOL)

  def test_neg_inf_gives_exact_zeros(self):
    """g = −inf at t = 0 cuts the initial state off exactly; at the last token the final state is
    exactly k_Tᵀ v_T; their gradients are exact zeros (never NaN)."""
    x = make_inputs(Case(T=70, K=16, V=16))
    g = x.g.at[:, 0].set(-jnp.inf).at[:, -1].set(-jnp.inf)
    for impl in ("xla", "naive", "parallel"):
      got = _run(functools.partial(chunk_simple_gla, impl=impl), x._replace(g=g))
      assert float(jnp.abs(got.dh0).max()) == 0.0, impl
      assert float(jnp.abs(got.dg[:, 0]).max()) == 0.0 and float(jnp.abs(got.dg[:, -1]).max()) == 0.0
      last = jnp.einsum("bhk,bhv->bhkv", x.k[:, -1], x.v[:, -1])
      np.testing.assert_allclose(got.final_state, last, rtol=1e-6, atol=1e-6)
      assert all(bool(jnp.isfinite(a).all()) for a in got), impl


class GlaNegInfTest(parameterized.TestCase):
  """GLA's xla form with g = −inf entries (a legal gate) matches its spec, with no NaN anywhere."""

  def test_chunk_gla_xla_neg_inf(self):
    kq, kk, kv, kg, kh, ki, kd, kt = jax.random.split(jax.random.key(3), 8)
    B, T, H, K, V = 2, 100, 2, 32, 16
    q, k = (jax.random.normal(key, (B, T, H, K)) for key in (kq, kk))
    v = jax.random.normal(kv, (B, T, H, V))
    g = jax.nn.log_sigmoid(jax.random.normal(kg, (B, T, H, K)))
    g = jnp.where(jax.random.bernoulli(ki, 0.03, g.shape), -jnp.inf, g)
    g = g.at[0, 20].set(-jnp.inf).at[1, 64, 1].set(-jnp.inf)  # whole tokens, one on a chunk edge
    h0 = jax.random.normal(kh, (B, H, K, V))
    seg = jnp.concatenate([jnp.zeros((B, 40), jnp.int32), jnp.ones((B, 60), jnp.int32)], axis=1)
    do, dht = jax.random.normal(kd, (B, T, H, V)), jax.random.normal(kt, (B, H, K, V))

    def run(fn):
      f = lambda q, k, v, g, h0: fn(q, k, v, g, initial_state=h0, output_final_state=True,
                                    segment_ids=seg)
      out, vjp = jax.vjp(f, q, k, v, g, h0)
      return (*out, *vjp((do, dht)))

    got = jax.jit(lambda: run(functools.partial(chunk_gla, impl="xla")))()
    ref = jax.jit(lambda: run(naive_recurrent_gla))()
    assert_close(tuple(got), tuple(ref), F32_TOL)


class DispatchTest(parameterized.TestCase):

  def _info(self):
    x = make_inputs(Case(T=64))
    return check_simple_gla_inputs(x.q, x.k, x.v, x.g)

  def test_auto_on_cpu_is_xla(self):
    assert ops.select_impl(self._info(), "auto", platform="cpu").name == "xla"

  @parameterized.parameters("gpu", "tpu")
  def test_auto_picks_a_supporting_impl(self, platform):
    info = self._info()
    op = ops.CHUNK_SIMPLE_GLA
    preferred = [n for n in op.auto_order[platform] if op.lookup(n) is not None
                 and platform in op.lookup(n).platforms and op.lookup(n).check(info) is None
                 and (op.lookup(n).auto_check is None or op.lookup(n).auto_check(info) is None)]
    assert ops.select_impl(info, "auto", platform=platform).name == preferred[0]

  def test_available_impls(self):
    assert {"xla", "naive", "associative", "parallel"} <= set(ops.available_impls())

  def test_unknown_impl(self):
    q = jnp.zeros((1, 8, 1, 16))
    with pytest.raises(ValueError, match="impl must be 'auto' or one of"):
      chunk_simple_gla(q, q, q, impl="cuda_magic")

  def test_fused_recurrent_auto(self):
    x = make_inputs(Case(T=5, h0=False))
    o, ht = fused_recurrent_simple_gla(x.q, x.k, x.v, x.g)
    assert o.shape == x.v.shape and ht is None


def _args(B=2, T=8, H=2, K=16, V=8, dtype=jnp.float32):
  return (jnp.zeros((B, T, H, K), dtype), jnp.zeros((B, T, H, K), dtype),
          jnp.zeros((B, T, H, V), dtype), jnp.zeros((B, T, H), jnp.float32))


class InputErrorsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("both_gates", lambda q, k, v, g: (q, k, v, g), {"g_gamma": jnp.zeros(2)}, "at most one of g"),
      ("g_gla_shape", lambda q, k, v, g: (q, k, v, q), {}, "g must have shape \\[B, T, H\\]"),
      ("g_short", lambda q, k, v, g: (q, k, v, g[:, :4]), {}, "g must have shape"),
      ("g_gamma_shape", lambda q, k, v, g: (q, k, v, None), {"g_gamma": jnp.zeros((3,))},
       "g_gamma must have shape \\[H\\]"),
      ("g_gamma_2d", lambda q, k, v, g: (q, k, v, None), {"g_gamma": jnp.zeros((2, 8, 2))},
       "g_gamma must have shape"),
      ("g_gamma_int", lambda q, k, v, g: (q, k, v, None), {"g_gamma": jnp.zeros(2, jnp.int32)},
       "g_gamma must be a float"),
      ("g_int", lambda q, k, v, g: (q, k, v, g.astype(jnp.int32)), {}, "g must be float32"),
      ("g_f16", lambda q, k, v, g: (q, k, v, g.astype(jnp.float16)), {}, "g must be float32"),
      ("int_q", lambda q, k, v, g: (q.astype(jnp.int32), k, v, g), {}, "q must be float32"),
      ("mixed_dtype", lambda q, k, v, g: (q, k, v.astype(jnp.bfloat16), g), {}, "share one dtype"),
      ("v_shape", lambda q, k, v, g: (q, k, v[:, :4], g), {}, "v must have shape"),
      ("h0_shape", lambda *a: a, {"initial_state": jnp.zeros((2, 2, 8, 16))}, "initial_state must"),
      ("seg_dtype", lambda *a: a, {"segment_ids": jnp.zeros((2, 8))}, "integer dtype"),
      ("chunk", lambda *a: a, {"chunk_size": 40}, "chunk_size must be a positive multiple of 16"),
  )
  def test_bad_input_raises(self, edit, kwargs, message):
    for fn in (chunk_simple_gla, chunk_simple_gla_jnp, naive_recurrent_simple_gla,
               fused_recurrent_simple_gla):
      if fn in (naive_recurrent_simple_gla, fused_recurrent_simple_gla) and "chunk_size" in kwargs:
        continue
      with pytest.raises(ValueError, match=message):
        fn(*edit(*_args()), **kwargs)


if __name__ == "__main__":
  from absl.testing import absltest
  absltest.main()
