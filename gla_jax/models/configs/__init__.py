"""Model configs, one per kind (fla 0.6.0's config of the same model_type), on one trunk base."""

from gla_jax.models.configs.base import AttnSpec, ModelConfig, parse_attn
from gla_jax.models.configs.gla import GLAConfig
from gla_jax.models.configs.transformer import TransformerConfig

__all__ = ["AttnSpec", "GLAConfig", "ModelConfig", "TransformerConfig", "parse_attn"]
