"""BasedConfig: a Based linear-attention model (model_type "based", ours: fla 0.6.0 has the layer,
`fla.layers.BasedLinearAttention`, but no Based model).

The trunk is fla's other models' (embeddings, pre-norm blocks of mixer + SwiGLU MLP, final RMSNorm,
fla names `model.layers.{i}.attn.{q,k,v,o}_proj.weight`, …); the layer's fields are fla's layer's
arguments. The defaults are the plain Based-layer model (every layer Based).

The Based paper's models (Arora et al. 2024) are hybrids: Based linear attention, sliding-window
attention of window 64, and gated short-convolution (BaseConv) layers. The SWA layers come from the
`attn` spec, e.g. every third layer of a 24-layer model:

    BasedConfig(attn={"layers": list(range(2, 24, 3)), "num_heads": 16, "window_size": 64})

The BaseConv layers have no kind here (not built); their place is Based or SWA layers.

    cfg = preset_340m()     # hidden 1024, 24 layers, 16 heads, feature_dim 16, tied: 303.4M params
"""

from __future__ import annotations

import dataclasses

from gla_jax.layers.mixers.based import BASED_MODES
from gla_jax.models.configs.base import ModelConfig, _check_int
from gla_jax.models.configs.gla import check_attn_impl, check_chunk_size


@dataclasses.dataclass(frozen=True, kw_only=True)
class BasedConfig(ModelConfig):
  """Based Transformer (our `BasedForCausalLM`): every layer not in `attn` is `BasedLinearAttention`.

  Trunk defaults are ModelConfig's (fla's: hidden 2048, 24 layers, vocab 32000, norm_eps 1e-6);
  layer defaults fla's layer's (feature_dim 16, mode "parallel") except the heads: 16 (fla's layer says
  12, which does not divide 2048; fla floors the value head dim).
  """

  model_type = "based"
  architecture = "BasedForCausalLM"
  kind = "based"
  tiny_defaults = dict(hidden_size=64, num_hidden_layers=2, num_heads=4, num_key_value_heads=4,
                       vocab_size=256, tie_word_embeddings=True)

  attn_mode: str = "parallel"  # fla's layer `mode` ("parallel", "chunk", "fused_chunk"): see based.py
  feature_dim: int = 16  # q/k dim per head before the Taylor map (1 + F + F(F+1)/2 after)
  num_heads: int = 16
  num_key_value_heads: int = 16  # must equal num_heads (fla)
  feature_name: str = "taylor_exp"  # fla's only Based feature map
  # JAX side
  attn_impl: str = "auto"  # `impl` of chunk_linear_attn
  chunk_size: int = 64  # chunk_linear_attn chunk size

  def __post_init__(self):
    super().__post_init__()
    if self.attn_mode not in BASED_MODES:
      raise ValueError(f"attn_mode must be one of {BASED_MODES}, got {self.attn_mode!r}")
    _check_int(self, "feature_dim", 1)
    _check_int(self, "num_key_value_heads", 1)
    if self.num_key_value_heads != self.num_heads:
      raise ValueError(f"num_key_value_heads ({self.num_key_value_heads}) must equal num_heads "
                       f"({self.num_heads}) (fla's Based has no grouped heads)")
    if self.hidden_size < self.num_heads:
      raise ValueError(f"hidden_size ({self.hidden_size}) must be at least num_heads ({self.num_heads})")
    if self.feature_name != "taylor_exp":
      raise ValueError(f"feature_name must be 'taylor_exp', got {self.feature_name!r}")
    check_chunk_size(self)
    check_attn_impl(self, "chunk_linear_attn")

  @property
  def head_v_dim(self) -> int:
    return self.hidden_size // self.num_heads


def preset_340m(**overrides) -> BasedConfig:
  """Based at fla's GLA-340M trunk (hidden 1024, 24 layers, vocab 32000, tied) with the Based paper's
  layer (16 heads, feature_dim 16, value heads of 64), every layer Based (the paper's 360M model is a
  hybrid; see the module doc): 303,350,784 params (303.4M)."""
  return BasedConfig(**{**dict(hidden_size=1024, num_hidden_layers=24, num_heads=16, num_key_value_heads=16,
                               vocab_size=32000, tie_word_embeddings=True), **overrides})
