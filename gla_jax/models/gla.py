"""The GLA language model: fla 0.6.0's `GLAForCausalLM` (docs/models.md)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.gla import GatedLinearAttention, GLALayerCache
from gla_jax.models.configs import GLAConfig
from gla_jax.models.lm import Block, CausalLM


class GLAForCausalLM(CausalLM):
  """GLA Transformer: pre-norm blocks of `GatedLinearAttention` + SwiGLU MLP.

  >>> model = GLAForCausalLM(GLAConfig(hidden_size=64, num_hidden_layers=2, vocab_size=256),
  ...                        rngs=nnx.Rngs(0))
  >>> logits = model(jnp.zeros((2, 16), jnp.int32))           # [2, 16, 256] float32
  >>> logits, cache = model.prefill(prompt)                    # cache: per-layer [B, H, K, V] f32 states
  >>> next_logits, cache = model.decode_step(token, cache)     # [B, vocab], O(1) in the length
  """

  def __init__(self, config: GLAConfig, *, rngs: nnx.Rngs):
    if not isinstance(config, GLAConfig):
      raise ValueError(f"config must be a GLAConfig, got {type(config).__name__}")
    super().__init__(config, rngs=rngs)

  def _make_mixer(self, layer_idx: int, rngs: nnx.Rngs) -> GatedLinearAttention:
    c = self.config
    return GatedLinearAttention(
        c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v, num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads, feature_map=c.feature_map, use_short_conv=c.use_short_conv,
        conv_size=c.conv_size, conv_bias=c.conv_bias, use_output_gate=c.use_output_gate,
        gate_fn=c.hidden_act, elementwise_affine=c.elementwise_affine, norm_eps=c.norm_eps,
        gate_logit_normalizer=c.gate_logit_normalizer, gate_low_rank_dim=c.gate_low_rank_dim,
        clamp_min=c.clamp_min, init_std=c.initializer_range, impl=c.attn_impl, chunk_size=c.chunk_size,
        dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), rngs=rngs)

  def _init_layer_cache(self, block: Block, batch_size: int, max_len: int | None) -> GLALayerCache:
    del max_len  # the recurrent state does not grow
    return block.attn.init_cache(batch_size)
