"""TransformerConfig: fla 0.6.0's `TransformerConfig` (model_type "transformer"), Transformer++ and SWA."""

from __future__ import annotations

import dataclasses

from gla_jax.models.configs.base import ModelConfig, _check_int, _check_real


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig(ModelConfig):
  """Transformer++ baseline (fla `TransformerForCausalLM`): RoPE softmax attention + SwiGLU, pre-norm.

  With `window_size` every layer is sliding-window attention (kind "swa", a rolling KV cache of
  window_size tokens when decoding); without, full causal attention (kind "attention").
  """

  model_type = "transformer"
  architecture = "TransformerForCausalLM"
  kind = "attention"
  tiny_defaults = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=256,
                       tie_word_embeddings=True)

  num_heads: int = 32
  num_kv_heads: int | None = None  # GQA
  qkv_bias: bool = False
  qk_norm: bool = False  # per-head RMSNorm on q and k
  window_size: int | None = None  # sliding-window attention (each token sees this many, itself included)
  rope_theta: float = 10000.0
  # JAX side
  attn_impl: str = "auto"  # jax.nn.dot_product_attention: "auto" (cuDNN where it applies), "xla", "cudnn"

  def __post_init__(self):
    super().__post_init__()
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
    if self.attn_impl not in ("auto", "xla", "cudnn"):
      raise ValueError(f"attn_impl must be 'auto', 'xla' or 'cudnn', got {self.attn_impl!r}")
    _check_int(self, "window_size", 1, optional=True)
    _check_real(self, "rope_theta", positive=True)
    if (self.hidden_size // self.num_heads) % 2:
      raise ValueError(f"head dim = hidden_size / num_heads ({self.hidden_size // self.num_heads}) must be even "
                       f"(RoPE rotates pairs)")

  def layer_kinds(self) -> tuple[str, ...]:
    native = "attention" if self.window_size is None else "swa"
    return tuple(native if self.attn_spec(i) is None else self.attn_spec(i).kind
                 for i in range(self.num_hidden_layers))
