"""HedgehogConfig: a Hedgehog linear-attention model (model_type "hedgehog", ours: fla has none).

The model is fla 0.6.0's `LinearAttentionForCausalLM` with `feature_map="hedgehog"` and
`norm_feature_map=True`: the fields, trunk and parameter names are `LinearAttentionConfig`'s, only the
model_type (and the feature-map default) differ. To run a saved checkpoint in fla, change its
config.json's `model_type` to "linear_attn" (the tensors are the same); `to_linear_attn()` gives that
config here. `config_from_fla` keeps model types apart ("linear_attn" → LinearAttentionConfig even with
feature_map "hedgehog"), so round trips are unambiguous.

    cfg = HedgehogConfig(hidden_size=1024, num_heads=16)
    cfg = preset_340m()                      # hidden 1024, 24 layers, 16 heads of 64, tied: 341.3M params
"""

from __future__ import annotations

import dataclasses

from gla_jax.models.configs.linear_attn import LinearAttentionConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class HedgehogConfig(LinearAttentionConfig):
  """Hedgehog Transformer: every layer `HedgehogAttention` (LinearAttention with the Hedgehog map,
  normalised). Defaults: LinearAttentionConfig's with feature_map "hedgehog" (required) and
  norm_feature_map True (the Hedgehog paper's normalised attention)."""

  model_type = "hedgehog"
  architecture = "HedgehogForCausalLM"
  kind = "hedgehog"
  tiny_defaults = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=256,
                       tie_word_embeddings=True)

  feature_map: str = "hedgehog"
  norm_feature_map: bool = True

  def __post_init__(self):
    super().__post_init__()
    if self.feature_map != "hedgehog":
      raise ValueError(f"feature_map must be 'hedgehog' for HedgehogConfig, got {self.feature_map!r} "
                       "(use LinearAttentionConfig for other maps)")

  def to_linear_attn(self) -> LinearAttentionConfig:
    """The same model as fla's model type: a LinearAttentionConfig with every field equal."""
    return LinearAttentionConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


def preset_340m(**overrides) -> HedgehogConfig:
  """Hedgehog at fla's GLA-340M trunk (hidden 1024, 24 layers, vocab 32000, tied) with 16 heads of 64,
  the Hedgehog paper's head dim (feature dim 128 per head); no published Hedgehog 340M exists:
  341,300,736 params (341.3M)."""
  return HedgehogConfig(**{**dict(hidden_size=1024, num_hidden_layers=24, num_heads=16, vocab_size=32000,
                                  tie_word_embeddings=True), **overrides})
