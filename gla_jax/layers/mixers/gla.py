"""Gated Linear Attention layer, equal in math to fla 0.6.0's `GatedLinearAttention` (docs/models.md).

    q, k, v = conv?(x W_q), conv?(x W_k), conv?(x W_v)           (short conv + SiLU if use_short_conv)
    gk      = clamp_min?( logsigmoid(x W_1 W_2 + b) / gate_logit_normalizer )     W_1: D→16, W_2: 16→K·Hkv
    q, k    = feature_map?(q), feature_map?(k)
    o       = chunk_gla(q, k, v, gk)                              per head, scale = head_k ** -0.5
    o       = RMSNorm(o) · w · swish(x W_g)  per head (float32)   (plain RMSNorm if no output gate)
    y       = o W_o

GQA (num_kv_heads < num_heads): k, v and gk have num_kv_heads heads and each is repeated for its
num_heads / num_kv_heads query heads (kv head j serves query heads j·G … j·G + G − 1, fla's order).

Decoding carries a float32 recurrent state [B, H, K, V] per layer (and three conv states when
use_short_conv) in a `RecurrentCache`; `__call__(x, cache=...)` continues from a cache and returns the
updated one, for any number of new tokens (T = 1 takes the token-by-token path). The projections, short
convs, per-shard op call and output norm are `LinearAttentionMixer`'s (base.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.activations import get_activation
from gla_jax.layers.mixers.base import CallContext, LinearAttentionMixer, config_dtypes
from pallas_kernels.gla import chunk_gla, fused_recurrent_gla

_f32 = jnp.float32


class GatedLinearAttention(LinearAttentionMixer):
  """GLA token mixer: x [B, T, D] → y [B, T, D]. Arguments and defaults are fla's layer's.

  Params (kernels [in, out], sharding names in brackets): q_proj [D, H·K] (embed, heads);
  k_proj [D, Hkv·K], v_proj [D, Hkv·V] (embed, kv); g_proj [D, H·V] (embed, heads);
  gk_down [D, 16] (embed, lowrank); gk_up [16, Hkv·K] + bias (lowrank, kv); g_norm weight [V] (norm);
  o_proj [H·V, D] (heads, embed); short convs [W, C] (conv, heads|kv).
  K = D·expand_k / H and V = D·expand_v / H are the per-head dims.

  `impl` is passed to `chunk_gla` ("auto" picks the platform's best). Under a mesh the op runs per
  shard (`jax.shard_map`, batch over the mesh axes of the logical name "batch", heads over those of
  "heads"; see per_shard.py), so Pallas kernels never see, or gather, the global arrays.
  """

  kind = "gla"
  fla_names = {"gk_down": "gk_proj.0", "gk_up": "gk_proj.1"}
  op = staticmethod(chunk_gla)
  recurrent_op = staticmethod(fused_recurrent_gla)

  def __init__(self, hidden_size: int = 1024, *, expand_k: float = 0.5, expand_v: float = 1.0,
               num_heads: int = 4, num_kv_heads: int | None = None, feature_map: str | None = None,
               use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False,
               use_output_gate: bool = True, gate_fn: str = "swish", elementwise_affine: bool = True,
               norm_eps: float = 1e-5, gate_logit_normalizer: float = 16, gate_low_rank_dim: int = 16,
               clamp_min: float | None = None, init_std: float = 0.02, impl: str = "auto",
               chunk_size: int = 64, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    num_kv_heads = self._set_common(hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads, impl=impl,
                                    chunk_size=chunk_size, dtype=dtype, param_dtype=param_dtype,
                                    init_std=init_std, rngs=rngs)
    key_dim, value_dim = self._head_dims(hidden_size, expand_k, expand_v)
    if use_output_gate and gate_fn not in ("swish", "silu", "sigmoid"):
      raise ValueError(f"gate_fn must be 'swish' or 'sigmoid', got {gate_fn!r}")
    self.use_output_gate = use_output_gate
    self.gate_logit_normalizer, self.clamp_min = gate_logit_normalizer, clamp_min
    if feature_map is not None:
      get_activation(feature_map)  # validates the name
    self.feature_map = feature_map

    kv_k = num_kv_heads * self.head_k_dim  # key_dim_per_group in fla
    kv_v = num_kv_heads * self.head_v_dim
    self.q_proj = self._dense(hidden_size, key_dim, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._dense(hidden_size, kv_k, ("embed", "kv"), rngs=rngs)
    self.v_proj = self._dense(hidden_size, kv_v, ("embed", "kv"), rngs=rngs)
    self.g_proj = self._dense(hidden_size, value_dim, ("embed", "heads"), rngs=rngs) if use_output_gate else None
    if use_short_conv:
      self._short_convs({"q": (key_dim, "heads"), "k": (kv_k, "kv"), "v": (kv_v, "kv")},
                        conv_size=conv_size, conv_bias=conv_bias, rngs=rngs)
    self.gk_down = self._dense(hidden_size, gate_low_rank_dim, ("embed", "lowrank"), rngs=rngs)
    self.gk_up = self._dense(gate_low_rank_dim, kv_k, ("lowrank", "kv"), use_bias=True, rngs=rngs)
    self.o_proj = self._dense(value_dim, hidden_size, ("heads", "embed"), rngs=rngs)
    self._output_norm(self.head_v_dim, use_output_gate=use_output_gate, gate_fn=gate_fn, norm_eps=norm_eps,
                      elementwise_affine=elementwise_affine, param_dtype=param_dtype, rngs=rngs)

  @classmethod
  def from_config(cls, config, layer_idx: int, *, rngs: nnx.Rngs) -> "GatedLinearAttention":
    """The GLA layer of a `GLAConfig` (every layer alike)."""
    del layer_idx
    c = config
    return cls(c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v, num_heads=c.num_heads,
               num_kv_heads=c.num_kv_heads, feature_map=c.feature_map, use_short_conv=c.use_short_conv,
               conv_size=c.conv_size, conv_bias=c.conv_bias, use_output_gate=c.use_output_gate,
               gate_fn=c.hidden_act, elementwise_affine=c.elementwise_affine, norm_eps=c.norm_eps,
               gate_logit_normalizer=c.gate_logit_normalizer, gate_low_rank_dim=c.gate_low_rank_dim,
               clamp_min=c.clamp_min, init_std=c.initializer_range, impl=c.attn_impl,
               chunk_size=c.chunk_size, **config_dtypes(c), rngs=rngs)

  @classmethod
  def fla_param_names(cls, config, layer_idx: int) -> dict[str, str]:
    """fla names its norm `g_norm_swish_gate` when it fuses the swish gate into it."""
    names = super().fla_param_names(config, layer_idx)
    if config.use_output_gate and config.fuse_norm and config.hidden_act in ("swish", "silu"):
      names["g_norm"] = "g_norm_swish_gate"
    return names

  def qkv(self, x: jax.Array, streams: dict[str, jax.Array], ctx: CallContext):
    """Heads, GQA repeat, the log forget gate gk = logsigmoid(x W_1 W_2 + b) / normalizer (float32)."""
    del ctx
    gk = self.gk_up(self.gk_down(x))  # [B, T, Hkv·K]
    q = self.heads(streams["q"], self.head_k_dim)  # [B, T, H, K]
    k = self.repeat_kv(self.heads(streams["k"], self.head_k_dim))  # [B, T, H, K]
    v = self.repeat_kv(self.heads(streams["v"], self.head_v_dim))  # [B, T, H, V]
    gk = self.repeat_kv(self.heads(gk, self.head_k_dim))  # [B, T, H, K]
    gk = jax.nn.log_sigmoid(gk.astype(_f32)) / self.gate_logit_normalizer  # log forget gate ≤ 0, f32
    if self.clamp_min is not None:
      gk = jnp.maximum(gk, self.clamp_min)
    if self.feature_map is not None:
      fmap = get_activation(self.feature_map)
      q, k = fmap(q), fmap(k)
    return q, k, v, {"g": gk}
