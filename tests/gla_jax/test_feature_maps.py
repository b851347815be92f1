"""Feature maps (gla_jax/layers/feature_maps.py) against plain-jnp statements of fla 0.6.0's
`fla.modules.feature_map` / `elu_p1`, written here from fla's source: values and the gradients to the
input and to every parameter (random cotangents through jax.vjp), in float32.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.layers.feature_maps import FEATURE_MAP_NAMES, feature_map_dim, make_feature_map

_HI = jax.lax.Precision.HIGHEST
D = 8
SHAPE = (2, 5, 3, D)  # [B, T, H, d]
RTOL, ATOL = 1e-6, 1e-6


# ---- fla's formulas, restated (torch layout: weight [out, in]) --------------------------------------

def fla_linear(x, w, b=None):
  y = jnp.einsum("...i,oi->...o", x, w, precision=_HI)
  return y if b is None else y + b


def fla_softmax(z):
  e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
  return e / jnp.sum(e, axis=-1, keepdims=True)


def ref_identity(x):
  return x


def ref_elu(x):  # elu_p1: torch.where(x >= 0, x + 1, x.clamp_max(0).exp())
  return jnp.where(x >= 0, x + 1, jnp.exp(jnp.minimum(x, 0)))


def ref_relu(x):
  return jnp.maximum(x, 0)


def ref_hedgehog(x, weight, bias):  # y = 2·layer(x); cat([y, -y]).softmax(-1)
  y = 2 * fla_linear(x, weight, bias)
  return fla_softmax(jnp.concatenate([y, -y], -1))


def ref_t2r(x, weight):  # layer(x).relu(), nn.Linear(d, d, bias=False)
  return jnp.maximum(fla_linear(x, weight), 0)


def ref_hadamard(x, w1, b1, w2, b2):
  return fla_linear(x, w1, b1) * fla_linear(x, w2, b2)


def ref_dpfp(x, nu=4):
  """r = cat([relu(x), relu(-x)]); out[(j-1)·2d + i] = r[i] · r[(i - j) mod 2d] (torch.roll semantics)."""
  r = jnp.concatenate([jnp.maximum(x, 0), jnp.maximum(-x, 0)], -1)
  n = r.shape[-1]
  cols = []
  for j in range(1, nu + 1):
    for i in range(n):
      cols.append(r[..., i] * r[..., (i - j) % n])
  return jnp.stack(cols, -1)


def ref_taylor(x):
  """cat([1, x/d^¼, diag(xxᵀ)/(√d·√2), triu(xxᵀ, 1)/√d]), triu in torch.triu_indices' row-major order."""
  d = x.shape[-1]
  rd = math.sqrt(d)
  diag = [x[..., i] * x[..., i] for i in range(d)]
  off = [x[..., i] * x[..., j] for i in range(d) for j in range(i + 1, d)]
  return jnp.concatenate([jnp.ones(x.shape[:-1] + (1,)), x / math.sqrt(rd),
                          jnp.stack(diag, -1) / (rd * math.sqrt(2)), jnp.stack(off, -1) / rd], -1)


# ---- helpers ----------------------------------------------------------------------------------------

def _x(seed=0, shape=SHAPE):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _randomize(fm, seed=1):
  """Give every param random values (so identity init does not hide a transpose)."""
  graphdef, params, rest = nnx.split(fm, nnx.Param, ...)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [0.5 * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)


def _close(a, b, **kw):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=kw.get("rtol", RTOL),
                             atol=kw.get("atol", ATOL))


def _check(fm, ref, ref_params):
  """fm(x) vs ref(x, *ref_params(params)) on values and vjp to x and to the params."""
  x = _x()
  graphdef, params = nnx.split(fm, nnx.Param)

  def ours(x, params):
    return nnx.merge(graphdef, params)(x)

  def theirs(x, params):
    return ref(x, *ref_params(params))

  y, vjp = jax.vjp(ours, x, params)
  y_ref, vjp_ref = jax.vjp(theirs, x, params)
  assert y.shape == SHAPE[:-1] + (fm.out_dim,) and y.dtype == jnp.float32
  _close(y, y_ref)
  ct = jax.random.normal(jax.random.key(7), y.shape, jnp.float32)
  (gx, gp), (gx_ref, gp_ref) = vjp(ct), vjp_ref(ct)
  _close(gx, gx_ref)
  jax.tree.map(_close, gp, gp_ref)
  assert float(jnp.max(jnp.abs(gx))) > 0


def _t(p):  # our kernel [in, out] → torch weight [out, in]
  return p[...].T


# ---- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,ref", [("identity", ref_identity), (None, ref_identity), ("elu", ref_elu),
                                      ("relu", ref_relu), ("dpfp", ref_dpfp), ("taylor", ref_taylor)])
def test_parameter_free(name, ref):
  fm = make_feature_map(name, D)
  assert not jax.tree.leaves(nnx.state(fm, nnx.Param))
  _check(fm, ref, lambda p: ())


def test_hedgehog():
  fm = _randomize(make_feature_map("hedgehog", D, rngs=nnx.Rngs(0)))
  assert fm.layer.kernel.shape == (D, D) and fm.layer.bias.shape == (D,)
  _check(fm, ref_hedgehog, lambda p: (_t(p["layer"]["kernel"]), p["layer"]["bias"][...]))


def test_hedgehog_identity_init():
  fm = make_feature_map("hedgehog", D, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(fm.layer.kernel[...]), np.eye(D))
  np.testing.assert_array_equal(np.asarray(fm.layer.bias[...]), np.zeros(D))
  x = _x(3)
  _close(fm(x), fla_softmax(jnp.concatenate([2 * x, -2 * x], -1)))


def test_t2r():
  fm = _randomize(make_feature_map("t2r", D, rngs=nnx.Rngs(0)))
  assert fm.layer.kernel.shape == (D, D) and fm.layer.bias is None
  _check(fm, ref_t2r, lambda p: (_t(p["layer"]["kernel"]),))


def test_elementwise_product():
  fm = _randomize(make_feature_map("elementwise_product", D, rngs=nnx.Rngs(0)))
  _check(fm, ref_hadamard, lambda p: (_t(p["layer1"]["kernel"]), p["layer1"]["bias"][...],
                                      _t(p["layer2"]["kernel"]), p["layer2"]["bias"][...]))


def test_out_dims():
  d = 16
  want = {"identity": d, "elu": d, "relu": d, "hedgehog": 2 * d, "t2r": d, "elementwise_product": d,
          "dpfp": 2 * d * 4, "taylor": 1 + d + d * (d + 1) // 2}
  assert set(want) == set(FEATURE_MAP_NAMES)
  for name, n in want.items():
    fm = make_feature_map(name, d, rngs=nnx.Rngs(0))
    assert fm.out_dim == n == feature_map_dim(name, d), name
    assert fm(jnp.ones((3, d))).shape == (3, n), name
  assert feature_map_dim("taylor", 16) == 153


def test_taylor_kernel_is_exp_taylor():
  """φ(q)·φ(k) = 1 + s + s²/2, s = q·k/√d."""
  fm = make_feature_map("taylor", D)
  q, k = _x(1, (6, D)), _x(2, (6, D))
  s = jnp.sum(q * k, -1) / math.sqrt(D)
  _close(jnp.sum(fm(q) * fm(k), -1), 1 + s + s * s / 2, rtol=1e-5)


def test_inits():
  key = nnx.Rngs(0)
  t2r = make_feature_map("t2r", 64, rngs=key)
  w = np.asarray(t2r.layer.kernel[...])
  assert np.abs(w).max() <= 1 / 8 and w.std() > 0.05  # torch default U(±1/√d)
  hh = make_feature_map("hedgehog", 64, init_std=0.02, rngs=key)  # fla model-level _init_weights
  w = np.asarray(hh.layer.kernel[...])
  assert abs(w.std() - 0.02) < 0.002 and not np.asarray(hh.layer.bias[...]).any()
  assert hh.layer.kernel.get_metadata()["out_sharding"] == (None, None)  # replicated
  assert hh.layer.bias.get_metadata()["out_sharding"] == (None,)


def test_dtype_and_shape_errors():
  fm = make_feature_map("hedgehog", D, rngs=nnx.Rngs(0))
  assert fm(_x().astype(jnp.bfloat16)).dtype == jnp.bfloat16
  assert make_feature_map("taylor", D, dtype=jnp.float32)(_x().astype(jnp.bfloat16)).dtype == jnp.float32
  with pytest.raises(ValueError, match="head_dim"):
    fm(jnp.ones((2, D + 1)))
  with pytest.raises(ValueError, match="rngs"):
    make_feature_map("t2r", D)


@pytest.mark.parametrize("name", ["softmax", "elu_p1", "Hedgehog", ""])
def test_bad_name(name):
  with pytest.raises(ValueError, match="hedgehog.*taylor"):
    make_feature_map(name, D, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="feature_map"):
    feature_map_dim(name, D)
