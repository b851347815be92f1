"""based (fla's BasedLinearAttention on fla's trunk; our model_type): logits and every gradient = the
fla-named reference (quadratic Taylor form), fla's parallel-mode epsilon, the Based/SWA hybrid, decode =
forward, packed = separate, round trips, the 340M parameter count, config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from gla_jax.layers.mixers import registry
from gla_jax.layers.mixers.based import BasedLinearAttention
from gla_jax.models.configs.based import BasedConfig, preset_340m
from tests.gla_jax.helpers import rel_err
from tests.gla_jax.mixers.test_linear_attn import (check_decode, check_packed_equals_separate, check_parity,
                                                   check_round_trips, param_count, trunk_count)
from tests.gla_jax.refs import based as ref

# layer 0 Based (4 heads, feature_dim 16), layer 1 sliding-window attention (the paper's hybrid, small)
HYBRID = BasedConfig.tiny(chunk_size=16, initializer_range=0.1, tie_word_embeddings=False,
                          attn={"layers": [1], "num_heads": 2, "window_size": 5})


def test_logits_and_gradients_match_fla_reference():
  assert HYBRID.layer_kinds() == ("based", "swa")
  check_parity(HYBRID)


def test_layer_vs_fla_parallel_mode_eps():
  """fla's default mode (parallel, eps 1e-6) and its chunk mode (eps 1e-10, ours) agree to < 2e-6."""
  layer = BasedLinearAttention(32, num_heads=2, num_key_value_heads=2, init_std=0.3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 24, 32))
  sd = {f"{n}.weight": jnp.asarray(getattr(layer, n).kernel[...]).T for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
  cfg = BasedConfig.tiny(hidden_size=32, num_heads=2, num_key_value_heads=2)
  ours, chunk_mode, parallel_mode = jax.jit(lambda x, sd: (
      layer(x)[0], ref.mixer(x, sd, "", cfg), ref.mixer_parallel_eps(x, sd, "", cfg)))(x, sd)
  assert rel_err(ours, chunk_mode) < 2e-5 and rel_err(ours, parallel_mode) < 2e-5


def test_decode_equals_forward():
  model = check_decode(BasedConfig.tiny(chunk_size=16, initializer_range=0.1, num_hidden_layers=1), T=14, P=6,
                       chunked=False)
  S, z = model.init_cache(2).layers[0].state
  assert S.shape == (2, 4, 153, 16) and z.shape == (2, 4, 153)  # 1 + 16 + 16·17/2 Taylor features


def test_packed_equals_separate():
  check_packed_equals_separate(BasedConfig.tiny(chunk_size=16, initializer_range=0.1, num_hidden_layers=1))


def test_round_trips(tmp_path):
  d = check_round_trips(HYBRID, tmp_path)
  assert d["model_type"] == "based" and d["feature_dim"] == 16 and d["attn"][0]["window_size"] == 5


def test_registry_and_340m_param_count():
  assert registry.mixer_class("based") is BasedLinearAttention
  assert registry.config_class("based") is BasedConfig
  cfg = preset_340m()
  D, L, H, F, vocab = 1024, 24, 16, 16, 32000
  Dv = D // H
  # fla BasedLinearAttention: q, k [D, H·F], v [D, H·Dv], o [H·Dv, D]; TaylorFeatureMap has no params
  attn = 2 * D * H * F + 2 * D * H * Dv
  expected = trunk_count(D, L, vocab, 2816) + L * attn
  assert expected == 303_350_784 and param_count(cfg) == expected


@pytest.mark.parametrize("field, value", [
    ("num_key_value_heads", 2), ("feature_dim", 0), ("feature_name", "elu"), ("attn_mode", "recurrent"),
    ("chunk_size", 8), ("num_heads", 0),
])
def test_bad_config_values_raise(field, value):
  with pytest.raises(ValueError, match=field):
    BasedConfig.tiny(**{field: value})


def test_bad_layer_arguments_raise():
  for kw, field in [(dict(num_key_value_heads=2), "num_key_value_heads"), (dict(feature_dim=0), "feature_dim"),
                    (dict(feature_name="x"), "feature_name"), (dict(mode="recurrent"), "mode")]:
    with pytest.raises(ValueError, match=field):
      BasedLinearAttention(64, **{**dict(num_heads=4, num_key_value_heads=4), **kw}, rngs=nnx.Rngs(0))
