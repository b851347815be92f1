"""HGRN2 (HGRN2Attention, HGRN2Config) against the plain-jnp statement of fla's layer and model
(tests/gla_jax/refs/hgrn2.py): logits and every gradient, the per-layer lower bound, decoding, packed
documents, checkpoints, the 340M param count, config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.layers.mixers.hgrn2 import HGRN2Attention, layer_lower_bounds
from gla_jax.models.configs.hgrn2 import HGRN2Config, preset_340m
from tests.gla_jax.helpers import packed_segments
from tests.gla_jax.mixers import kind_checks as kc
from tests.gla_jax.refs.hgrn2 import hgrn2, lower_bound_of

TINY = HGRN2Config.tiny(initializer_range=0.1)
# short convs (no activation), heads given by num_heads, untied head
OPTIONS = HGRN2Config.tiny(initializer_range=0.1, expand_ratio=None, num_heads=4, use_short_conv=True,
                           tie_word_embeddings=False)


@pytest.mark.parametrize("config,packed", [(TINY, False), (OPTIONS, True)], ids=["tiny", "options_packed"])
def test_logits_and_grads_match_reference(config, packed):
  seg = packed_segments(2, 24, [7, 16]) if packed else None
  kc.check_parity(config, T=24, segment_ids=seg)


def test_layer_with_lower_bound_matches_reference():
  """Layer 1 with fla's lower bound: values and gradients w.r.t. x, the params and the bound."""
  raw = jax.random.normal(jax.random.key(1), (3, 32))  # a model's lower_bounds [L, D]
  lb = layer_lower_bounds(raw)[1]
  np.testing.assert_allclose(lb, lower_bound_of(raw, 1), rtol=1e-6)
  np.testing.assert_array_equal(layer_lower_bounds(raw)[0], 0.0)
  layer = HGRN2Attention(32, expand_ratio=8, use_short_conv=True, conv_bias=True, layer_idx=1,
                         use_lower_bound=True, init_std=0.2, rngs=nnx.Rngs(2))
  x = jax.random.normal(jax.random.key(0), (2, 20, 32))
  kc.check_layer_parity(layer, hgrn2, x, segment_ids=packed_segments(2, 20, [6]), lower_bound=lb,
                        expand_ratio=8, use_short_conv=True, layer_idx=1)


def test_lower_bound_required_and_layer0_ignores_it():
  x = jnp.ones((1, 4, 32))
  layer = HGRN2Attention(32, expand_ratio=8, layer_idx=1, use_lower_bound=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="lower_bound"):
    layer(x)
  with pytest.raises(ValueError, match="lower_bound"):
    layer(x, lower_bound=jnp.zeros((8,)))
  first = HGRN2Attention(32, expand_ratio=8, layer_idx=0, use_lower_bound=True, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(first(x)[0], first(x, lower_bound=jnp.full((32,), 0.5))[0])


def test_decode_equals_forward():
  kc.check_decode(OPTIONS)  # conv states and the GLA state carried across prefill / steps


def test_packed_equals_separate():
  kc.check_packed_equals_separate(OPTIONS)


def test_checkpoint_roundtrip(tmp_path):
  kc.check_roundtrip(OPTIONS, tmp_path)


def test_param_count_340m():
  cfg = preset_340m()
  D, Fd = cfg.hidden_size, cfg.forget_dim
  # fla HGRN2Attention: q_proj D·F, f_proj D·F, i_proj D·D, g_norm D, o_proj D·D (F = forget_dim)
  mixer = 2 * D * Fd + D * D + D + D * D
  # fla's model-level lower_bounds [L, D], once the trunk holds it (gla_jax/layers/mixers/hgrn2.py)
  model_level = cfg.num_hidden_layers * D if cfg.use_lower_bound else 0
  got = kc.param_count(cfg)
  assert got in (kc.trunk_count(cfg, mixer), kc.trunk_count(cfg, mixer) + model_level)
  assert kc.trunk_count(cfg, mixer) == 341_124_096


def test_config_fills_heads_like_fla():
  assert HGRN2Config(hidden_size=256, expand_ratio=64).num_heads == 4
  assert HGRN2Config(hidden_size=256, expand_ratio=None, num_heads=2).expand_ratio == 128


@pytest.mark.parametrize("kwargs,field", [
    (dict(expand_ratio=None), "num_heads"), (dict(num_heads=3), "num_heads"), (dict(attn_mode="x"), "attn_mode"),
    (dict(expand_ratio=0), "expand_ratio"), (dict(use_lower_bound=1), "use_lower_bound"),
    (dict(expand_ratio=48, use_lower_bound=True), "use_lower_bound"), (dict(chunk_size=10), "chunk_size"),
    (dict(conv_size=0), "conv_size")])
def test_bad_config_raises(kwargs, field):
  with pytest.raises(ValueError, match=field):
    HGRN2Config.tiny(**kwargs)


def test_model_lower_bounds_parity_and_decode():
  """fla's model-level lower_bounds [L, D] (a trunk param, `model.lower_bounds`): random values so that
  every layer ≥ 1 gets a nontrivial bound; logits, all gradients (the bounds' too) and decoding."""
  from tests.gla_jax import helpers as H  # pylint: disable=g-import-not-at-top
  cfg = HGRN2Config.tiny(initializer_range=0.1, num_hidden_layers=3, use_lower_bound=True, use_short_conv=True)
  orig = H.make_model

  def make(c, seed=0):
    m = orig(c, seed)
    m.lower_bounds[...] = jax.random.normal(jax.random.key(0), m.lower_bounds.shape)
    return m

  old = kc.make_model
  kc.make_model = make
  try:
    assert make(cfg).lower_bounds.shape == (3, 64)
    kc.check_parity(cfg, T=20, segment_ids=H.packed_segments(2, 20, [7]))
    kc.check_decode(cfg, T=8, prompt=3)
  finally:
    kc.make_model = old
