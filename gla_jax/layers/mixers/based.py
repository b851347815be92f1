"""Based linear attention (Arora et al. 2024), equal in math to fla 0.6.0's `BasedLinearAttention`.

    q, k, v = x W_q, x W_k, x W_v           q, k: H heads of feature_dim F (16); v: H heads of D // H
    φ(x)    = [1, x / F^¼, x_i² / (√F·√2), x_i x_j / √F (i < j)]     2nd-order Taylor map of exp, 1 + F + F(F+1)/2
    o_t     = Σ_{s≤t} φ(q_t)·φ(k_s) v_s / (Σ_{s≤t} φ(q_t)·φ(k_s) + 1e-10)
            = Σ_{s≤t} a_ts v_s / (Σ_{s≤t} a_ts + 1e-10),   a_ts = 1 + σ + σ²/2,  σ = q_t·k_s / √F
    y       = o W_o                         (no output norm, no gate)

This is fla's `mode="chunk"` / "fused_chunk" exactly (`chunk_linear_attn(φq, φk, v, scale=1,
normalize=True)`). fla's default `mode="parallel"` computes the same sum in quadratic form with a
denominator epsilon of 1e-6 instead of 1e-10: the denominator is ≥ (t+1)/2 (every a_ts ≥ ½), so the two
differ by < 2e-6 relatively. fla's `eps` (1e-12) is used only by its non-causal / reference path; this
layer is causal. One `feature_map` (no params) serves q and k, as in fla. fla asserts
num_key_value_heads == num_heads (no GQA), and so does this layer.

Decoding carries the float32 pair (S [B, H, 153, V], z [B, H, 153]) for F = 16 (fla's layer keeps no
cache; the state is the op's).

Example:
  >>> layer = BasedLinearAttention(64, num_heads=4, num_key_value_heads=4, rngs=nnx.Rngs(0))
  >>> y, _ = layer(jnp.ones((2, 16, 64)))           # y [2, 16, 64]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.feature_maps import TaylorFeatureMap
from gla_jax.layers.mixers.base import CallContext, LinearAttentionMixer, config_dtypes
from pallas_kernels.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn

BASED_MODES = ("parallel", "chunk", "fused_chunk")


class BasedLinearAttention(LinearAttentionMixer):
  """Based token mixer: x [B, T, D] → y [B, T, D]. Arguments and defaults are fla's layer's.

  Params (kernels [in, out], sharding names in brackets): q_proj [D, H·F] (embed, heads);
  k_proj [D, H·F] (embed, kv); v_proj [D, H·Dv] (embed, kv); o_proj [H·Dv, D] (heads, embed), with
  Dv = D // H (floor, as fla). N(0, init_std) init. `impl` is passed to `chunk_linear_attn`.
  `mode` is fla's kernel choice, accepted for configs: every mode runs the chunk op (see the module doc).
  """

  kind = "based"
  op = staticmethod(chunk_linear_attn)
  recurrent_op = staticmethod(fused_recurrent_linear_attn)
  conv_streams = ()

  def __init__(self, hidden_size: int, *, feature_dim: int = 16, num_key_value_heads: int = 12,
               num_heads: int = 12, feature_name: str = "taylor_exp", mode: str = "parallel",
               init_std: float = 0.02, impl: str = "auto", chunk_size: int = 64, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self._set_common(hidden_size, num_heads=num_heads, num_kv_heads=num_key_value_heads, impl=impl,
                     chunk_size=chunk_size, dtype=dtype, param_dtype=param_dtype, init_std=init_std,
                     rngs=rngs)
    if num_key_value_heads != num_heads:
      raise ValueError(f"num_key_value_heads ({num_key_value_heads}) must equal num_heads ({num_heads}) "
                       "(fla's Based has no grouped heads)")
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
      raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
    if hidden_size < num_heads:
      raise ValueError(f"hidden_size ({hidden_size}) must be at least num_heads ({num_heads})")
    if feature_name != "taylor_exp":
      raise ValueError(f"feature_name must be 'taylor_exp' (fla's only Based map), got {feature_name!r}")
    if mode not in BASED_MODES:
      raise ValueError(f"mode must be one of {BASED_MODES}, got {mode!r}")
    self.feature_dim = self.head_k_dim = feature_dim
    self.head_v_dim = hidden_size // num_heads
    self.feature_map = TaylorFeatureMap(feature_dim, dtype=dtype)
    self.state_k_dim, self.state_v_dim = self.feature_map.out_dim, self.head_v_dim
    self.op_options = (("scale", 1.0), ("normalize", True))

    H, F, Dv = num_heads, feature_dim, self.head_v_dim
    self.q_proj = self._dense(hidden_size, H * F, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._dense(hidden_size, H * F, ("embed", "kv"), rngs=rngs)
    self.v_proj = self._dense(hidden_size, H * Dv, ("embed", "kv"), rngs=rngs)
    self.o_proj = self._dense(H * Dv, hidden_size, ("heads", "embed"), rngs=rngs)
    # no g_proj / g_norm: the base `output` is then o_proj(o) alone, as fla's layer

  @classmethod
  def from_config(cls, config, layer_idx: int, *, rngs: nnx.Rngs) -> "BasedLinearAttention":
    """The Based layer of a `BasedConfig` (every layer not in its `attn` spec)."""
    del layer_idx
    c = config
    return cls(c.hidden_size, feature_dim=c.feature_dim, num_key_value_heads=c.num_key_value_heads,
               num_heads=c.num_heads, feature_name=c.feature_name, mode=c.attn_mode,
               init_std=c.initializer_range, impl=c.attn_impl, chunk_size=c.chunk_size, **config_dtypes(c),
               rngs=rngs)

  def qkv(self, x: jax.Array, streams: dict[str, jax.Array], ctx: CallContext):
    """Heads and the Taylor map on q and k (one module, no params); no gate."""
    del x, ctx
    q = self.feature_map(self.heads(streams["q"], self.feature_dim))  # [B, T, H, 1 + F + F(F+1)/2]
    k = self.feature_map(self.heads(streams["k"], self.feature_dim))
    v = self.heads(streams["v"], self.head_v_dim)  # [B, T, H, Dv]
    return q, k, v, {}
