"""hedgehog (our model_type; fla's LinearAttention with the Hedgehog map, normalised): logits and every
gradient = the fla-named reference, decode = forward, packed = separate, round trips (and the same
model as an fla linear_attn config), the 340M parameter count, config errors."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from gla_jax.convert import config_from_fla, config_to_fla
from gla_jax.layers.mixers import registry
from gla_jax.layers.mixers.hedgehog import HedgehogAttention
from gla_jax.layers.mixers.linear_attn import LinearAttention
from gla_jax.models.configs.hedgehog import HedgehogConfig, preset_340m
from gla_jax.models.configs.linear_attn import LinearAttentionConfig
from tests.gla_jax.helpers import make_model, random_ids
from tests.gla_jax.mixers.test_linear_attn import (check_decode, check_packed_equals_separate, check_parity,
                                                   check_round_trips, param_count, trunk_count)

# tied q/k maps (fla: one module), GQA, normalised op, untied embeddings
CFG = HedgehogConfig.tiny(chunk_size=16, initializer_range=0.1, num_hidden_layers=1, num_heads=4, num_kv_heads=2,
                          tie_feature_map_qk=True, tie_word_embeddings=False)


def test_logits_and_gradients_match_fla_reference():
  check_parity(CFG)


def test_decode_equals_forward():
  model = check_decode(HedgehogConfig.tiny(chunk_size=16, initializer_range=0.1, num_hidden_layers=1,
                                           num_heads=4, num_kv_heads=2), T=14, P=6)
  S, z = model.init_cache(2).layers[0].state
  assert S.shape == (2, 4, 32, 16) and z.shape == (2, 4, 32)  # K_φ = 2 · 16


def test_packed_equals_separate():
  check_packed_equals_separate(HedgehogConfig.tiny(chunk_size=16, initializer_range=0.1, num_hidden_layers=1))


def test_round_trips_and_fla_linear_attn_equivalence(tmp_path):
  d = check_round_trips(CFG, tmp_path)
  from safetensors.numpy import load_file
  names = set(load_file(str(tmp_path / "model.safetensors")))
  assert "model.layers.0.attn.feature_map_q.layer.weight" in names  # tied: one module, saved once
  assert not any("feature_map_k" in n for n in names)
  assert d["model_type"] == "hedgehog" and d["feature_map"] == "hedgehog" and d["norm_feature_map"] is True
  la = CFG.to_linear_attn()
  assert type(la) is LinearAttentionConfig and la.feature_map == "hedgehog"
  # fla's linear_attn model type stays LinearAttentionConfig: no ambiguity in config_from_fla
  assert type(config_from_fla(config_to_fla(la))) is LinearAttentionConfig
  # the same weights give the same logits as the linear_attn model
  a, b = make_model(CFG), make_model(la)
  ids = random_ids((1, 9), CFG.vocab_size)
  fwd = nnx.jit(lambda m, x: m(x))
  np.testing.assert_array_equal(fwd(a, ids), fwd(b, ids))


def test_layer_is_linear_attention_with_hedgehog_defaults():
  assert registry.mixer_class("hedgehog") is HedgehogAttention
  assert registry.config_class("hedgehog") is HedgehogConfig
  layer = HedgehogAttention(64, num_heads=2, rngs=nnx.Rngs(0))
  assert isinstance(layer, LinearAttention) and dict(layer.op_options) == {"normalize": True}
  assert layer.feature_map_q.out_dim == 64 and layer.feature_map_q is not layer.feature_map_k
  with pytest.raises(ValueError, match="feature_map"):
    HedgehogAttention(64, num_heads=2, feature_map="elu", rngs=nnx.Rngs(0))


def test_340m_param_count():
  cfg = preset_340m()
  D, L, H, vocab = 1024, 24, 16, 32000
  K = V = D // H
  # fla LinearAttention: q, k, v, o [D, D]; HedgehogFeatureMap × 2: Linear(K, K) + bias; norm [V]
  attn = 4 * D * D + 2 * (K * K + K) + V
  expected = trunk_count(D, L, vocab, 2816) + L * attn
  assert expected == 341_300_736 and param_count(cfg) == expected


@pytest.mark.parametrize("field, value", [("feature_map", "elu"), ("feature_map", "taylor"),
                                          ("norm_feature_map", 0), ("attn_mode", "parallel")])
def test_bad_config_values_raise(field, value):
  with pytest.raises(ValueError, match=field):
    HedgehogConfig.tiny(**{field: value})
