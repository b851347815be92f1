"""The Transformer++ baseline: fla 0.6.0's `TransformerForCausalLM` (RoPE attention + SwiGLU)."""

from __future__ import annotations

from flax import nnx

from gla_jax.models.configs import TransformerConfig
from gla_jax.models.lm import CausalLM


class TransformerForCausalLM(CausalLM):
  """Transformer++: pre-norm blocks of causal RoPE softmax attention + SwiGLU MLP (TransformerConfig only).

  Same API as `GLAForCausalLM`; the decode cache is a KV cache of `max_len` positions per layer
  (`init_cache(batch_size, max_len)`, `prefill(ids, max_len=...)`), of window_size positions with SWA.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    if not isinstance(config, TransformerConfig):
      raise ValueError(f"config must be a TransformerConfig, got {type(config).__name__}")
    super().__init__(config, rngs=rngs)
