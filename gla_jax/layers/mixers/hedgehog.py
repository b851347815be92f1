"""Hedgehog attention (Zhang et al. 2024): linear attention with the learnable Hedgehog feature map.

    φ(x)    = softmax([2(x W + b), −2(x W + b)])   per head (W [K, K] shared by the heads), out dim 2·K
    o_t     = φ(q_t) Σ_{s≤t} φ(k_s)ᵀ v_s / (φ(q_t) · Σ_{s≤t} φ(k_s) + 1e-10)      (normalised)
    y       = RMSNorm(o) W_o  (per head, as fla's layer)

This is fla 0.6.0's `LinearAttention(feature_map="hedgehog", do_feature_map_norm=True)`, so the layer is
`LinearAttention` with those defaults (kind "hedgehog"); every other argument is LinearAttention's.
Separate maps for q and k (`feature_map_q`, `feature_map_k`) unless tie_feature_map_qk. The paper's layer
has no output norm: `output_norm="identity"` gives it (fla's model always uses the RMSNorm).
fla inits the map to the identity (W = I, b = 0); its *ForCausalLM `post_init` re-inits it N(0, std),
which is what models built from a config do here (`feature_map_init="module"` keeps the identity).

Example:
  >>> layer = HedgehogAttention(64, num_heads=2, rngs=nnx.Rngs(0))
  >>> y, _ = layer(jnp.ones((2, 16, 64)))           # y [2, 16, 64]; state (S [2, 2, 64, 32], z [2, 2, 64])
"""

from __future__ import annotations

from flax import nnx

from gla_jax.layers.mixers.linear_attn import LinearAttention


class HedgehogAttention(LinearAttention):
  """Hedgehog token mixer: x [B, T, D] → y [B, T, D]; `LinearAttention` with feature_map "hedgehog" and
  do_feature_map_norm=True by default (see the module doc). `from_config` takes a `HedgehogConfig`."""

  kind = "hedgehog"

  def __init__(self, hidden_size: int = 1024, *, feature_map: str = "hedgehog", do_feature_map_norm: bool = True,
               rngs: nnx.Rngs, **kwargs):
    if feature_map != "hedgehog":
      raise ValueError(f"feature_map must be 'hedgehog' for HedgehogAttention, got {feature_map!r} "
                       "(use LinearAttention for other maps)")
    super().__init__(hidden_size, feature_map=feature_map, do_feature_map_norm=do_feature_map_norm, rngs=rngs,
                     **kwargs)
