"""Lightning attention (TransNormerLLM's NormLinearAttention with the Lightning Attention-2 decay), in
the shape fla gives its linear-attention layers (docs/models.md).

fla 0.6.0 has the op (`fla.ops.lightning_attn.chunk_lightning_attn`) but no layer and no model: this
layer is our design, after TransNormerLLM's NormLinearAttention (Qin et al. 2023/2024):

    q, k, v = conv?(x W_q), conv?(x W_k), conv?(x W_v)      (short conv + SiLU if use_short_conv)
    q, k    = φ(q), φ(k)                                     φ = SiLU (feature_map "swish"; None: identity)
    o       = chunk_simple_gla(q, k, v, g_gamma)             per head h < H, scale = K ** -0.5:
              S_t = exp(γ_h) S_{t−1} + k_tᵀ v_t,   o_t = K^-½ q_t S_t
              γ_h = −(8 / H) · (1 − l / L) · h               l = layer index, L = number of layers
                                                             (fla's chunk_lightning_attn; head 0 keeps
                                                             everything, deeper layers decay less)
    o       = RMSNorm(o) · w · swish(x W_g)  per head (float32)   (plain RMSNorm if no output gate)
    y       = o W_o

Differences from TransNormerLLM's code, all in the direction of fla's conventions: separate q/k/v/g
projections (named like fla's) instead of one fused `qkvu_proj`, a per-head RMSNorm with a swish gate
(fla's FusedRMSNormGated) instead of SimpleRMSNorm over all heads times the raw gate u, fla's decay
formula above, and fla's default scale K^-½ (TransNormerLLM uses none; the output norm makes the two
nearly equal). GQA and short convs come from `LinearAttentionMixer`. The decay is a constant of the
layer (no parameter); decoding carries the float32 state [B, H, K, V] in a `RecurrentCache`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gla_jax.layers.activations import get_activation
from gla_jax.layers.mixers.base import CallContext, LinearAttentionMixer, config_dtypes
from pallas_kernels.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

_f32 = jnp.float32


def lightning_decay(num_heads: int, layer_idx: int, num_layers: int) -> np.ndarray:
  """float32 [H]: the log decay per head, −(8 / H)(1 − layer_idx / num_layers) · h (fla's formula)."""
  h = np.arange(num_heads, dtype=np.float32)
  return (-(8.0 / num_heads * (1.0 - layer_idx / num_layers)) * h).astype(np.float32)


class LightningAttention(LinearAttentionMixer):
  """Lightning-attention token mixer: x [B, T, D] → y [B, T, D] (see the module doc for the math).

  Params (kernels [in, out], sharding names in brackets): q_proj [D, H·K] (embed, heads);
  k_proj [D, Hkv·K], v_proj [D, Hkv·V] (embed, kv); g_proj [D, H·V] (embed, heads) with the output
  gate; g_norm weight [V] (norm); o_proj [H·V, D] (heads, embed); short convs [W, C] (conv, heads|kv).
  K = D·expand_k / H, V = D·expand_v / H. `layer_idx` / `num_layers` fix the decay.

  Example:
    >>> layer = LightningAttention(64, num_heads=2, layer_idx=0, num_layers=2, rngs=nnx.Rngs(0))
    >>> y, _ = layer(jnp.ones((1, 16, 64)))
  """

  kind = "lightning"
  op = staticmethod(chunk_simple_gla)
  recurrent_op = staticmethod(fused_recurrent_simple_gla)

  def __init__(self, hidden_size: int = 1024, *, layer_idx: int = 0, num_layers: int = 1,
               expand_k: float = 1.0, expand_v: float = 1.0, num_heads: int = 8,
               num_kv_heads: int | None = None, feature_map: str | None = "swish",
               use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False,
               use_output_gate: bool = True, gate_fn: str = "swish", elementwise_affine: bool = True,
               norm_eps: float = 1e-5, init_std: float = 0.02, impl: str = "auto", chunk_size: int = 64,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    num_kv_heads = self._set_common(hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads, impl=impl,
                                    chunk_size=chunk_size, dtype=dtype, param_dtype=param_dtype,
                                    init_std=init_std, rngs=rngs)
    for name, n, low in (("num_layers", num_layers, 1), ("layer_idx", layer_idx, 0)):
      if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < low:
        raise ValueError(f"{name} must be an int >= {low}, got {n!r}")
    if layer_idx >= num_layers:
      raise ValueError(f"layer_idx ({layer_idx}) must be < num_layers ({num_layers})")
    key_dim, value_dim = self._head_dims(hidden_size, expand_k, expand_v)
    self.layer_idx, self.num_layers = int(layer_idx), int(num_layers)
    self.use_output_gate = use_output_gate
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
  def from_config(cls, config, layer_idx: int, *, rngs: nnx.Rngs) -> "LightningAttention":
    """Layer `layer_idx` of a `LightningConfig` (its decay depends on layer_idx / num_hidden_layers)."""
    c = config
    return cls(c.hidden_size, layer_idx=layer_idx, num_layers=c.num_hidden_layers, expand_k=c.expand_k,
               expand_v=c.expand_v, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
               feature_map=c.feature_map, use_short_conv=c.use_short_conv, conv_size=c.conv_size,
               conv_bias=c.conv_bias, use_output_gate=c.use_output_gate, gate_fn=c.hidden_act,
               elementwise_affine=c.elementwise_affine, norm_eps=c.norm_eps, init_std=c.initializer_range,
               impl=c.attn_impl, chunk_size=c.chunk_size, **config_dtypes(c), rngs=rngs)

  @classmethod
  def fla_param_names(cls, config, layer_idx: int) -> dict[str, str]:
    """fla's naming of a fused swish-gated norm: `g_norm_swish_gate` (gate 'swish', fuse_norm)."""
    names = super().fla_param_names(config, layer_idx)
    if config.use_output_gate and config.fuse_norm and config.hidden_act == "swish":
      names["g_norm"] = "g_norm_swish_gate"
    return names

  def qkv(self, x: jax.Array, streams: dict[str, jax.Array], ctx: CallContext):
    """Heads, φ on q and k, GQA repeat; the constant per-head decay of this layer."""
    del x, ctx
    q = self.heads(streams["q"], self.head_k_dim)  # [B, T, H, K]
    k = self.heads(streams["k"], self.head_k_dim)  # [B, T, Hkv, K]
    v = self.heads(streams["v"], self.head_v_dim)  # [B, T, Hkv, V]
    if self.feature_map is not None:
      fmap = get_activation(self.feature_map)
      q, k = fmap(q), fmap(k)
    k, v = self.repeat_kv(k), self.repeat_kv(v)  # [B, T, H, ·]
    g_gamma = lightning_decay(self.num_heads, self.layer_idx, self.num_layers)
    return q, k, v, {"g_gamma": jnp.asarray(g_gamma)}
