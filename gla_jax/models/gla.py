"""The GLA language model: fla 0.6.0's `GLAForCausalLM` (docs/models.md) — the trunk with GLA layers."""

from __future__ import annotations

from flax import nnx

from gla_jax.models.configs import GLAConfig
from gla_jax.models.lm import CausalLM


class GLAForCausalLM(CausalLM):
  """GLA Transformer: pre-norm blocks of `GatedLinearAttention` + SwiGLU MLP (the trunk, GLAConfig only).

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
