"""Model configs: fields and defaults follow fla 0.6.0's `GLAConfig` and `TransformerConfig`.

fla-only switches that do not change the math (`attn_mode`, `fuse_*`, `use_cache`, `use_l2warp`) are
kept so that a fla `config.json` maps one to one; the JAX-side fields are `dtype`, `param_dtype`,
`attn_impl`, `chunk_size` and `remat`.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from gla_jax.layers.activations import ACTIVATION_NAMES
from gla_jax.layers.mlp import mlp_intermediate_size

_DTYPES = ("float32", "bfloat16", "float16")


def _check_common(cfg) -> None:
  for name in ("dtype", "param_dtype"):
    value = getattr(cfg, name)
    if str(jnp.dtype(value)) not in _DTYPES:
      raise ValueError(f"{name} must be one of {_DTYPES}, got {value!r}")
  for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads"):
    if isinstance(getattr(cfg, name), bool) or not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
      raise ValueError(f"{name} must be a positive int, got {getattr(cfg, name)!r}")
  if cfg.hidden_act not in ("swish", "silu"):
    raise ValueError(f"hidden_act must be 'swish' (SwiGLU MLP), got {cfg.hidden_act!r}")
  _check_int(cfg, "num_kv_heads", 1, optional=True)
  if cfg.num_kv_heads is not None and cfg.num_heads % cfg.num_kv_heads:
    raise ValueError(f"num_heads ({cfg.num_heads}) must be divisible by num_kv_heads ({cfg.num_kv_heads})")
  _check_int(cfg, "intermediate_size", 1, optional=True)
  _check_int(cfg, "max_position_embeddings", 1)
  for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
    _check_int(cfg, name, 0, optional=True)
  _check_real(cfg, "hidden_ratio", positive=True, optional=True)
  _check_real(cfg, "norm_eps", positive=True)
  _check_real(cfg, "initializer_range", positive=False)
  for name in ("elementwise_affine", "tie_word_embeddings", "remat", "use_cache"):
    if not isinstance(getattr(cfg, name), bool):
      raise ValueError(f"{name} must be a bool, got {getattr(cfg, name)!r}")


def _check_int(cfg, name: str, low: int, optional: bool = False) -> None:
  """An int (not a bool) >= low; None allowed when `optional`."""
  value = getattr(cfg, name)
  if value is None and optional:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name} must be an int >= {low}{' or None' if optional else ''}, got {value!r}")


def _check_real(cfg, name: str, *, positive: bool, optional: bool = False) -> None:
  """A finite real number, > 0 when `positive` (else >= 0); None allowed when `optional`."""
  value = getattr(cfg, name)
  if value is None and optional:
    return
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if not ok or (value <= 0 if positive else value < 0):
    raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}"
                     f"{' or None' if optional else ''}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GLAConfig:
  """The GLA Transformer (fla `GLAForCausalLM`). Defaults are fla's (its 1.3B shape)."""

  vocab_size: int = 32000
  hidden_size: int = 2048  # model width D
  expand_k: float = 0.5  # key dim = D · expand_k (all heads)
  expand_v: float = 1.0  # value dim = D · expand_v (all heads)
  hidden_ratio: int | float | None = 4  # MLP width ≈ D · ratio · 2/3, rounded up to 256
  intermediate_size: int | None = None  # explicit MLP width (overrides hidden_ratio)
  num_hidden_layers: int = 24
  num_heads: int = 4
  num_kv_heads: int | None = None  # < num_heads: grouped k/v/gate heads (GQA)
  feature_map: str | None = None  # activation applied to q and k (fla ACT2FN name)
  attn_mode: str = "chunk"  # fla kernel choice ("chunk", "fused_chunk", "fused_recurrent"): same math
  use_short_conv: bool = False  # causal depthwise conv + SiLU on q, k, v
  conv_size: int = 4
  conv_bias: bool = False
  use_output_gate: bool = True  # swish output gate fused into the per-head RMSNorm
  clamp_min: float | None = None  # lower clamp of the log forget gate
  hidden_act: str = "swish"  # MLP activation (SwiGLU) and output-gate function
  max_position_embeddings: int = 2048  # unused by GLA (no positions); kept for fla configs
  elementwise_affine: bool = True  # learnable weight in the output norm
  norm_eps: float = 1e-6
  use_gk: bool = True  # fla 0.6.0's layer always uses the key gate; kept for configs
  use_gv: bool = False  # fla 0.6.0's layer has no value gate; kept for configs
  gate_logit_normalizer: float = 16  # log forget gate = logsigmoid(·) / this
  gate_low_rank_dim: int = 16  # rank of the forget-gate projection
  use_cache: bool = True
  pad_token_id: int | None = None
  bos_token_id: int = 1
  eos_token_id: int = 2
  tie_word_embeddings: bool = False  # lm_head = embeddingsᵀ
  initializer_range: float = 0.02  # std of N(0, ·) for Linear/Embedding weights
  fuse_norm: bool = True  # fla kernel fusion switches: no effect on the math here
  fuse_swiglu: bool = True
  fuse_cross_entropy: bool = True
  # JAX side
  dtype: str = "float32"  # compute dtype (activations); logits are float32
  param_dtype: str = "float32"  # parameter storage dtype
  attn_impl: str = "auto"  # `impl` of chunk_gla
  chunk_size: int = 64  # chunk_gla chunk size
  remat: bool = False  # rematerialise each block in the backward pass (nnx.remat)

  def __post_init__(self):
    _check_common(self)
    if self.attn_mode not in ("chunk", "fused_chunk", "fused_recurrent"):
      raise ValueError(f"attn_mode must be 'chunk', 'fused_chunk' or 'fused_recurrent', got {self.attn_mode!r}")
    if self.feature_map is not None and self.feature_map not in ACTIVATION_NAMES:
      raise ValueError(f"feature_map must be None or one of {ACTIVATION_NAMES}, got {self.feature_map!r}")
    for name in ("expand_k", "expand_v", "gate_logit_normalizer"):
      _check_real(self, name, positive=True)
    if self.clamp_min is not None and (isinstance(self.clamp_min, bool) or not isinstance(self.clamp_min, (int, float))
                                       or not math.isfinite(self.clamp_min)):
      raise ValueError(f"clamp_min must be a finite number or None, got {self.clamp_min!r}")
    _check_int(self, "conv_size", 1)
    _check_int(self, "gate_low_rank_dim", 1)
    key_dim, value_dim = self.hidden_size * self.expand_k, self.hidden_size * self.expand_v
    if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
      raise ValueError(f"hidden_size·expand_k ({key_dim}) and hidden_size·expand_v ({value_dim}) must be integers")
    if round(key_dim) % self.num_heads or round(value_dim) % self.num_heads:
      raise ValueError(f"key_dim = hidden_size·expand_k ({round(key_dim)}) and value_dim = hidden_size·expand_v "
                       f"({round(value_dim)}) must be divisible by num_heads ({self.num_heads})")
    if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 16 \
        or self.chunk_size % 16:
      raise ValueError(f"chunk_size must be a positive multiple of 16, got {self.chunk_size!r}")
    # the name itself is checked where it is used (an implementation may be registered after this
    # config is made: tests do); `train.config.check_platform` checks it before a training run
    if not isinstance(self.attn_impl, str) or not self.attn_impl:
      raise ValueError(f"attn_impl must be 'auto' or a chunk_gla implementation name, got {self.attn_impl!r}")

  @property
  def key_dim(self) -> int:
    return round(self.hidden_size * self.expand_k)

  @property
  def value_dim(self) -> int:
    return round(self.hidden_size * self.expand_v)

  @property
  def mlp_size(self) -> int:
    return mlp_intermediate_size(self.hidden_size, self.hidden_ratio, self.intermediate_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
  """Transformer++ baseline (fla `TransformerForCausalLM`): RoPE softmax attention + SwiGLU, pre-norm."""

  vocab_size: int = 32000
  hidden_size: int = 2048
  num_hidden_layers: int = 24
  num_heads: int = 32
  num_kv_heads: int | None = None  # GQA
  qkv_bias: bool = False
  qk_norm: bool = False  # per-head RMSNorm on q and k
  window_size: int | None = None  # sliding-window attention (each token sees this many, itself included)
  rope_theta: float = 10000.0
  max_position_embeddings: int = 2048
  hidden_ratio: int | float | None = 4
  intermediate_size: int | None = None
  hidden_act: str = "swish"
  initializer_range: float = 0.02
  elementwise_affine: bool = True
  norm_eps: float = 1e-6
  use_cache: bool = True
  pad_token_id: int | None = None
  bos_token_id: int = 1
  eos_token_id: int = 2
  tie_word_embeddings: bool = False
  fuse_norm: bool = True
  fuse_swiglu: bool = True
  fuse_cross_entropy: bool = True
  # JAX side
  dtype: str = "float32"
  param_dtype: str = "float32"
  attn_impl: str = "auto"  # jax.nn.dot_product_attention: "auto" (cuDNN where it applies), "xla", "cudnn"
  remat: bool = False

  def __post_init__(self):
    _check_common(self)
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
    if self.attn_impl not in ("auto", "xla", "cudnn"):
      raise ValueError(f"attn_impl must be 'auto', 'xla' or 'cudnn', got {self.attn_impl!r}")
    _check_int(self, "window_size", 1, optional=True)
    _check_real(self, "rope_theta", positive=True)
    if (self.hidden_size // self.num_heads) % 2:
      raise ValueError(f"head dim = hidden_size / num_heads ({self.hidden_size // self.num_heads}) must be even "
                       f"(RoPE rotates pairs)")

  @property
  def mlp_size(self) -> int:
    return mlp_intermediate_size(self.hidden_size, self.hidden_ratio, self.intermediate_size)
