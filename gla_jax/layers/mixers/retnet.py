"""Multi-scale retention (RetNet), equal in math to fla 0.6.0's `MultiScaleRetention` (docs/models.md).

    q, k, v = conv?(x W_q), conv?(x W_k), conv?(x W_v)         (short conv + SiLU if use_short_conv)
    q, k    = feature_map?(q), feature_map?(k)                  per head (head_k_dim K)
    q, k    = RoPE(q, pos), RoPE(k, pos)                        GPT-NeoX halves, dim K, base 10000;
                                                                pos restarts at every document start
    o       = chunk_simple_gla(q, k, v, g_gamma)                g_gamma_h = log(1 − 2^(−5−h)), h < H,
                                                                scale = K ** -0.5 (fla's chunk_retention)
    o       = RMSNorm(o) · w · swish(x W_g)  per head (float32) (plain RMSNorm if no output gate)
    y       = o W_o

The decay is a constant of the layer (no parameter, no gradient), one per query head, so under GQA the
kv heads are repeated first and query head h keeps decay h. Decoding carries the float32 state
[B, H, K, V] in a `RecurrentCache`; RoPE positions continue from `offset`. fla's RetNet *model* builds
its layers without short convs (its block does not pass `use_short_conv`): `from_config` does the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gla_jax.layers.activations import get_activation
from gla_jax.layers.mixers.attention import rotary
from gla_jax.layers.mixers.base import CallContext, LinearAttentionMixer, config_dtypes
from pallas_kernels.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

_f32 = jnp.float32


def retention_decay(num_heads: int) -> np.ndarray:
  """float32 [H]: RetNet's log decay per head, log(1 − 2^(−5−h)) (fla's `chunk_retention`)."""
  h = np.arange(num_heads, dtype=np.float32)
  return np.log(np.float32(1.0) - np.float32(2.0) ** (np.float32(-5.0) - h)).astype(np.float32)


class MultiScaleRetention(LinearAttentionMixer):
  """RetNet token mixer: x [B, T, D] → y [B, T, D]. Arguments and defaults are fla's layer's.

  Params (kernels [in, out], sharding names in brackets): q_proj [D, H·K] (embed, heads);
  k_proj [D, Hkv·K], v_proj [D, Hkv·V] (embed, kv); g_proj [D, H·V] (embed, heads) with the output
  gate; g_norm weight [V] (norm); o_proj [H·V, D] (heads, embed); short convs [W, C] (conv, heads|kv).
  K = D·expand_k / H (even: RoPE) and V = D·expand_v / H.

  Example:
    >>> layer = MultiScaleRetention(64, num_heads=2, rngs=nnx.Rngs(0))
    >>> y, _ = layer(jnp.ones((1, 16, 64)))
  """

  kind = "retnet"
  op = staticmethod(chunk_simple_gla)
  recurrent_op = staticmethod(fused_recurrent_simple_gla)

  def __init__(self, hidden_size: int = 1024, *, expand_k: float = 1.0, expand_v: float = 2.0,
               num_heads: int = 8, num_kv_heads: int | None = None, feature_map: str | None = None,
               use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False,
               use_output_gate: bool = True, gate_fn: str = "swish", elementwise_affine: bool = True,
               norm_eps: float = 1e-5, rope_theta: float = 10000.0, init_std: float = 0.02,
               impl: str = "auto", chunk_size: int = 64, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    num_kv_heads = self._set_common(hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads, impl=impl,
                                    chunk_size=chunk_size, dtype=dtype, param_dtype=param_dtype,
                                    init_std=init_std, rngs=rngs)
    key_dim, value_dim = self._head_dims(hidden_size, expand_k, expand_v)
    if (key_dim // num_heads) % 2:
      raise ValueError(f"head_k_dim ({key_dim // num_heads}) must be even (RoPE rotates pairs)")
    self.use_output_gate, self.rope_theta = use_output_gate, float(rope_theta)
    if feature_map is not None:
      get_activation(feature_map)  # validates the name
    self.feature_map = feature_map

    kv_k, kv_v = num_kv_heads * self.head_k_dim, num_kv_heads * self.head_v_dim
    self.q_proj = self._dense(hidden_size, key_dim, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._dense(hidden_size, kv_k, ("embed", "kv"), rngs=rngs)
    self.v_proj = self._dense(hidden_size, kv_v, ("embed", "kv"), rngs=rngs)
    self.g_proj = self._dense(hidden_size, value_dim, ("embed", "heads"), rngs=rngs) if use_output_gate else None
    if use_short_conv:
      self._short_convs({"q": (key_dim, "heads"), "k": (kv_k, "kv"), "v": (kv_v, "kv")},
                        conv_size=conv_size, conv_bias=conv_bias, rngs=rngs)
    self.o_proj = self._dense(value_dim, hidden_size, ("heads", "embed"), rngs=rngs)
    self._output_norm(self.head_v_dim, use_output_gate=use_output_gate, gate_fn=gate_fn, norm_eps=norm_eps,
                      elementwise_affine=elementwise_affine, param_dtype=param_dtype, rngs=rngs)

  @classmethod
  def from_config(cls, config, layer_idx: int, *, rngs: nnx.Rngs) -> "MultiScaleRetention":
    """The retention layer of a `RetNetConfig` (every layer alike; no short convs, as fla's RetNetBlock)."""
    del layer_idx
    c = config
    return cls(c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v, num_heads=c.num_heads,
               num_kv_heads=c.num_kv_heads, feature_map=c.feature_map, use_short_conv=False,
               use_output_gate=c.use_output_gate, gate_fn=c.hidden_act, elementwise_affine=c.elementwise_affine,
               norm_eps=c.norm_eps, init_std=c.initializer_range, impl=c.attn_impl, chunk_size=c.chunk_size,
               **config_dtypes(c), rngs=rngs)

  @classmethod
  def fla_param_names(cls, config, layer_idx: int) -> dict[str, str]:
    """fla names the norm `g_norm_swish_gate` when it fuses the gate: gate_fn exactly 'swish', fuse_norm."""
    names = super().fla_param_names(config, layer_idx)
    if config.use_output_gate and config.fuse_norm and config.hidden_act == "swish":
      names["g_norm"] = "g_norm_swish_gate"
    return names

  def qkv(self, x: jax.Array, streams: dict[str, jax.Array], ctx: CallContext):
    """Heads, feature map, RoPE at the tokens' positions, GQA repeat; the constant per-head decay."""
    del x
    q = self.heads(streams["q"], self.head_k_dim)  # [B, T, H, K]
    k = self.heads(streams["k"], self.head_k_dim)  # [B, T, Hkv, K]
    v = self.heads(streams["v"], self.head_v_dim)  # [B, T, Hkv, V]
    if self.feature_map is not None:
      fmap = get_activation(self.feature_map)
      q, k = fmap(q), fmap(k)
    pos = ctx.positions(q.shape[1])  # [B or 1, T]
    q, k = rotary(q, pos, self.rope_theta), rotary(k, pos, self.rope_theta)
    k, v = self.repeat_kv(k), self.repeat_kv(v)  # [B, T, H, ·]
    return q, k, v, {"g_gamma": jnp.asarray(retention_decay(self.num_heads))}
