"""GLAConfig: fla 0.6.0's `GLAConfig` (model_type "gla"), the GLA Transformer."""

from __future__ import annotations

import dataclasses
import math

from gla_jax.layers.activations import ACTIVATION_NAMES
from gla_jax.models.configs.base import ModelConfig, _check_int, _check_real


def check_chunk_size(cfg) -> None:
  if isinstance(cfg.chunk_size, bool) or not isinstance(cfg.chunk_size, int) or cfg.chunk_size < 16 \
      or cfg.chunk_size % 16:
    raise ValueError(f"chunk_size must be a positive multiple of 16, got {cfg.chunk_size!r}")


def check_attn_impl(cfg, op: str = "chunk_gla") -> None:
  # the name itself is checked where it is used (an implementation may be registered after this
  # config is made: tests do); `train.config.check_platform` checks it before a training run
  if not isinstance(cfg.attn_impl, str) or not cfg.attn_impl:
    raise ValueError(f"attn_impl must be 'auto' or a {op} implementation name, got {cfg.attn_impl!r}")


def check_dims(cfg) -> None:
  """hidden_size·expand_k / expand_v integers divisible by num_heads."""
  for name in ("expand_k", "expand_v"):
    _check_real(cfg, name, positive=True)
  key_dim, value_dim = cfg.hidden_size * cfg.expand_k, cfg.hidden_size * cfg.expand_v
  if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
    raise ValueError(f"hidden_size·expand_k ({key_dim}) and hidden_size·expand_v ({value_dim}) must be integers")
  if round(key_dim) % cfg.num_heads or round(value_dim) % cfg.num_heads:
    raise ValueError(f"key_dim = hidden_size·expand_k ({round(key_dim)}) and value_dim = hidden_size·expand_v "
                     f"({round(value_dim)}) must be divisible by num_heads ({cfg.num_heads})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GLAConfig(ModelConfig):
  """The GLA Transformer (fla `GLAForCausalLM`). Defaults are fla's (its 1.3B shape)."""

  model_type = "gla"
  architecture = "GLAForCausalLM"
  kind = "gla"
  tiny_defaults = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=256,
                       tie_word_embeddings=True)

  expand_k: float = 0.5  # key dim = D · expand_k (all heads)
  expand_v: float = 1.0  # value dim = D · expand_v (all heads)
  num_heads: int = 4
  num_kv_heads: int | None = None  # < num_heads: grouped k/v/gate heads (GQA)
  feature_map: str | None = None  # activation applied to q and k (fla ACT2FN name)
  attn_mode: str = "chunk"  # fla kernel choice ("chunk", "fused_chunk", "fused_recurrent"): same math
  use_short_conv: bool = False  # causal depthwise conv + SiLU on q, k, v
  conv_size: int = 4
  conv_bias: bool = False
  use_output_gate: bool = True  # swish output gate fused into the per-head RMSNorm
  clamp_min: float | None = None  # lower clamp of the log forget gate
  use_gk: bool = True  # fla 0.6.0's layer always uses the key gate; kept for configs
  use_gv: bool = False  # fla 0.6.0's layer has no value gate; kept for configs
  gate_logit_normalizer: float = 16  # log forget gate = logsigmoid(·) / this
  gate_low_rank_dim: int = 16  # rank of the forget-gate projection
  # JAX side
  attn_impl: str = "auto"  # `impl` of chunk_gla
  chunk_size: int = 64  # chunk_gla chunk size

  def __post_init__(self):
    super().__post_init__()
    if self.attn_mode not in ("chunk", "fused_chunk", "fused_recurrent"):
      raise ValueError(f"attn_mode must be 'chunk', 'fused_chunk' or 'fused_recurrent', got {self.attn_mode!r}")
    if self.feature_map is not None and self.feature_map not in ACTIVATION_NAMES:
      raise ValueError(f"feature_map must be None or one of {ACTIVATION_NAMES}, got {self.feature_map!r}")
    _check_real(self, "gate_logit_normalizer", positive=True)
    if self.clamp_min is not None and (isinstance(self.clamp_min, bool) or not isinstance(self.clamp_min, (int, float))
                                       or not math.isfinite(self.clamp_min)):
      raise ValueError(f"clamp_min must be a finite number or None, got {self.clamp_min!r}")
    _check_int(self, "conv_size", 1)
    _check_int(self, "gate_low_rank_dim", 1)
    check_dims(self)
    check_chunk_size(self)
    check_attn_impl(self)

  @property
  def key_dim(self) -> int:
    return round(self.hidden_size * self.expand_k)

  @property
  def value_dim(self) -> int:
    return round(self.hidden_size * self.expand_v)
