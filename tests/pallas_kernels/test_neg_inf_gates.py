"""g = −inf gates (legal: exp = 0, a full reset) in every form and kernel of chunk_gla and chunk_simple_gla
(issue 13 item 4): no NaN in o, the final state or any gradient, and equal to the naive spec.

The −inf entries sit at random places and on the first / last row of sub-chunks and chunks (for half the
features of one head), with packed documents and an initial state. The GLA Triton and TPU kernels
(interpret mode) returned NaN almost everywhere before they floored the gates (`G_FLOOR`); the jnp forms
and the simple-GLA kernels already held. chunk_linear_attn has no gate, so nothing here applies to it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gla.naive import naive_recurrent_gla
from pallas_kernels.gla.ops import chunk_gla, fused_recurrent_gla
from pallas_kernels.simple_gla.naive import naive_recurrent_simple_gla
from pallas_kernels.simple_gla.ops import chunk_simple_gla, fused_recurrent_simple_gla
from tests.pallas_kernels.gla_testing import NAMES, Case, make_inputs, outputs_and_grads


@functools.lru_cache(maxsize=None)
def _inputs(T: int, scalar: bool, boundaries: tuple[int, ...]):
  q, k, v, g, h0, seg, do, dht = make_inputs(Case(T=T, K=16, V=16, gate="normal", h0=True, seg=True,
                                                   B=1, H=2))
  gm = np.asarray(g).copy()
  mask = np.random.RandomState(0).rand(*gm.shape) < 0.1
  mask[:, list(boundaries), 0, :8] = True
  gm[mask] = -np.inf
  g = jnp.asarray(gm[..., 0] if scalar else gm)
  return q, k, v, g, h0, seg, do, dht


def _run(fn, x):
  return jax.jit(functools.partial(outputs_and_grads, fn))(*x)


@functools.lru_cache(maxsize=None)
def _spec(scalar: bool, T: int, boundaries):
  ref = naive_recurrent_simple_gla if scalar else naive_recurrent_gla
  return tuple(np.asarray(a) for a in _run(ref, _inputs(T, scalar, boundaries)))


def _check(fn, scalar: bool, T: int, boundaries, tol: float):
  got = _run(fn, _inputs(T, scalar, boundaries))
  for name, a, b in zip(NAMES, got, _spec(scalar, T, boundaries)):
    a = np.asarray(a)
    assert not np.isnan(a).any(), f"{name}: {np.isnan(a).sum()} NaN of {a.size}"
    assert np.isfinite(b).all()
    err = np.abs(a - b).max() / max(1.0, np.abs(b).max())
    assert err <= tol, f"{name}: error {err:.2e} > {tol}"


# jnp forms: T = 40 in chunks of 32 (two chunks, two 16-row sub-chunks each)
JNP_T, JNP_EDGES = 40, (0, 15, 16, 31, 32, 39)
JNP_FORMS = [
    ("gla_xla", functools.partial(chunk_gla, impl="xla", chunk_size=32), False),
    ("gla_naive", functools.partial(chunk_gla, impl="naive"), False),
    ("gla_associative", functools.partial(chunk_gla, impl="associative"), False),
    ("gla_parallel", functools.partial(chunk_gla, impl="parallel"), False),
    ("gla_fused_recurrent", fused_recurrent_gla, False),
    ("simple_gla_xla", functools.partial(chunk_simple_gla, impl="xla", chunk_size=32), True),
    ("simple_gla_associative", functools.partial(chunk_simple_gla, impl="associative"), True),
    ("simple_gla_parallel", functools.partial(chunk_simple_gla, impl="parallel"), True),
    ("simple_gla_fused_recurrent", fused_recurrent_simple_gla, True),
]


@pytest.mark.parametrize("name,fn,scalar", JNP_FORMS, ids=[f[0] for f in JNP_FORMS])
def test_jnp_forms(name, fn, scalar):
  _check(fn, scalar, JNP_T, JNP_EDGES, 1e-5)


# kernels in interpret mode: T = 70 (two 64-token chunks, the second padded)
KERNEL_T, KERNEL_EDGES = 70, (0, 15, 16, 63, 64, 69)


def _kernel(which: str):
  if which == "gla_triton":
    from pallas_kernels.gla.triton import chunk_gla_triton
    return functools.partial(chunk_gla_triton, interpret=True), False
  if which == "gla_tpu":
    from pallas_kernels.gla.tpu import chunk_gla_tpu
    return functools.partial(chunk_gla_tpu, interpret=True, detect_races=False), False
  if which == "simple_gla_triton":
    from pallas_kernels.simple_gla.triton import chunk_simple_gla_triton
    return functools.partial(chunk_simple_gla_triton, interpret=True), True
  from pallas_kernels.simple_gla.tpu import chunk_simple_gla_tpu
  return functools.partial(chunk_simple_gla_tpu, interpret=True, detect_races=False), True


@pytest.mark.parametrize("which", ["gla_triton", "gla_tpu", "simple_gla_triton", "simple_gla_tpu"])
def test_kernels_interpreted(which):
  fn, scalar = _kernel(which)
  # GLA kernels: gates floored at −60 run the two-level path, cumsums up to ~60·(−inf entries per chunk)
  _check(fn, scalar, KERNEL_T, KERNEL_EDGES, 1e-4)


def test_finite_gates_unchanged_by_the_floor():
  """The floor only touches gates below −60: ordinary gates give bit-identical kernel results."""
  from pallas_kernels.gla.triton import ops as triton_ops
  q, k, v, g, h0, seg, *_ = make_inputs(Case(T=20, K=16, V=16, h0=True, seg=True, B=1, H=1))
  g = g.at[0, 3].set(-59.5)
  gp = triton_ops.prepare(q, k, v, g, initial_state=h0, segment_ids=seg)[1][3]
  np.testing.assert_array_equal(np.asarray(gp[:, :20, :, :16]), np.asarray(g))
  g2 = g.at[0, 5, 0, 2].set(-jnp.inf).at[0, 6, 0, 3].set(-1e4)
  gp2 = triton_ops.prepare(q, k, v, g2, initial_state=h0, segment_ids=seg)[1][3]
  assert float(gp2[0, 5, 0, 2]) == float(gp2[0, 6, 0, 3]) == -60.0


def test_issue_minimal_case():
  """q = k = v = ones(1, 64, 1, 2), one g entry −inf: chunk_gla's xla form gave 96/128 NaN (issue 13)."""
  x = jnp.ones((1, 64, 1, 2))
  g = jnp.zeros((1, 64, 1, 2)).at[0, 5, 0, 0].set(-jnp.inf)
  want, want_ht = naive_recurrent_gla(x, x, x, g, output_final_state=True)
  o, ht = jax.jit(functools.partial(chunk_gla, impl="xla", output_final_state=True))(x, x, x, g)
  np.testing.assert_allclose(np.asarray(o), np.asarray(want), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ht), np.asarray(want_ht), rtol=1e-5)
