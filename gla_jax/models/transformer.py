"""The Transformer++ baseline: fla 0.6.0's `TransformerForCausalLM` (RoPE attention + SwiGLU)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.attention import Attention, KVCache
from gla_jax.models.configs import TransformerConfig
from gla_jax.models.lm import Block, CausalLM


class TransformerForCausalLM(CausalLM):
  """Transformer++: pre-norm blocks of causal RoPE softmax attention + SwiGLU MLP.

  Same API as `GLAForCausalLM`; the decode cache is a KV cache of `max_len` positions per layer
  (`init_cache(batch_size, max_len)`, `prefill(ids, max_len=...)`).
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    if not isinstance(config, TransformerConfig):
      raise ValueError(f"config must be a TransformerConfig, got {type(config).__name__}")
    super().__init__(config, rngs=rngs)

  def _make_mixer(self, layer_idx: int, rngs: nnx.Rngs) -> Attention:
    c = self.config
    return Attention(c.hidden_size, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                     qkv_bias=c.qkv_bias, qk_norm=c.qk_norm, window_size=c.window_size,
                     rope_theta=c.rope_theta, init_std=c.initializer_range, impl=c.attn_impl,
                     dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), rngs=rngs)

  def _init_layer_cache(self, block: Block, batch_size: int, max_len: int | None) -> KVCache:
    if max_len is None:
      raise ValueError("the Transformer's KV cache needs max_len: init_cache(batch_size, max_len)")
    return block.attn.init_cache(batch_size, max_len)
