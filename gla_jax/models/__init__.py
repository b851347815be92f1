"""GLA and Transformer++ language models (Flax NNX), their configs, presets and `build_model`."""

from __future__ import annotations

from flax import nnx

from gla_jax.models import presets
from gla_jax.models.configs import GLAConfig, TransformerConfig
from gla_jax.models.gla import GLAForCausalLM
from gla_jax.models.lm import Block, CausalLM, ModelCache
from gla_jax.models.transformer import TransformerForCausalLM


def build_model(config: GLAConfig | TransformerConfig, *, rngs: nnx.Rngs) -> CausalLM:
  """The model family of `config`'s type: GLAConfig → GLAForCausalLM, TransformerConfig → Transformer++."""
  if isinstance(config, GLAConfig):
    return GLAForCausalLM(config, rngs=rngs)
  if isinstance(config, TransformerConfig):
    return TransformerForCausalLM(config, rngs=rngs)
  raise ValueError(f"config must be a GLAConfig or TransformerConfig, got {type(config).__name__}")


__all__ = ["Block", "CausalLM", "GLAConfig", "GLAForCausalLM", "ModelCache", "TransformerConfig",
           "TransformerForCausalLM", "build_model", "presets"]
