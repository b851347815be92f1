"""The Hedgehog model's layer: fla 0.6.0's `LinearAttention` with feature_map "hedgehog" (its reference)."""

from tests.gla_jax.refs.linear_attn import mixer

__all__ = ["mixer"]
