"""LinearAttentionConfig: fla 0.6.0's `LinearAttentionConfig` (model_type "linear_attn").

    cfg = LinearAttentionConfig(hidden_size=1024, num_heads=4, feature_map="hedgehog", norm_feature_map=True)
    cfg = preset_340m()                          # hidden 1024, 24 layers, 4 heads, tied: 347.4M params
"""

from __future__ import annotations

import dataclasses

from gla_jax.layers.mixers.linear_attn import LINEAR_ATTN_FEATURE_MAPS
from gla_jax.models.configs.base import ModelConfig, _check_bool
from gla_jax.models.configs.gla import check_attn_impl, check_chunk_size, check_dims

ATTN_MODES = ("chunk", "fused_chunk", "fused_recurrent")


def check_linear_attn_fields(cfg) -> None:
  """The LinearAttention fields of `cfg` (shared with HedgehogConfig)."""
  if cfg.attn_mode not in ATTN_MODES:
    raise ValueError(f"attn_mode must be one of {ATTN_MODES}, got {cfg.attn_mode!r}")
  if cfg.feature_map not in LINEAR_ATTN_FEATURE_MAPS:
    raise ValueError(f"feature_map must be one of {LINEAR_ATTN_FEATURE_MAPS}, got {cfg.feature_map!r}")
  for name in ("tie_feature_map_qk", "norm_q", "norm_k", "norm_feature_map"):
    _check_bool(cfg, name)
  check_dims(cfg)
  check_chunk_size(cfg)
  check_attn_impl(cfg, "chunk_linear_attn")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearAttentionConfig(ModelConfig):
  """Linear-attention Transformer (fla `LinearAttentionForCausalLM`). Defaults are fla's.

  Each layer is `LinearAttention` (gla_jax/layers/mixers/linear_attn.py) with fla's block arguments:
  the layer's norm_eps is the model's (1e-6), `norm_feature_map` is the layer's `do_feature_map_norm`
  (the normalised op), the output norm is always the per-head RMSNorm. fla's `fuse_linear_cross_entropy`,
  `use_l2warp` (loss switches) are not kept; `attnres_block_size` is refused by the converter.
  """

  model_type = "linear_attn"
  architecture = "LinearAttentionForCausalLM"
  kind = "linear_attn"
  tiny_defaults = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=256,
                       tie_word_embeddings=True)

  attn_mode: str = "fused_chunk"  # fla kernel choice ("chunk", "fused_chunk", "fused_recurrent"): same math
  expand_k: float = 1.0  # key dim = D · expand_k (all heads), before the feature map
  expand_v: float = 1.0  # value dim = D · expand_v (all heads)
  num_heads: int = 4
  num_kv_heads: int | None = None  # < num_heads: grouped k/v heads (GQA)
  feature_map: str = "elementwise_product"  # see LINEAR_ATTN_FEATURE_MAPS
  tie_feature_map_qk: bool = False  # one feature-map module for q and k
  norm_q: bool = False  # q ← q / (Σ q + 1e-4) after the feature map
  norm_k: bool = False  # k ← k / (Σ k + 1e-4)
  norm_feature_map: bool = False  # normalised linear attention (divide by q·Σk), state (S, z)
  # JAX side
  attn_impl: str = "auto"  # `impl` of chunk_linear_attn
  chunk_size: int = 64  # chunk_linear_attn chunk size

  def __post_init__(self):
    super().__post_init__()
    check_linear_attn_fields(self)

  @property
  def key_dim(self) -> int:
    return round(self.hidden_size * self.expand_k)

  @property
  def value_dim(self) -> int:
    return round(self.hidden_size * self.expand_v)


def preset_340m(**overrides) -> LinearAttentionConfig:
  """Linear attention at fla's GLA-340M shape (fla-hub/gla-340M: hidden 1024, 24 layers, 4 heads, vocab
  32000, tied embeddings; fla publishes no linear_attn checkpoint), fla's defaults otherwise
  (expand_k = expand_v = 1, elementwise_product maps): 347,421,696 params (347.4M)."""
  return LinearAttentionConfig(**{**dict(hidden_size=1024, num_hidden_layers=24, num_heads=4, vocab_size=32000,
                                         tie_word_embeddings=True), **overrides})
