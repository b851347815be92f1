"""Every form of the GLA op against the specification (`naive_recurrent_gla`): outputs, final state and
the gradients dq, dk, dv, dg, dh0, over odd lengths, K ≠ V, three gate strengths, initial states,
packed documents and bf16; plus chunk-size invariance, document independence, dispatch and errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from pallas_kernels.gla import (chunk_gla, chunk_gla_jnp, fused_recurrent_gla, naive_associative_gla,
                                naive_parallel_gla, naive_recurrent_gla)
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.checks import check_gla_inputs
from pallas_kernels.gla import ops
from tests.pallas_kernels.gla_testing import (Case, assert_all_close, check_packed_equals_separate,
                                              make_inputs, outputs_and_grads, reference)

F32_TOL = 1e-5
BF16_TOL = {"o": 1e-2, "final_state": 1e-2, "dq": 2e-2, "dk": 2e-2, "dv": 2e-2, "dg": 3e-2,
            "dh0": 1e-2}

FORMS = {
    "xla": chunk_gla_jnp,
    "associative": naive_associative_gla,
    "parallel": naive_parallel_gla,
    "fused_recurrent": fused_recurrent_gla,
}

CASES = [
    # every required T, with an initial state and packed documents
    *[Case(T=T, K=16, V=16, h0=True, seg=True) for T in (1, 15, 63, 64, 130, 257)],
    # head dims, K ≠ V (small B·H where large)
    Case(T=130, K=64, V=64, gate="weak"),
    Case(T=130, K=128, V=64, seg=True),
    Case(T=63, K=64, V=256, gate="weak", h0=False, seg=True, B=1),
    Case(T=64, K=256, V=512, B=1, H=1, seg=True),
    # gate strengths, with and without state / documents
    Case(T=130, K=32, V=32, gate="weak", h0=False),
    Case(T=130, K=32, V=48, gate="strong"),
    Case(T=257, K=32, V=16, gate="strong", seg=True, h0=False, B=1),
    Case(T=100, K=16, V=32, gate="normal", h0=False, seg=False),
]
BF16_CASES = [
    Case(T=130, K=64, V=64, gate="weak", seg=True, dtype="bfloat16"),
    Case(T=257, K=32, V=128, gate="normal", h0=True, dtype="bfloat16", B=1),
    Case(T=63, K=16, V=16, gate="strong", seg=True, dtype="bfloat16"),
]


def _form_cases(cases):
  """Every form on every case, except the memory- or compile-heavy references at long T (the
  associative scan's gradient takes ~10 s to compile per case on CPU)."""
  skip = lambda form, c: ((form == "parallel" and c.T > 130 and c.K * c.V > 4096)
                          or (form == "associative" and c.T > 64))
  return [(f"{form}_{c.id}", form, c) for c in cases for form in FORMS if not skip(form, c)]


class FormsMatchSpecTest(parameterized.TestCase):

  @parameterized.named_parameters(*_form_cases(CASES))
  def test_float32(self, form, case):
    got = jax.jit(functools.partial(outputs_and_grads, FORMS[form]))(*make_inputs(case))
    assert_all_close(got, reference(case), F32_TOL)

  @parameterized.named_parameters(*_form_cases(BF16_CASES))
  def test_bfloat16(self, form, case):
    got = jax.jit(functools.partial(outputs_and_grads, FORMS[form]))(*make_inputs(case))
    if form in ("xla", "fused_recurrent"):  # the op contract: o in v's dtype, state in float32
      assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32
    assert all(x.dtype == jnp.bfloat16 for x in got[2:5])
    assert_all_close(got, reference(case), BF16_TOL)


class VariantsTest(chex.TestCase):
  """The public op with and without jit (chex.variants), through `chunk_gla`'s dispatch."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("xla", "xla", Case(T=70, K=32, V=16, seg=True)),
      ("naive", "naive", Case(T=33, K=16, V=24)),
      ("associative", "associative", Case(T=33, K=16, V=24, seg=True)),
      ("parallel", "parallel", Case(T=33, K=16, V=24, gate="strong")),
  )
  def test_chunk_gla_impl(self, impl, case):
    fn = self.variant(functools.partial(outputs_and_grads, functools.partial(chunk_gla, impl=impl)))
    assert_all_close(fn(*make_inputs(case)), reference(case), F32_TOL)


class ChunkSizeInvarianceTest(parameterized.TestCase):

  @parameterized.parameters(("normal", True), ("strong", False), ("weak", True))
  def test_chunk_sizes_agree(self, gate, seg):
    case = Case(T=150, K=32, V=16, gate=gate, seg=seg)
    inputs = make_inputs(case)
    results = {C: jax.jit(functools.partial(outputs_and_grads, chunk_gla_jnp, chunk_size=C))(*inputs)
               for C in (16, 32, 64, 128)}
    for C in (16, 32, 128):
      assert_all_close(results[C], results[64], F32_TOL)


class DocumentsTest(parameterized.TestCase):

  @parameterized.parameters("xla", "naive", "associative", "parallel")
  def test_packed_equals_separate(self, impl):
    """Packed documents give exactly what running each document alone gives."""
    check_packed_equals_separate(functools.partial(chunk_gla, impl=impl))

  @parameterized.parameters("xla", "associative", "parallel")
  def test_no_gradient_across_documents(self, impl):
    case = Case(T=80, K=16, V=16, B=1, H=1)
    q, k, v, g, _, _, _, _ = make_inputs(case)
    seg = jnp.concatenate([jnp.zeros((1, 37), jnp.int32), jnp.ones((1, 43), jnp.int32)], axis=1)
    loss = lambda q, k, v, g: chunk_gla(q, k, v, g, segment_ids=seg, impl=impl)[0][:, 37:].sum()
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, g)
    for name, d in zip("qkvg", grads):
      assert float(jnp.abs(d[:, :37]).max()) == 0.0, f"d{name} leaks into the first document"
      assert float(jnp.abs(d[:, 37:]).max()) > 0.0


class FusedRecurrentTest(parameterized.TestCase):

  def test_decode_steps_equal_full_sequence(self):
    case = Case(T=12, K=16, V=32, h0=True, B=2, H=2)
    q, k, v, g, h0, _, _, _ = make_inputs(case)
    o_full, ht_full = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    h, outs = h0, []
    for t in range(case.T):
      o_t, h = fused_recurrent_gla(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], g[:, t:t + 1],
                                   initial_state=h, output_final_state=True)
      outs.append(o_t)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), o_full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, ht_full, rtol=1e-5, atol=1e-5)


class DispatchTest(parameterized.TestCase):

  @parameterized.parameters("cpu", "gpu", "tpu")
  def test_auto_picks_a_supporting_impl(self, platform):
    info = check_gla_inputs(*make_inputs(Case(T=64))[:4])
    chosen = ops.select_impl(info, "auto", platform=platform)
    preferred = [n for n in ops.CHUNK_GLA.auto_order[platform] if ops.CHUNK_GLA.lookup(n) is not None
                 and platform in ops.CHUNK_GLA.lookup(n).platforms and ops.CHUNK_GLA.lookup(n).check(info) is None
                 and (ops.CHUNK_GLA.lookup(n).auto_check is None or ops.CHUNK_GLA.lookup(n).auto_check(info) is None)]
    assert chosen.name == preferred[0]
    assert platform in chosen.platforms

  def test_auto_never_picks_interpreted_kernels_on_cpu(self):
    info = check_gla_inputs(*make_inputs(Case(T=64))[:4])
    assert ops.select_impl(info, "auto", platform="cpu").name == "xla"

  def test_explicit_impl_that_cannot_serve_raises(self):
    q = jnp.zeros((1, 1100, 1, 16)); v = jnp.zeros((1, 1100, 1, 16))
    with pytest.raises(ValueError, match="impl='parallel' cannot serve this call"):
      chunk_gla(q, q, v, q, impl="parallel")

  def test_unknown_impl(self):
    q = jnp.zeros((1, 8, 1, 16))
    with pytest.raises(ValueError, match="impl must be 'auto' or one of"):
      chunk_gla(q, q, q, q, impl="cuda_magic")

  def test_kernel_impl_on_wrong_platform(self):
    fake = Implementation("fake_gpu_kernel", lambda info, *a, **kw: chunk_gla_jnp(*a, **kw),
                          platforms=frozenset({"gpu"}))
    ops.CHUNK_GLA.register(fake)
    try:
      q = jnp.zeros((1, 8, 1, 16))
      with pytest.raises(ValueError, match="runs on \\['gpu'\\], not on cpu"):
        chunk_gla(q, q, q, q, impl="fake_gpu_kernel")
    finally:
      ops.CHUNK_GLA.registry.pop("fake_gpu_kernel")


def _args(B=2, T=8, H=2, K=16, V=8, dtype=jnp.float32):
  return (jnp.zeros((B, T, H, K), dtype), jnp.zeros((B, T, H, K), dtype),
          jnp.zeros((B, T, H, V), dtype), jnp.zeros((B, T, H, K), jnp.float32))


class InputErrorsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("q_rank", lambda q, k, v, g: (q[0], k, v, g), {}, "q must have shape"),
      ("k_shape", lambda q, k, v, g: (q, k[:, :4], v, g), {}, "k must have the shape of q"),
      ("g_shape", lambda q, k, v, g: (q, k, v, g[..., :8]), {}, "g must have the shape of q"),
      ("v_shape", lambda q, k, v, g: (q, k, v[:, :4], g), {}, "v must have shape"),
      ("int_q", lambda q, k, v, g: (q.astype(jnp.int32), k, v, g), {}, "q must be float32"),
      ("mixed_dtype", lambda q, k, v, g: (q, k, v.astype(jnp.bfloat16), g), {}, "share one dtype"),
      ("h0_shape", lambda *a: a, {"initial_state": jnp.zeros((2, 2, 8, 16))}, "initial_state must"),
      ("seg_shape", lambda *a: a, {"segment_ids": jnp.zeros((2, 7), jnp.int32)}, "segment_ids must"),
      ("seg_dtype", lambda *a: a, {"segment_ids": jnp.zeros((2, 8))}, "integer dtype"),
      ("chunk", lambda *a: a, {"chunk_size": 40}, "chunk_size must be a positive multiple of 16"),
      ("scale", lambda *a: a, {"scale": -1.0}, "scale must be a positive"),
  )
  def test_bad_input_raises(self, edit, kwargs, message):
    for fn in (chunk_gla, chunk_gla_jnp, naive_recurrent_gla):
      if fn is naive_recurrent_gla and "chunk_size" in kwargs:
        continue
      with pytest.raises(ValueError, match=message):
        fn(*edit(*_args()), **kwargs)


if __name__ == "__main__":
  from absl.testing import absltest
  absltest.main()
