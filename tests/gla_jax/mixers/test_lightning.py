"""Lightning attention (LightningAttention, LightningConfig; our design, fla has no such layer) against
the plain-jnp statement of its math (tests/gla_jax/refs/lightning.py): logits and every gradient,
decoding, packed documents, checkpoints, the 340M param count, config errors."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from gla_jax.layers.mixers.lightning import LightningAttention, lightning_decay
from gla_jax.models.configs.lightning import LightningConfig, preset_340m
from tests.gla_jax.helpers import packed_segments
from tests.gla_jax.mixers import kind_checks as kc

TINY = LightningConfig.tiny(initializer_range=0.1)
# GQA, short convs with bias, no feature map, unfused gate name (g_norm), untied head, 3 layers (3 decays)
OPTIONS = LightningConfig.tiny(initializer_range=0.1, num_hidden_layers=3, num_heads=4, num_kv_heads=2,
                               use_short_conv=True, conv_bias=True, feature_map=None, fuse_norm=False,
                               tie_word_embeddings=False)


@pytest.mark.parametrize("config,packed", [(TINY, False), (OPTIONS, True)], ids=["tiny", "options_packed"])
def test_logits_and_grads_match_reference(config, packed):
  seg = packed_segments(2, 24, [7, 16]) if packed else None
  kc.check_parity(config, T=24, segment_ids=seg)


def test_decay_is_fla_formula():
  """fla's chunk_lightning_attn: g_gamma = −(8 / H · (1 − layer_idx / L)) · arange(H)."""
  H, L = 4, 3
  for i in range(L):
    np.testing.assert_allclose(lightning_decay(H, i, L), -(8 / H * (1 - i / L)) * np.arange(H), rtol=1e-6)
  model = kc.make_model(OPTIONS)
  assert [b.attn.layer_idx for b in model.layers] == [0, 1, 2]
  assert all(b.attn.num_layers == 3 for b in model.layers)


def test_decode_equals_forward():
  kc.check_decode(OPTIONS)  # conv states and the state carried across prefill / steps


def test_packed_equals_separate():
  kc.check_packed_equals_separate(OPTIONS)


def test_checkpoint_roundtrip(tmp_path):
  kc.check_roundtrip(OPTIONS, tmp_path)


def test_param_count_340m():
  cfg = preset_340m()
  D, H = cfg.hidden_size, cfg.num_heads
  Kd, Vd = cfg.key_dim, cfg.value_dim
  # q_proj D·Kd, k_proj D·Kd, v_proj D·Vd, g_proj D·Vd, o_proj Vd·D, g_norm_swish_gate head_v_dim
  mixer = 2 * D * Kd + 2 * D * Vd + Vd * D + Vd // H
  assert kc.param_count(cfg) == kc.trunk_count(cfg, mixer) == 366_268_416


@pytest.mark.parametrize("kwargs,field", [
    (dict(feature_map="nope"), "feature_map"), (dict(expand_v=0.3), "expand_v"), (dict(num_heads=3), "num_heads"),
    (dict(num_kv_heads=3), "num_kv_heads"), (dict(chunk_size=8), "chunk_size"), (dict(conv_bias=1), "conv_bias"),
    (dict(attn_impl=""), "attn_impl"), (dict(conv_size=0), "conv_size")])
def test_bad_config_raises(kwargs, field):
  with pytest.raises(ValueError, match=field):
    LightningConfig.tiny(**kwargs)


def test_bad_layer_index_raises():
  with pytest.raises(ValueError, match="layer_idx"):
    LightningAttention(32, num_heads=2, layer_idx=2, num_layers=2, rngs=nnx.Rngs(0))
