"""RetNet (MultiScaleRetention, RetNetConfig) against the plain-jnp statement of fla's layer
(tests/gla_jax/refs/retnet.py): logits and every gradient, decoding, packed documents, checkpoints,
the 340M param count, config errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from gla_jax.layers.mixers.retnet import MultiScaleRetention, retention_decay
from gla_jax.models.configs.retnet import RetNetConfig, preset_340m
from tests.gla_jax.helpers import packed_segments
from tests.gla_jax.mixers import kind_checks as kc
from tests.gla_jax.refs.retnet import retention

# a larger init than fla's 0.02 so that every sub-layer moves the logits
TINY = RetNetConfig.tiny(initializer_range=0.1)
# GQA, a q/k feature map, the unfused gate (fuse_norm False, silu: the norm is named g_norm), untied head
OPTIONS = RetNetConfig.tiny(initializer_range=0.1, num_heads=4, num_kv_heads=2, feature_map="relu",
                            fuse_norm=False, hidden_act="silu", tie_word_embeddings=False)


@pytest.mark.parametrize("config,packed", [(TINY, False), (OPTIONS, True)], ids=["tiny", "options_packed"])
def test_logits_and_grads_match_reference(config, packed):
  seg = packed_segments(2, 24, [7, 16]) if packed else None
  kc.check_parity(config, T=24, segment_ids=seg)


def test_layer_short_conv_no_gate_matches_reference():
  """The layer's short convs (fla's layer has them; its RetNet model never builds them), no output gate."""
  layer = MultiScaleRetention(32, num_heads=2, num_kv_heads=1, use_short_conv=True, conv_bias=True,
                              use_output_gate=False, init_std=0.2, rngs=nnx.Rngs(3))
  x = jax.random.normal(jax.random.key(0), (2, 20, 32))
  kc.check_layer_parity(layer, retention, x, segment_ids=packed_segments(2, 20, [6]), num_heads=2,
                        num_kv_heads=1, use_short_conv=True, use_output_gate=False)


def test_model_ignores_use_short_conv_like_fla():
  model = kc.make_model(RetNetConfig.tiny(use_short_conv=True))
  assert not any("conv" in "/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def test_decay_is_fla_formula():
  np.testing.assert_allclose(retention_decay(4), np.log(1 - 2.0 ** (-5.0 - np.arange(4))), rtol=1e-6)


def test_decode_equals_forward():
  kc.check_decode(OPTIONS)  # RoPE positions continue from the cache's offset


def test_packed_equals_separate():
  kc.check_packed_equals_separate(TINY)


def test_checkpoint_roundtrip(tmp_path):
  kc.check_roundtrip(OPTIONS, tmp_path)


def test_param_count_340m():
  cfg = preset_340m()
  D, H = cfg.hidden_size, cfg.num_heads
  Kd, Vd = cfg.key_dim, cfg.value_dim
  kv = (cfg.num_kv_heads or H)
  # fla MultiScaleRetention: q_proj D·Kd, k_proj D·Kd/G, v_proj D·Vd/G, g_proj D·Vd, o_proj Vd·D,
  # g_norm_swish_gate head_v_dim
  G = H // kv
  mixer = D * Kd + D * Kd // G + D * Vd // G + D * Vd + Vd * D + Vd // H
  expected = kc.trunk_count(cfg, mixer)
  assert kc.param_count(cfg) == expected == 347_397_120


@pytest.mark.parametrize("kwargs,field", [
    (dict(attn_mode="bogus"), "attn_mode"), (dict(feature_map="nope"), "feature_map"),
    (dict(expand_k=0.3), "expand_k"), (dict(num_heads=3), "num_heads"), (dict(num_kv_heads=3), "num_kv_heads"),
    (dict(chunk_size=20), "chunk_size"), (dict(use_output_gate=1), "use_output_gate"),
    (dict(expand_k=0.09375, num_heads=2), "head_k_dim"), (dict(conv_size=0), "conv_size")])
def test_bad_config_raises(kwargs, field):
  with pytest.raises(ValueError, match=field):
    RetNetConfig.tiny(**kwargs)
