"""Flax NNX layers: the token mixers (mixers/), norms, MLP, short conv, sharding (fla 0.6.0's math)."""

from gla_jax.layers.activations import ACTIVATION_NAMES, get_activation
from gla_jax.layers.mixers.attention import Attention, KVCache, rotary, segment_positions
from gla_jax.layers.conv import ShortConvolution
from gla_jax.layers.mixers.base import LinearAttentionMixer, Mixer, RecurrentCache
from gla_jax.layers.mixers.gla import GatedLinearAttention
from gla_jax.layers.linear import dense, embedding
from gla_jax.layers.mlp import GatedMLP, mlp_intermediate_size
from gla_jax.layers.norm import GatedRMSNorm, RMSNorm
# the function per_shard is imported from its module (gla_jax.layers.per_shard), which a package attribute
# of the same name would shadow
from gla_jax.layers.per_shard import LAYOUTS, OpLayout, layout_of
from gla_jax.layers.sharding import LOGICAL_AXES, make_param, resolve, with_axes

__all__ = [
    "ACTIVATION_NAMES", "Attention", "GatedLinearAttention", "GatedMLP", "LinearAttentionMixer", "Mixer",
    "GatedRMSNorm", "KVCache", "LAYOUTS", "LOGICAL_AXES", "OpLayout", "RMSNorm", "RecurrentCache",
    "ShortConvolution",
    "dense", "embedding", "get_activation", "layout_of", "make_param", "mlp_intermediate_size",
    "resolve", "rotary", "segment_positions", "with_axes",
]
