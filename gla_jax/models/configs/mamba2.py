"""Mamba2Config: fla 0.6.0's `Mamba2Config` (model_type "mamba2"), the Mamba-2 language model.

Blocks are `h + Mamba2(RMSNorm(h))` with no MLP (fla `Mamba2Block`); the trunk names are fla's
`backbone.embeddings`, `backbone.layers.{i}.norm`, `backbone.layers.{i}.mixer.*`, `backbone.norm_f`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gla_jax.models.configs.base import ModelConfig, _check_bool, _check_int, _check_real
from gla_jax.models.configs.gla import check_attn_impl, check_chunk_size


def _check_pair(cfg, name: str, *, low: float, strict_low: bool, allow_inf: bool) -> None:
  """A (min, max) pair of reals with low < / <= min <= max (a list is stored as a tuple)."""
  value = getattr(cfg, name)
  ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
      and (allow_inf or math.isfinite(v)) for v in value)
  if ok:
    lo, hi = value
    ok = (lo > low if strict_low else lo >= low) and lo <= hi and math.isfinite(lo)
  if not ok:
    raise ValueError(f"{name} must be a (min, max) pair with {low} {'<' if strict_low else '<='} min <= max, "
                     f"got {value!r}")
  object.__setattr__(cfg, name, (float(value[0]), float(value[1])))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mamba2Config(ModelConfig):
  """The Mamba-2 LM (fla `Mamba2ForCausalLM`). Defaults are fla's (its mamba2-2.8b-like shape).

  Derived: intermediate = expand · hidden_size (the mixer's inner width, not the MLP's: there is no
  MLP), num_heads = intermediate / head_dim (a property: fla computes it, config.json carries it).
  """

  model_type = "mamba2"
  architecture = "Mamba2ForCausalLM"
  kind = "mamba2"
  has_mlp = False
  fla_prefix = "backbone"
  fla_block_names = {"attn_norm": "norm", "attn": "mixer"}
  fla_final_norm = "norm_f"
  tiny_defaults = dict(hidden_size=64, num_hidden_layers=2, vocab_size=256, head_dim=16, state_size=32,
                       tie_word_embeddings=True)

  # trunk fields whose fla Mamba-2 defaults differ from the base's
  num_hidden_layers: int = 48
  norm_eps: float = 1e-5  # RMSNorm eps of the block norms, norm_f and the mixer's gated norm
  pad_token_id: int | None = 0
  hidden_act: str = "silu"  # the conv activation (and the gate's when rmsnorm=False)

  head_dim: int = 64  # P: channels per head of x (and of the SSM state's value side)
  state_size: int = 128  # N: the SSM state's key side (B and C width per group)
  expand: int = 2  # intermediate = expand · hidden_size
  conv_kernel: int = 4  # causal depthwise conv over (x, B, C)
  n_groups: int = 1  # B and C groups, each shared by num_heads / n_groups heads (GQA-like)
  use_bias: bool = False  # bias on in_proj and out_proj
  use_conv_bias: bool = True
  conv_init: float | None = None  # conv weight ~ U(−conv_init, conv_init) instead of N(0, initializer_range)
  A_init_range: tuple = (1, 16)  # A ~ U(A_init_range), A_log = log A
  D_has_hdim: bool = False  # D per channel [intermediate] instead of per head [num_heads]
  residual_in_fp32: bool = True  # fla adds the residual in float32 (no effect on float32 math)
  dt_min: float = 0.001  # Δ init: log-uniform in [dt_min, dt_max], floored at dt_init_floor
  dt_max: float = 0.1
  dt_init_floor: float = 1e-4
  dt_limit: tuple = (0.0, float("inf"))  # Δ = clamp(softplus(dt + dt_bias), *dt_limit)
  rescale_prenorm_residual: bool = True  # out_proj init: kaiming-uniform / sqrt(num_hidden_layers)
  rmsnorm: bool = True  # gated RMSNorm with z; False: y · silu(z)
  norm_before_gate: bool = False  # False: norm(y · silu(z)) · w; True: norm(y) · w · silu(z)
  fuse_linear_cross_entropy: bool = False  # fla loss switches: no effect on the math here
  use_l2warp: bool = False
  # JAX side
  attn_impl: str = "auto"  # `impl` of chunk_simple_gla
  chunk_size: int = 64  # chunk_simple_gla chunk size (fla's own `chunk_size` 256 is its SSD's: same math)

  def __post_init__(self):
    # the dims first: `num_heads` (checked by the base) is derived from them
    _check_int(self, "hidden_size", 1)
    _check_int(self, "head_dim", 1)
    _check_int(self, "expand", 1)
    if (self.expand * self.hidden_size) % self.head_dim:
      raise ValueError(f"head_dim ({self.head_dim}) must divide expand · hidden_size "
                       f"({self.expand * self.hidden_size})")
    super().__post_init__()
    _check_int(self, "state_size", 1)
    _check_int(self, "conv_kernel", 1)
    _check_int(self, "n_groups", 1)
    if self.num_heads % self.n_groups:
      raise ValueError(f"n_groups ({self.n_groups}) must divide num_heads ({self.num_heads})")
    for name in ("use_bias", "use_conv_bias", "D_has_hdim", "residual_in_fp32", "rescale_prenorm_residual",
                 "rmsnorm", "norm_before_gate", "fuse_norm", "fuse_cross_entropy", "fuse_linear_cross_entropy",
                 "use_l2warp"):
      _check_bool(self, name)
    _check_real(self, "conv_init", positive=True, optional=True)
    _check_pair(self, "A_init_range", low=0.0, strict_low=True, allow_inf=False)
    _check_real(self, "dt_min", positive=True)
    _check_real(self, "dt_max", positive=True)
    if self.dt_max < self.dt_min:
      raise ValueError(f"dt_max ({self.dt_max}) must be >= dt_min ({self.dt_min})")
    _check_real(self, "dt_init_floor", positive=True)
    _check_pair(self, "dt_limit", low=0.0, strict_low=False, allow_inf=True)
    if self.fuse_cross_entropy and self.fuse_linear_cross_entropy:
      raise ValueError("fuse_cross_entropy and fuse_linear_cross_entropy cannot both be True")
    check_chunk_size(self)
    check_attn_impl(self, "chunk_simple_gla")

  @property
  def num_heads(self) -> int:
    return self.expand * self.hidden_size // self.head_dim

  @property
  def inner_size(self) -> int:
    """The mixer's width expand · hidden_size (fla's `intermediate_size` of the layer)."""
    return self.expand * self.hidden_size

  @property
  def conv_dim(self) -> int:
    """Channels of the conv: x, B and C (intermediate + 2 · n_groups · state_size)."""
    return self.inner_size + 2 * self.n_groups * self.state_size


def preset_340m(**overrides: Any) -> Mamba2Config:
  """fla's Mamba-2 340M (flame configs/mamba2_340M.json): hidden 1024, 48 layers (no MLP: two mixer
  layers per Transformer block), head_dim 64 (32 heads), state 128, expand 2, vocab 32000, untied.

  382,387,712 parameters: per layer in_proj 1024·4384 + conv 2304·5 + 3·32 + norm 2048 + out_proj
  2048·1024 + block norm 1024 = 6,601,056; × 48, plus embeddings, lm_head (32000·1024 each), norm_f.
  """
  return Mamba2Config(**{**dict(hidden_size=1024, num_hidden_layers=48, head_dim=64, state_size=128, expand=2,
                                vocab_size=32000, tie_word_embeddings=False), **overrides})
