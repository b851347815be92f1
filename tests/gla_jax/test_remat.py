"""Remat policies (gla_jax/layers/remat.py): what a scanned model's backward keeps per layer, that
"dots_and_op_out" keeps the mixers' op outputs and nothing float32 of [B, T, ·] per layer, that every
policy gives the same gradients, the large presets' defaults, and the warning for a scanned model
without remat."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.layers import remat as remat_lib
from gla_jax.models import build_model, presets

B, T, L = 2, 64, 3


def _cfg(kind: str, **kw):
  base = dict(num_hidden_layers=L, dtype="bfloat16", scan_layers=True)
  if kind == "gla":
    return presets.gla_tiny(hidden_size=128, num_heads=2, **{**base, **kw})
  return presets.tiny(kind, hidden_size=128, **{**base, **kw})


def _residuals(cfg):
  """The avals the backward of mean(logits) closes over (jax.vjp's residuals), traced, not run."""
  model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model, nnx.Param)
  ids = jnp.zeros((B, T), jnp.int32)
  loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(ids).astype(jnp.float32))
  return jax.make_jaxpr(lambda p: jax.vjp(loss, p)[1])(params).out_avals


def _layer_bytes(avals, dtype=None):
  """Bytes of the residuals stacked over the L layers with a [B, T, …] activation behind the layer axis."""
  return sum(a.size * a.dtype.itemsize for a in avals
             if a.shape[:3] == (L, B, T) and (dtype is None or a.dtype == dtype))


@pytest.mark.parametrize("kind", ["gla", "mamba2"])
def test_dots_and_op_out_keeps_the_op_output_and_no_float32_activations(kind):
  cfg = _cfg(kind, remat=True, remat_policy="dots_and_op_out")
  kept = _residuals(cfg)
  none = _residuals(_cfg(kind, remat=False))
  dots = _residuals(_cfg(kind, remat=True, remat_policy="dots_saveable"))
  # the chunk op's o [L, B, T, H, V] in the compute dtype: kept by the name, not by dots_saveable
  o_like = lambda avals: [a for a in avals if a.ndim == 5 and a.shape[:3] == (L, B, T) and a.dtype == jnp.bfloat16]
  assert len(o_like(kept)) == len(o_like(dots)) + 1, (o_like(kept), o_like(dots))
  assert _layer_bytes(kept, jnp.float32) == 0, [a for a in kept if a.shape[:3] == (L, B, T)]
  # without remat a scanned layer keeps its float32 intermediates too: several times the bytes
  assert _layer_bytes(none) > 2.5 * _layer_bytes(kept), (_layer_bytes(none), _layer_bytes(kept))
  assert _layer_bytes(dots) < _layer_bytes(kept)


def _grads(cfg, params, ids, w):
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))
  return jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(ids) * w))(params)


@functools.lru_cache(maxsize=None)
def _grad_inputs(scan: bool):
  """The float32 no-remat model's params and a weighted-logits loss's inputs (shared by the policies)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = build_model(_cfg("gla", remat=False, dtype="float32", scan_layers=scan), rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return (params, jax.random.randint(jax.random.key(1), (B, T), 0, 256),
          jax.random.normal(jax.random.key(2), (B, T, 256)))


@functools.lru_cache(maxsize=None)
def _reference_grads(scan: bool):
  """The no-remat model's gradients, once per layout (every policy is compared with them)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return _grads(_cfg("gla", remat=False, dtype="float32", scan_layers=scan), *_grad_inputs(scan))


@pytest.mark.parametrize("policy,scan", [("dots_and_op_out", True), ("dots_saveable", True), ("full", True),
                                         ("dots_and_op_out", False)])
def test_policies_give_the_same_gradients(policy, scan):
  ref_cfg = _cfg("gla", remat=False, dtype="float32", scan_layers=scan)
  cfg = dataclasses.replace(ref_cfg, remat=True, remat_policy=policy)
  params, ids, w = _grad_inputs(scan)
  want = _reference_grads(scan)
  got = _grads(cfg, params, ids, w)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    scale = float(np.max(np.abs(b))) + 1e-12
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_policy_names():
  assert remat_lib.policy("full") is None
  assert remat_lib.policy("dots_saveable") is jax.checkpoint_policies.dots_saveable
  assert callable(remat_lib.policy("dots_and_op_out"))
  with pytest.raises(ValueError, match="remat_policy must be one of"):
    remat_lib.policy("dots")
  with pytest.raises(ValueError, match="remat_policy must be one of"):
    presets.gla_tiny(remat=True, remat_policy="everything")


def test_large_presets_scan_with_remat_and_small_ones_do_not():
  for cfg in (presets.gla_340m(), presets.preset_340m("retnet"), presets.gla_1p3b()):
    assert (cfg.scan_layers, cfg.remat, cfg.remat_policy) == (True, True, "dots_and_op_out")
  assert not presets.gla_tiny().scan_layers and not presets.gla_tiny().remat
  assert presets.gla_340m(remat=False).remat is False  # an override wins


def test_scanned_model_without_remat_warns():
  with pytest.warns(UserWarning, match="scan_layers without remat"):
    nnx.eval_shape(lambda: build_model(presets.gla_tiny(scan_layers=True), rngs=nnx.Rngs(0)))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    nnx.eval_shape(lambda: build_model(presets.gla_tiny(scan_layers=True, remat=True), rngs=nnx.Rngs(0)))
