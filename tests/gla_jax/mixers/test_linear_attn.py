"""linear_attn (fla's LinearAttention model): logits and every gradient = the fla-named reference
(tests/gla_jax/refs/linear_attn.py) for every feature map and option, decode = forward, packed =
separate, fla checkpoint and config round trips, the 340M parameter count, config errors.

The `check_*` functions are shared with test_based.py and test_hedgehog.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.convert import config_from_fla, config_to_fla, load_fla_checkpoint, save_fla_checkpoint
from gla_jax.layers.mixers import registry
from gla_jax.layers.mixers.linear_attn import LinearAttention
from gla_jax.models import build_model
from gla_jax.models.configs.linear_attn import LinearAttentionConfig, preset_340m
from tests.gla_jax import fla_reference
from tests.gla_jax.helpers import (fla_params, forward_both, make_model, named_grads, packed_segments,
                                   random_ids, rel_err)

# ---------------------------------------------------------------------------------------------------
# shared checks
# ---------------------------------------------------------------------------------------------------


def param_count(config) -> int:
  abstract = nnx.eval_shape(lambda rngs: build_model(config, rngs=rngs), nnx.Rngs(0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def trunk_count(D, L, vocab, mlp, tied=True) -> int:
  """fla's trunk: embeddings, per layer attn_norm + mlp_norm + SwiGLU (gate, up, down), final norm."""
  return vocab * D * (1 if tied else 2) + L * (2 * D + 3 * D * mlp) + D


def check_parity(cfg, T=23):
  """One jit: logits and every parameter's gradient of sum(logits · random cotangent), ours and the
  reference's (fla names); row 0 one document, row 1 three (packed). The packing must matter."""
  model = make_model(cfg)
  ids = jnp.concatenate([random_ids((1, T), cfg.vocab_size, seed=1)] * 2)
  seg = packed_segments(2, T, (8, 17)).at[0].set(0)
  cot = jax.random.normal(jax.random.key(2), (2, T, cfg.vocab_size))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def ours(p):
    logits = nnx.merge(graphdef, p, rest)(ids, segment_ids=seg)
    return jnp.sum(logits * cot), logits

  def ref(sd):
    logits = fla_reference.forward(sd, cfg, ids, seg)
    return jnp.sum(logits * cot), logits

  both = jax.jit(lambda p, sd: (jax.grad(ours, has_aux=True)(p), jax.grad(ref, has_aux=True)(sd)))
  (g_ours, l_ours), (g_ref, l_ref) = both(params, fla_params(model))
  assert rel_err(l_ours, l_ref) < 2e-5
  assert rel_err(l_ours[1, 8:], l_ours[0, 8:]) > 1e-3
  g_ours, g_ref = named_grads(model, g_ours), {k: np.asarray(v) for k, v in g_ref.items()}
  assert set(g_ours) == set(g_ref)
  for name in g_ref:
    assert rel_err(g_ours[name], g_ref[name]) < 1e-4, name
    assert np.any(g_ref[name] != 0), name  # every parameter is used


def check_logits_no_segments(cfg, T=19):
  """segment_ids=None (the op's own path): ours = the reference."""
  model = make_model(cfg)
  ids = random_ids((2, T), cfg.vocab_size, seed=4)
  ours, ref = forward_both(model, ids, None, cfg.kind)
  assert rel_err(ours, ref) < 2e-5


def check_decode(cfg, B=2, T=21, P=9, chunked=True):
  """prefill(P tokens) + decode_step = forward at every position; token by token from an empty cache."""
  model = make_model(cfg)
  ids = random_ids((B, T), cfg.vocab_size, seed=7)
  full = nnx.jit(lambda m, x: m(x))(model, ids)
  step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
  logits, cache = nnx.jit(lambda m, x: m.prefill(x, max_len=T))(model, ids[:, :P])
  outs = [logits]
  for t in range(P, T):
    step_logits, cache = step(model, ids[:, t], cache)
    outs.append(step_logits[:, None])
  assert int(cache.offset) == T
  assert rel_err(jnp.concatenate(outs, axis=1), full) < 2e-5
  cache, outs = model.init_cache(B, T), []
  for t in range(T):  # the T = 1 (recurrent op) path all the way
    step_logits, cache = step(model, ids[:, t:t + 1], cache)
    outs.append(step_logits[:, None])
  assert rel_err(jnp.concatenate(outs, axis=1), full) < 2e-5
  if not chunked:
    return model
  # a chunk of new tokens continues the cache too (T > 1 with a cache: the chunk op with a state)
  _, cache = nnx.jit(lambda m, x: m.prefill(x, max_len=T))(model, ids[:, :P])
  more, _ = nnx.jit(lambda m, x, c: m.forward_with_cache(x, c))(model, ids[:, P:], cache)
  assert rel_err(more, full[:, P:]) < 2e-5
  return model


def check_packed_equals_separate(cfg, T=30, cut=15):
  model = make_model(cfg)
  ids = random_ids((2, T), cfg.vocab_size, seed=3)
  fwd = nnx.jit(lambda m, x, s: m(x, segment_ids=s))
  packed = fwd(model, ids, packed_segments(2, T, (cut,)))
  one = jnp.zeros((2, cut), jnp.int32)
  assert rel_err(packed[:, :cut], fwd(model, ids[:, :cut], one)) < 1e-5
  second = fwd(model, ids[:, cut:], jnp.zeros((2, T - cut), jnp.int32))
  assert rel_err(packed[:, cut:], second) < 1e-5
  assert rel_err(fwd(model, ids, jnp.zeros((2, T), jnp.int32))[:, cut:], second) > 1e-3


def check_round_trips(cfg, tmp_path):
  """save_fla_checkpoint → load_fla_checkpoint: same config, params, logits; config dict round trip."""
  model = make_model(cfg)
  save_fla_checkpoint(model, str(tmp_path))
  back = load_fla_checkpoint(str(tmp_path), chunk_size=cfg.chunk_size)  # JAX-side fields: not saved
  assert back.config == cfg
  a = nnx.to_flat_state(nnx.state(model, nnx.Param))
  b = dict(nnx.to_flat_state(nnx.state(back, nnx.Param)))
  assert len(a) == len(b)
  for path, var in a:
    np.testing.assert_array_equal(var[...], b[path][...])
  ids = random_ids((2, 12), cfg.vocab_size, seed=5)
  fwd = nnx.jit(lambda m, x: m(x))
  np.testing.assert_array_equal(fwd(model, ids), fwd(back, ids))
  d = config_to_fla(cfg)
  assert d["model_type"] == cfg.model_type and d["architectures"] == [cfg.architecture]
  assert config_from_fla(d, chunk_size=cfg.chunk_size) == cfg
  return d


# ---------------------------------------------------------------------------------------------------
# linear_attn
# ---------------------------------------------------------------------------------------------------

def _cfg(**kw):
  return LinearAttentionConfig.tiny(**{**dict(chunk_size=16, initializer_range=0.1), **kw})


CASES = {
    "default": _cfg(num_hidden_layers=1),  # elementwise_product maps, untied q/k maps, plain op
    "dpfp_gqa_normqk_noaffine": _cfg(num_hidden_layers=1, num_heads=4, num_kv_heads=2, feature_map="dpfp",
                                     norm_q=True, norm_k=True, norm_feature_map=True, elementwise_affine=False,
                                     expand_k=0.5, tie_word_embeddings=False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_and_gradients_match_fla_reference(name):
  """(hedgehog, tied maps and GQA with the normalised op: test_hedgehog.py)"""
  check_parity(CASES[name])


@pytest.mark.parametrize("fmap, norm", [("t2r", False), ("elu", True),
                                        pytest.param("identity", False, marks=pytest.mark.slow),
                                        pytest.param("relu", False, marks=pytest.mark.slow)])
def test_other_feature_maps_match_reference(fmap, norm):
  check_logits_no_segments(_cfg(num_hidden_layers=1, feature_map=fmap, norm_feature_map=norm,
                                expand_v=2.0 if fmap == "t2r" else 1.0))


def test_decode_equals_forward():
  """Unnormalised op: state S only (normalised (S, z) and GQA: test_hedgehog.py, test_based.py)."""
  model = check_decode(CASES["default"], T=14, P=6)
  attn = model.layers[0].attn
  S = model.init_cache(3).layers[0].state
  assert S.shape == (3, 2, attn.head_k_dim, attn.head_v_dim) and S.dtype == jnp.float32
  assert model.init_cache(1).layers[0].conv == ()


def test_packed_equals_separate():
  check_packed_equals_separate(CASES["default"])


def test_checkpoint_and_config_round_trip(tmp_path):
  """(tied feature maps saved once: test_hedgehog.py)"""
  cfg = CASES["default"]
  d = check_round_trips(cfg, tmp_path)
  assert d["attn_mode"] == "fused_chunk" and d["feature_map"] == "elementwise_product"
  from safetensors.numpy import load_file
  names = set(load_file(str(tmp_path / "model.safetensors")))
  p = "model.layers.0.attn."
  assert {p + n for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "norm.weight")} <= names
  assert {p + f"feature_map_{s}.layer{i}.{w}" for s in "qk" for i in "12" for w in ("weight", "bias")} <= names
  # fla's config.json keys map one to one (fla-only keys ignored)
  fla_json = {**d, "fuse_linear_cross_entropy": False, "use_l2warp": False, "attnres_block_size": None}
  assert config_from_fla(fla_json, chunk_size=16) == cfg


def test_init_and_feature_map_init():
  layer = LinearAttention(64, num_heads=2, feature_map="hedgehog", init_std=0.02, rngs=nnx.Rngs(0))
  w = np.asarray(layer.feature_map_q.layer.kernel[...])
  assert abs(w.std() - 0.02) < 0.005  # fla's model post_init: N(0, initializer_range)
  np.testing.assert_array_equal(layer.feature_map_q.layer.bias[...], 0.0)
  np.testing.assert_array_equal(layer.norm.weight[...], 1.0)
  module = LinearAttention(64, num_heads=2, feature_map="hedgehog", feature_map_init="module", rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(module.feature_map_k.layer.kernel[...], np.eye(32))  # fla's identity init
  assert layer.feature_map_q is not layer.feature_map_k
  no_norm = LinearAttention(64, num_heads=2, output_norm="identity", rngs=nnx.Rngs(0))
  assert no_norm.norm is None and no_norm(jnp.ones((1, 5, 64)))[0].shape == (1, 5, 64)


def test_registry_and_340m_param_count():
  assert registry.mixer_class("linear_attn") is LinearAttention
  assert registry.config_class("linear_attn") is LinearAttentionConfig
  cfg = preset_340m()
  D, L, H, vocab = 1024, 24, 4, 32000
  K = V = D // H  # expand_k = expand_v = 1
  # fla: q, k, v, o [D, D]; HadamardFeatureMap × 2 (q, k): 2 × (2 Linear(K, K) with bias); norm [V]
  attn = 4 * D * D + 2 * 2 * (K * K + K) + V
  expected = trunk_count(D, L, vocab, 2816) + L * attn
  assert cfg.mlp_size == 2816 and expected == 347_421_696
  assert param_count(cfg) == expected


@pytest.mark.parametrize("field, value", [
    ("feature_map", "taylor"), ("feature_map", "gelu"), ("attn_mode", "parallel"), ("norm_q", 1),
    ("tie_feature_map_qk", "yes"), ("norm_feature_map", None), ("expand_k", 0.3), ("num_heads", 3),
    ("num_kv_heads", 3), ("chunk_size", 24), ("attn_impl", ""), ("hidden_act", "gelu"),
])
def test_bad_config_values_raise(field, value):
  with pytest.raises(ValueError, match=field if field != "expand_k" else "expand_k"):
    LinearAttentionConfig.tiny(**{field: value})


def test_bad_layer_arguments_raise():
  for kw, field in [(dict(feature_map="taylor"), "feature_map"), (dict(output_norm="layernorm"), "output_norm"),
                    (dict(mode="parallel"), "mode"), (dict(feature_map_init="eye"), "feature_map_init"),
                    (dict(num_kv_heads=3), "num_heads"), (dict(norm_q=1), "norm_q")]:
    with pytest.raises(ValueError, match=field):
      LinearAttention(64, num_heads=2, rngs=nnx.Rngs(0), **kw)
  assert dataclasses.replace(_cfg(), attn_mode="chunk").attn_mode == "chunk"
