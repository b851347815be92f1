"""Op argument checks (issue 13 item 8): scale, output_final_state, chunk_size bounds, NumPy inputs with
every impl, float64 under x64. Each case failed (wrong acceptance, AttributeError or an unclear line)
before the checks in pallas_kernels/common/checks.py and the NumPy conversion in Op.__call__."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gla.ops import chunk_gla, fused_recurrent_gla
from pallas_kernels.linear_attn.ops import chunk_linear_attn, fused_recurrent_linear_attn
from pallas_kernels.simple_gla.ops import chunk_simple_gla, fused_recurrent_simple_gla

B, T, H, K, V = 1, 20, 2, 8, 4


def _np_inputs(seed=0):
  r = np.random.RandomState(seed)
  q = r.randn(B, T, H, K).astype(np.float32)
  k = r.randn(B, T, H, K).astype(np.float32)
  v = r.randn(B, T, H, V).astype(np.float32)
  g = -np.abs(r.randn(B, T, H, K)).astype(np.float32) / 4
  return q, k, v, g


def _calls(q, k, v, g):
  """(name, fn, args) for every op; g per key for GLA, per head for simple GLA, none for linear attn."""
  return (("chunk_gla", chunk_gla, (q, k, v, g)),
          ("fused_recurrent_gla", fused_recurrent_gla, (q, k, v, g)),
          ("chunk_simple_gla", chunk_simple_gla, (q, k, v, g[..., 0])),
          ("fused_recurrent_simple_gla", fused_recurrent_simple_gla, (q, k, v, g[..., 0])),
          ("chunk_linear_attn", chunk_linear_attn, (q, k, v)),
          ("fused_recurrent_linear_attn", fused_recurrent_linear_attn, (q, k, v)))


_JAX_CALLS = _calls(*(jnp.asarray(x) for x in _np_inputs()))


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), True, False, np.bool_(True), 0, -1.0,
                                   np.array(0.5), jnp.float32(0.5), "0.5"],
                         ids=lambda s: repr(s)[:24])
def test_scale_rejected(scale):
  for name, fn, args in _JAX_CALLS:
    with pytest.raises(ValueError, match="scale must be a positive finite real"):
      fn(*args, scale=scale)


@pytest.mark.parametrize("scale", [np.float32(0.5), np.float64(0.5), np.int32(2), 0.5, 2])
def test_scale_real_scalars_accepted_and_equal(scale):
  for name, fn, args in _JAX_CALLS:
    o = fn(*args, scale=scale)[0]
    ref = fn(*args, scale=float(scale))[0]
    np.testing.assert_array_equal(np.asarray(o), np.asarray(ref), err_msg=name)


@pytest.mark.parametrize("flag", [1, 0, "yes", None, jnp.array(True)], ids=repr)
def test_output_final_state_must_be_bool(flag):
  for name, fn, args in _JAX_CALLS:
    with pytest.raises(ValueError, match="output_final_state must be a bool"):
      fn(*args, output_final_state=flag)


def test_output_final_state_numpy_bool():
  for name, fn, args in _JAX_CALLS:
    assert fn(*args, output_final_state=np.bool_(True))[1] is not None, name


@pytest.mark.parametrize("chunk_size", [16384, 2048, 1040, True])
def test_chunk_size_bounded(chunk_size):
  for name, fn, args in _JAX_CALLS[::2]:  # the chunk ops
    with pytest.raises(ValueError, match="chunk_size must be a positive multiple of 16 and at most 1024"):
      fn(*args, chunk_size=chunk_size)


@pytest.mark.parametrize("impl", ["xla", "naive", "associative", "parallel"])
def test_numpy_inputs_with_every_impl(impl):
  """NumPy q, k, v, g, initial_state and segment_ids give what the same jax arrays give."""
  npx = _np_inputs()
  h0 = np.random.RandomState(1).randn(B, H, K, V).astype(np.float32)
  seg = np.repeat(np.array([[0] * 12 + [1] * 8], np.int32), B, 0)
  for (name, fn, nargs), (_, _, jargs) in zip(_calls(*npx), _JAX_CALLS):
    for kw in (dict(initial_state=h0), dict(segment_ids=seg)):
      if impl not in ("xla",) and name.startswith("fused"):
        continue  # the fused ops have one impl, "xla"
      o, ht = fn(*nargs, impl=impl, output_final_state=True, **kw)
      jkw = {key: jnp.asarray(val) for key, val in kw.items()}
      o_ref, ht_ref = fn(*jargs, impl=impl, output_final_state=True, **jkw)
      np.testing.assert_allclose(np.asarray(o), np.asarray(o_ref), rtol=1e-6, err_msg=f"{name} {impl}")
      np.testing.assert_allclose(np.asarray(ht), np.asarray(ht_ref), rtol=1e-6)


def test_numpy_normalized_linear_attn_state_pair():
  q, k, v, _ = _np_inputs()
  S0, z0 = np.zeros((B, H, K, V), np.float32), np.ones((B, H, K), np.float32)
  for impl in ("xla", "associative"):
    o, (S, z) = chunk_linear_attn(np.abs(q), np.abs(k), v, normalize=True, initial_state=(S0, z0),
                                  output_final_state=True, impl=impl)
    assert np.isfinite(np.asarray(o)).all() and z.shape == (B, H, K)


def test_float64_under_x64_is_named():
  q, k, v, g = (jnp.asarray(x) for x in _np_inputs())
  with jax.enable_x64(True):
    h0 = jnp.zeros((B, H, K, V), jnp.float64)
    assert h0.dtype == jnp.float64
    for name, fn, args in _JAX_CALLS:
      with pytest.raises(ValueError, match="initial_state must be a float array.*got float64 "
                                           r"\(float64 is not supported"):
        fn(*args, initial_state=h0)
    with pytest.raises(ValueError, match=r"q must be float32, bfloat16 or float16, got float64 \(float64"):
      chunk_gla(q.astype(jnp.float64), k, v, g)
    with pytest.raises(ValueError, match="g_gamma must be a float array.*got float64"):
      chunk_simple_gla(q, k, v, g_gamma=jnp.zeros((H,), jnp.float64))
    with pytest.raises(ValueError, match=r"initial_state\[1\] \(z\) must be a float array.*float64"):
      chunk_linear_attn(q, k, v, normalize=True,
                        initial_state=(jnp.zeros((B, H, K, V)), jnp.zeros((B, H, K), jnp.float64)))
