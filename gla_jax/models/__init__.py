"""Causal language models (Flax NNX): one trunk, per-layer mixer kinds, configs, presets, `build_model`."""

from __future__ import annotations

from flax import nnx

from gla_jax.models import presets
from gla_jax.models.configs import AttnSpec, GLAConfig, ModelConfig, TransformerConfig
from gla_jax.models.gla import GLAForCausalLM
from gla_jax.models.lm import Block, CausalLM, ModelCache
from gla_jax.models.transformer import TransformerForCausalLM


def build_model(config: ModelConfig, *, rngs: nnx.Rngs) -> CausalLM:
  """The causal LM of `config`: the trunk with each layer's mixer from `config.layer_kinds()`."""
  if not isinstance(config, ModelConfig):
    raise ValueError(f"config must be a model config (gla_jax.models.configs), got {type(config).__name__}")
  return CausalLM(config, rngs=rngs)


__all__ = ["AttnSpec", "Block", "CausalLM", "GLAConfig", "GLAForCausalLM", "ModelCache", "ModelConfig",
           "TransformerConfig", "TransformerForCausalLM", "build_model", "presets"]
