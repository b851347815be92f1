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
use_short_conv); `__call__(x, cache=...)` continues from a cache and returns the updated one, for any
number of new tokens (T = 1 takes the token-by-token path).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.activations import get_activation
from gla_jax.layers.conv import ShortConvolution
from gla_jax.layers.linear import dense
from gla_jax.layers.norm import GatedRMSNorm, RMSNorm
from gla_jax.layers.per_shard import per_shard
from pallas_kernels.gla import chunk_gla, fused_recurrent_gla

_f32 = jnp.float32


@flax.struct.dataclass
class GLALayerCache:
  """Decode-time state of one GLA layer."""

  state: jax.Array  # float32 [B, H, K, V], the recurrent state (per query head)
  conv_q: jax.Array | None = None  # [B, W-1, H·K]   (only with use_short_conv)
  conv_k: jax.Array | None = None  # [B, W-1, Hkv·K]
  conv_v: jax.Array | None = None  # [B, W-1, Hkv·V]


class GatedLinearAttention(nnx.Module):
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

  def __init__(self, hidden_size: int = 1024, *, expand_k: float = 0.5, expand_v: float = 1.0,
               num_heads: int = 4, num_kv_heads: int | None = None, feature_map: str | None = None,
               use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False,
               use_output_gate: bool = True, gate_fn: str = "swish", elementwise_affine: bool = True,
               norm_eps: float = 1e-5, gate_logit_normalizer: float = 16, gate_low_rank_dim: int = 16,
               clamp_min: float | None = None, init_std: float = 0.02, impl: str = "auto",
               chunk_size: int = 64, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
    key_dim, value_dim = hidden_size * expand_k, hidden_size * expand_v
    if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
      raise ValueError(f"hidden_size·expand_k ({key_dim}) and hidden_size·expand_v ({value_dim}) "
                       "must be integers")
    key_dim, value_dim = round(key_dim), round(value_dim)
    if key_dim % num_heads or value_dim % num_heads:
      raise ValueError(f"key_dim ({key_dim}) and value_dim ({value_dim}) must be divisible by "
                       f"num_heads ({num_heads})")
    if use_output_gate and gate_fn not in ("swish", "silu", "sigmoid"):
      raise ValueError(f"gate_fn must be 'swish' or 'sigmoid', got {gate_fn!r}")
    self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
    self.num_kv_groups = num_heads // num_kv_heads
    self.key_dim, self.value_dim = key_dim, value_dim
    self.head_k_dim, self.head_v_dim = key_dim // num_heads, value_dim // num_heads
    self.use_short_conv, self.use_output_gate = use_short_conv, use_output_gate
    self.gate_logit_normalizer, self.clamp_min = gate_logit_normalizer, clamp_min
    if feature_map is not None:
      get_activation(feature_map)  # validates the name
    self.feature_map = feature_map
    self.impl, self.chunk_size, self.dtype = impl, chunk_size, dtype

    kv_k = num_kv_heads * self.head_k_dim  # key_dim_per_group in fla
    kv_v = num_kv_heads * self.head_v_dim
    kw = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = dense(hidden_size, key_dim, ("embed", "heads"), **kw)
    self.k_proj = dense(hidden_size, kv_k, ("embed", "kv"), **kw)
    self.v_proj = dense(hidden_size, kv_v, ("embed", "kv"), **kw)
    self.g_proj = dense(hidden_size, value_dim, ("embed", "heads"), **kw) if use_output_gate else None
    if use_short_conv:
      ckw = dict(bias=conv_bias, activation="silu", **kw)
      self.q_conv1d = ShortConvolution(key_dim, conv_size, channel_name="heads", **ckw)
      self.k_conv1d = ShortConvolution(kv_k, conv_size, channel_name="kv", **ckw)
      self.v_conv1d = ShortConvolution(kv_v, conv_size, channel_name="kv", **ckw)
    else:
      self.q_conv1d = self.k_conv1d = self.v_conv1d = None
    self.gk_down = dense(hidden_size, gate_low_rank_dim, ("embed", "lowrank"), **kw)
    self.gk_up = dense(gate_low_rank_dim, kv_k, ("lowrank", "kv"), use_bias=True, **kw)
    self.o_proj = dense(value_dim, hidden_size, ("heads", "embed"), **kw)
    nkw = dict(eps=norm_eps, elementwise_affine=elementwise_affine, param_dtype=param_dtype, rngs=rngs)
    if use_output_gate:
      self.g_norm = GatedRMSNorm(self.head_v_dim, activation=gate_fn, **nkw)
    else:
      self.g_norm = RMSNorm(self.head_v_dim, **nkw)

  def init_cache(self, batch_size: int) -> GLALayerCache:
    """Zero cache: state [B, H, K, V] float32 (+ conv states [B, W-1, C] in the compute dtype)."""
    state = jnp.zeros((batch_size, self.num_heads, self.head_k_dim, self.head_v_dim), _f32)
    if not self.use_short_conv:
      return GLALayerCache(state=state)
    dt = self.dtype or _f32
    return GLALayerCache(state=state, conv_q=self.q_conv1d.init_state(batch_size, dt),
                         conv_k=self.k_conv1d.init_state(batch_size, dt),
                         conv_v=self.v_conv1d.init_state(batch_size, dt))

  def _heads(self, x: jax.Array, d: int) -> jax.Array:
    """[B, T, h·d] → [B, T, h, d]."""
    return x.reshape(*x.shape[:-1], x.shape[-1] // d, d)

  def _repeat_kv(self, x: jax.Array) -> jax.Array:
    """[B, T, Hkv, d] → [B, T, H, d]: kv head j serves query heads j·G … j·G + G − 1."""
    return x if self.num_kv_groups == 1 else jnp.repeat(x, self.num_kv_groups, axis=2)

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               cache: GLALayerCache | None = None, offset=None,
               return_cache: bool = False) -> tuple[jax.Array, GLALayerCache | None]:
    """x [B, T, D]; segment_ids [B, T] (packed documents, no cross-document flow); cache: continue from it.

    `offset` (tokens already in the cache) is accepted for a common mixer signature and unused.
    Returns (y [B, T, D], the updated cache if `cache` is given or `return_cache`, else None).
    """
    del offset
    B, T, D = x.shape
    if D != self.hidden_size:
      raise ValueError(f"x must have shape [B, T, {self.hidden_size}], got {x.shape}")
    want_cache = return_cache or cache is not None
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, T, H·K], [B, T, Hkv·K], [B, T, Hkv·V]
    conv_states = (None, None, None)
    if self.use_short_conv:
      prev = (None, None, None) if cache is None else (cache.conv_q, cache.conv_k, cache.conv_v)
      (q, cq), (k, ck), (v, cv) = (
          conv(t, segment_ids=segment_ids, state=s)
          for conv, t, s in zip((self.q_conv1d, self.k_conv1d, self.v_conv1d), (q, k, v), prev))
      conv_states = (cq, ck, cv)
    gk = self.gk_up(self.gk_down(x))  # [B, T, Hkv·K]

    q = self._heads(q, self.head_k_dim)  # [B, T, H, K]
    k = self._repeat_kv(self._heads(k, self.head_k_dim))  # [B, T, H, K]
    gk = self._repeat_kv(self._heads(gk, self.head_k_dim))  # [B, T, H, K]
    v = self._repeat_kv(self._heads(v, self.head_v_dim))  # [B, T, H, V]
    gk = jax.nn.log_sigmoid(gk.astype(_f32)) / self.gate_logit_normalizer  # log forget gate ≤ 0, f32
    if self.clamp_min is not None:
      gk = jnp.maximum(gk, self.clamp_min)
    if self.feature_map is not None:
      fmap = get_activation(self.feature_map)
      q, k = fmap(q), fmap(k)

    h0 = None if cache is None else cache.state
    # per shard under a mesh (batch and heads split, see per_shard.py), a direct call otherwise
    if T == 1 and cache is not None:  # one decode step: the token-by-token recurrence
      o, state = per_shard(fused_recurrent_gla)(q, k, v, gk, initial_state=h0,
                                                output_final_state=True, segment_ids=segment_ids)
    else:
      o, state = per_shard(chunk_gla)(q, k, v, gk, initial_state=h0, output_final_state=want_cache,
                                      segment_ids=segment_ids, chunk_size=self.chunk_size, impl=self.impl)
    # o: [B, T, H, V] in v's dtype
    if self.use_output_gate:
      g = self._heads(self.g_proj(x), self.head_v_dim)  # [B, T, H, V]
      o = self.g_norm(o, g)
    else:
      o = self.g_norm(o)
    y = self.o_proj(o.reshape(B, T, self.value_dim))
    if not want_cache:
      return y, None
    return y, GLALayerCache(state=state, conv_q=conv_states[0], conv_k=conv_states[1],
                            conv_v=conv_states[2])
