"""RetNetConfig: fla 0.6.0's `RetNetConfig` (model_type "retnet"), the Retentive Network."""

from __future__ import annotations

import dataclasses

from gla_jax.layers.activations import ACTIVATION_NAMES
from gla_jax.models.configs.base import ModelConfig, _check_bool, _check_int
from gla_jax.models.configs.gla import check_attn_impl, check_chunk_size, check_dims

_RETNET_MODES = ("chunk", "fused_chunk", "parallel", "fused_recurrent")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetNetConfig(ModelConfig):
  """RetNet (fla `RetNetForCausalLM`): multi-scale retention + SwiGLU MLP, pre-norm. Defaults are fla's.

  The mixer is gla_jax.layers.mixers.retnet.MultiScaleRetention (RoPE on q, k; a fixed decay per head
  log(1 − 2^(−5−h)); per-head RMSNorm · swish gate). fla's `RetNetBlock` does not pass `use_short_conv`
  / `conv_size` to its layer, so a RetNet model has no short convs whatever these say: the fields are
  kept (fla's config.json has them) and ignored the same way here.

  Example:
    >>> cfg = RetNetConfig.tiny()                      # hidden 64, 2 layers, 2 heads, vocab 256
    >>> cfg = preset_340m(dtype="bfloat16")
  """

  model_type = "retnet"
  architecture = "RetNetForCausalLM"
  kind = "retnet"
  tiny_defaults = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=256,
                       tie_word_embeddings=True)

  attn_mode: str = "chunk"  # fla kernel choice: the same math for every mode
  hidden_size: int = 2048
  expand_k: float = 1.0  # key dim = D · expand_k (all heads)
  expand_v: float = 2.0  # value dim = D · expand_v (all heads)
  hidden_ratio: int | float | None = 2  # RetNet's MLP: ≈ D · 2 · 2/3, rounded up to 256
  num_heads: int = 8
  num_kv_heads: int | None = None  # < num_heads: grouped k/v heads (GQA)
  feature_map: str | None = None  # activation applied to q and k before RoPE (fla ACT2FN name)
  use_short_conv: bool = False  # ignored by fla's RetNet model (see the class doc)
  conv_size: int = 4  # ignored likewise
  use_output_gate: bool = True  # swish output gate x W_g on the per-head RMSNorm
  # JAX side
  attn_impl: str = "auto"  # `impl` of chunk_simple_gla
  chunk_size: int = 64  # chunk_simple_gla chunk size

  def __post_init__(self):
    super().__post_init__()
    if self.attn_mode not in _RETNET_MODES:
      raise ValueError(f"attn_mode must be one of {_RETNET_MODES}, got {self.attn_mode!r}")
    if self.feature_map is not None and self.feature_map not in ACTIVATION_NAMES:
      raise ValueError(f"feature_map must be None or one of {ACTIVATION_NAMES}, got {self.feature_map!r}")
    _check_bool(self, "use_short_conv")
    _check_bool(self, "use_output_gate")
    _check_int(self, "conv_size", 1)
    check_dims(self)
    if (self.key_dim // self.num_heads) % 2:
      raise ValueError(f"head_k_dim = hidden_size·expand_k / num_heads ({self.key_dim // self.num_heads}) must "
                       "be even (RoPE rotates pairs)")
    check_chunk_size(self)
    check_attn_impl(self, "chunk_simple_gla")

  @property
  def key_dim(self) -> int:
    return round(self.hidden_size * self.expand_k)

  @property
  def value_dim(self) -> int:
    return round(self.hidden_size * self.expand_v)


def preset_340m(**overrides) -> RetNetConfig:
  """RetNet at the GLA-340M trunk (fla-hub/gla-340M: hidden 1024, 24 layers, vocab 32000, tied) with fla's
  RetNet layer defaults (8 heads, expand_k 1, expand_v 2, MLP hidden_ratio 2): 347.4M parameters
  (per layer 8.39M retention + 4.72M MLP; 32.8M embedding)."""
  return RetNetConfig(**{**dict(hidden_size=1024, num_hidden_layers=24, num_heads=8, vocab_size=32000,
                                tie_word_embeddings=True), **overrides})
