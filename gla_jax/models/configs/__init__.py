"""Model configs, one per kind (fla 0.6.0's config of the same model_type), on one trunk base."""

from gla_jax.models.configs.base import AttnSpec, ModelConfig, parse_attn
from gla_jax.models.configs.based import BasedConfig
from gla_jax.models.configs.gla import GLAConfig
from gla_jax.models.configs.hedgehog import HedgehogConfig
from gla_jax.models.configs.hgrn2 import HGRN2Config
from gla_jax.models.configs.lightning import LightningConfig
from gla_jax.models.configs.linear_attn import LinearAttentionConfig
from gla_jax.models.configs.mamba2 import Mamba2Config
from gla_jax.models.configs.retnet import RetNetConfig
from gla_jax.models.configs.transformer import TransformerConfig

__all__ = ["AttnSpec", "BasedConfig", "GLAConfig", "HGRN2Config", "HedgehogConfig", "LightningConfig",
           "LinearAttentionConfig", "Mamba2Config", "ModelConfig", "RetNetConfig", "TransformerConfig",
           "parse_attn"]
