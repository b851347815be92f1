"""HGRN2Config: fla 0.6.0's `HGRN2Config` (model_type "hgrn2"), the gated linear RNN with state expansion."""

from __future__ import annotations

import dataclasses

from gla_jax.models.configs.base import ModelConfig, _check_bool, _check_int
from gla_jax.models.configs.gla import check_attn_impl, check_chunk_size

_HGRN2_MODES = ("chunk", "fused_recurrent", "fused_chunk")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HGRN2Config(ModelConfig):
  """HGRN2 (fla `HGRN2ForCausalLM`): HGRN2Attention + SwiGLU MLP, pre-norm. Defaults are fla's.

  Heads: give `expand_ratio` (the per-head forget/key dim; num_heads = hidden_size // expand_ratio) or
  `num_heads` (expand_ratio = hidden_size // num_heads), as fla's config fills the other one in.
  `use_lower_bound`: fla's HGRN2Model holds `lower_bounds` [num_hidden_layers, hidden_size] (zeros) and
  gives layer i ≥ 1 the forget-gate floor cumsum(softmax(lower_bounds, 0))[i] − softmax(·)[0]; that
  parameter lives in the trunk (see gla_jax.layers.mixers.hgrn2), so the model needs
  hidden_size == num_heads · expand_ratio then.

  Example:
    >>> cfg = HGRN2Config.tiny()                        # hidden 64, 2 layers, 2 heads of 32, vocab 256
    >>> cfg = preset_340m()
  """

  model_type = "hgrn2"
  architecture = "HGRN2ForCausalLM"
  kind = "hgrn2"
  # use_lower_bound=False until the trunk holds fla's model-level `lower_bounds` (gla_jax/models/lm.py)
  tiny_defaults = dict(hidden_size=64, num_hidden_layers=2, expand_ratio=32, vocab_size=256,
                       tie_word_embeddings=True, use_lower_bound=True)

  attn_mode: str = "chunk"  # fla kernel choice: the same math for every mode
  num_heads: int | None = None  # filled in from expand_ratio when None
  expand_ratio: int | None = 128  # per-head forget (key) dim; filled in from num_heads when None
  use_short_conv: bool = False  # causal depthwise conv WITHOUT activation on q, f, i (fla's HGRN2)
  conv_size: int = 4
  use_lower_bound: bool = True  # learnable per-layer forget-gate floors (a model-level parameter)
  # JAX side
  attn_impl: str = "auto"  # `impl` of chunk_gla
  chunk_size: int = 64  # chunk_gla chunk size

  def __post_init__(self):
    # fla's config: one of expand_ratio / num_heads gives the other
    for name in ("num_heads", "expand_ratio"):
      _check_int(self, name, 1, optional=True)
    if self.hidden_size is None or isinstance(self.hidden_size, bool) or not isinstance(self.hidden_size, int) \
        or self.hidden_size < 1:
      raise ValueError(f"hidden_size must be a positive int, got {self.hidden_size!r}")
    if self.expand_ratio is None and self.num_heads is None:
      raise ValueError("one of expand_ratio or num_heads must be given (both are None)")
    if self.num_heads is None:
      object.__setattr__(self, "num_heads", self.hidden_size // self.expand_ratio)
      if self.num_heads < 1:
        raise ValueError(f"expand_ratio ({self.expand_ratio}) must be <= hidden_size ({self.hidden_size})")
    elif self.expand_ratio is None:
      object.__setattr__(self, "expand_ratio", self.hidden_size // self.num_heads)
    elif self.num_heads != self.hidden_size // self.expand_ratio:
      # fla's layer recomputes num_heads from expand_ratio: a different num_heads would be ignored
      raise ValueError(f"num_heads ({self.num_heads}) must be hidden_size // expand_ratio "
                       f"({self.hidden_size // self.expand_ratio}) when both are given")
    super().__post_init__()
    if self.attn_mode not in _HGRN2_MODES:
      raise ValueError(f"attn_mode must be one of {_HGRN2_MODES}, got {self.attn_mode!r}")
    for name in ("use_short_conv", "use_lower_bound"):
      _check_bool(self, name)
    _check_int(self, "conv_size", 1)
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
    if self.use_lower_bound and self.num_heads * self.expand_ratio != self.hidden_size:
      raise ValueError(f"use_lower_bound needs num_heads · expand_ratio ({self.num_heads * self.expand_ratio}) "
                       f"== hidden_size ({self.hidden_size}): the bounds have hidden_size entries")
    check_chunk_size(self)
    check_attn_impl(self)

  @property
  def forget_dim(self) -> int:
    return self.num_heads * self.expand_ratio


def preset_340m(**overrides) -> HGRN2Config:
  """fla's flame configs/hgrn2_340M.json: hidden 1024, 24 layers, expand_ratio 128 (8 heads), MLP
  hidden_ratio 4, vocab 32000, tied, lower bounds on: 341.1M parameters (per layer 4.19M attention +
  8.65M MLP; 32.8M embedding), and fla's lower_bounds 24·1024 = 24.6K more
  once the trunk holds them (341.15M)."""
  return HGRN2Config(**{**dict(hidden_size=1024, num_hidden_layers=24, expand_ratio=128, num_heads=8,
                               vocab_size=32000, tie_word_embeddings=True), **overrides})
