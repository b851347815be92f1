"""LightningConfig (model_type "lightning", ours: fla 0.6.0 has the Lightning Attention-2 op but no
layer and no model), a TransNormerLLM-style model on the shared trunk."""

from __future__ import annotations

import dataclasses

from gla_jax.layers.activations import ACTIVATION_NAMES
from gla_jax.models.configs.base import ModelConfig, _check_bool, _check_int
from gla_jax.models.configs.gla import check_attn_impl, check_chunk_size, check_dims


@dataclasses.dataclass(frozen=True, kw_only=True)
class LightningConfig(ModelConfig):
  """Lightning attention (gla_jax.layers.mixers.lightning.LightningAttention) + SwiGLU MLP, pre-norm.

  No fla model has this model_type: the fields follow fla's other linear-attention configs (GLAConfig,
  RetNetConfig), and checkpoints use fla's format and naming under model_type "lightning". Layer i's
  decay is −(8 / H)(1 − i / num_hidden_layers) · h per head h (fla's `chunk_lightning_attn`).

  Example:
    >>> cfg = LightningConfig.tiny()                    # hidden 64, 2 layers, 2 heads, vocab 256
    >>> cfg = preset_340m(use_short_conv=True)
  """

  model_type = "lightning"
  architecture = "LightningForCausalLM"
  kind = "lightning"
  tiny_defaults = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=256,
                       tie_word_embeddings=True)

  expand_k: float = 1.0  # key dim = D · expand_k (TransNormerLLM: D)
  expand_v: float = 1.0  # value dim = D · expand_v
  num_heads: int = 16
  num_kv_heads: int | None = None  # < num_heads: grouped k/v heads (GQA)
  feature_map: str | None = "swish"  # φ on q and k (TransNormerLLM: SiLU); None: identity
  use_short_conv: bool = False  # causal depthwise conv + SiLU on q, k, v
  conv_size: int = 4
  conv_bias: bool = False
  use_output_gate: bool = True  # swish output gate x W_g on the per-head RMSNorm
  # JAX side
  attn_impl: str = "auto"  # `impl` of chunk_simple_gla
  chunk_size: int = 64  # chunk_simple_gla chunk size

  def __post_init__(self):
    super().__post_init__()
    if self.feature_map is not None and self.feature_map not in ACTIVATION_NAMES:
      raise ValueError(f"feature_map must be None or one of {ACTIVATION_NAMES}, got {self.feature_map!r}")
    for name in ("use_short_conv", "conv_bias", "use_output_gate"):
      _check_bool(self, name)
    _check_int(self, "conv_size", 1)
    check_dims(self)
    check_chunk_size(self)
    check_attn_impl(self, "chunk_simple_gla")

  @property
  def key_dim(self) -> int:
    return round(self.hidden_size * self.expand_k)

  @property
  def value_dim(self) -> int:
    return round(self.hidden_size * self.expand_v)


def preset_340m(**overrides) -> LightningConfig:
  """Lightning at the GLA-340M trunk (hidden 1024, 24 layers, vocab 32000, tied; TransNormerLLM-385M's
  width and depth) with 8 heads of 128 and the trunk's SwiGLU (hidden_ratio 4 → 2816): 366.3M
  parameters (per layer 5.24M attention + 8.65M MLP; 32.8M embedding)."""
  return LightningConfig(**{**dict(hidden_size=1024, num_hidden_layers=24, num_heads=8, vocab_size=32000,
                                   tie_word_embeddings=True), **overrides})
