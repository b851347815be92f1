"""Linear attention with a feature map, equal in math to fla 0.6.0's `LinearAttention` (docs/models.md).

    q, k, v = x W_q, x W_k, x W_v                                 (k, v: num_kv_heads heads)
    q, k    = φ_q(q), φ_k(k)        per head, weights shared by the heads (feature_maps.py)
    q, k    = q / (Σ q + 1e-4), k / (Σ k + 1e-4)                  only if norm_q / norm_k
    o       = chunk_linear_attn(q, k, v, normalize=do_feature_map_norm)    scale = K_φ ** -0.5
    o       = RMSNorm(o) · w  per head (float32 weight; no gate)  (output_norm="identity": none)
    y       = o W_o

K_φ is the feature map's output dim (2·K for hedgehog, 8·K for dpfp, K otherwise). With
do_feature_map_norm (fla config `norm_feature_map`) the op divides by scale · q_t · Σ_{s≤t} k_s + 1e-10
and its state is the pair (S [B, H, K_φ, V], z [B, H, K_φ]); fla's layer passes `normalize=` exactly so.
φ_q and φ_k are separate modules (`feature_map_q`, `feature_map_k`); with tie_feature_map_qk one module
serves both and is stored once, as `feature_map_q` (`feature_map_k` is None), the name under which
transformers saves fla's shared module.

GQA (num_kv_heads < num_heads): kv head j serves query heads j·G … j·G + G − 1 (fla's order); the
feature map is applied before the repeat (same values: it acts per head with shared weights).

Example:
  >>> layer = LinearAttention(64, num_heads=2, feature_map="hedgehog", rngs=nnx.Rngs(0))
  >>> y, _ = layer(jnp.ones((2, 16, 64)))           # y [2, 16, 64]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.feature_maps import make_feature_map
from gla_jax.layers.mixers.base import CallContext, LinearAttentionMixer, config_dtypes
from gla_jax.layers.norm import RMSNorm
from pallas_kernels.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn

_f32 = jnp.float32

# the maps fla's LinearAttention accepts (fla raises NotImplementedError for any other)
LINEAR_ATTN_FEATURE_MAPS = ("identity", "elu", "relu", "hedgehog", "t2r", "elementwise_product", "dpfp")
QK_NORM_EPS = 1e-4  # fla's norm_q / norm_k: x / (x.sum(-1) + 1e-4)


def sum_normalize(x: jax.Array) -> jax.Array:
  """x / (Σ_last x + 1e-4) (fla's norm_q / norm_k), in float32, back in x's dtype."""
  x32 = x.astype(_f32)
  return (x32 / (jnp.sum(x32, axis=-1, keepdims=True) + QK_NORM_EPS)).astype(x.dtype)


class LinearAttention(LinearAttentionMixer):
  """Linear-attention token mixer: x [B, T, D] → y [B, T, D]. Arguments and defaults are fla's layer's.

  Params (kernels [in, out], sharding names in brackets): q_proj [D, H·K] (embed, heads);
  k_proj [D, Hkv·K], v_proj [D, Hkv·V] (embed, kv); o_proj [H·V, D] (heads, embed); norm weight [V]
  (norm; absent with output_norm="identity" or elementwise_affine=False); feature_map_q / feature_map_k
  params of the map (hedgehog `layer` [K, K] + bias, t2r `layer` [K, K], elementwise_product `layer1`,
  `layer2` [K, K] + biases; replicated). K = D·expand_k / H, V = D·expand_v / H.

  `init_std`: N(0, init_std) for every Linear, the feature maps' included (fla's *ForCausalLM
  `post_init`); `feature_map_init="module"` keeps fla's module init for the maps instead (hedgehog:
  identity kernel, zero bias; t2r / elementwise_product: torch's default uniform).
  `impl` is passed to `chunk_linear_attn` ("auto" picks the platform's best).
  """

  kind = "linear_attn"
  op = staticmethod(chunk_linear_attn)
  recurrent_op = staticmethod(fused_recurrent_linear_attn)
  conv_streams = ()  # fla's LinearAttention has no short convs

  def __init__(self, hidden_size: int = 1024, *, expand_k: float = 1.0, expand_v: float = 1.0,
               num_heads: int = 8, num_kv_heads: int | None = None, feature_map: str = "elementwise_product",
               tie_feature_map_qk: bool = False, output_norm: str = "rmsnorm", norm_q: bool = False,
               norm_k: bool = False, do_feature_map_norm: bool = False, elementwise_affine: bool = True,
               norm_eps: float = 1e-5, mode: str = "chunk", init_std: float = 0.02,
               feature_map_init: str = "model", impl: str = "auto", chunk_size: int = 64, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    num_kv_heads = self._set_common(hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads, impl=impl,
                                    chunk_size=chunk_size, dtype=dtype, param_dtype=param_dtype,
                                    init_std=init_std, rngs=rngs)
    if mode not in ("chunk", "fused_chunk", "fused_recurrent"):  # fla's kernel choice: the same math
      raise ValueError(f"mode must be 'chunk', 'fused_chunk' or 'fused_recurrent', got {mode!r}")
    if feature_map not in LINEAR_ATTN_FEATURE_MAPS:
      raise ValueError(f"feature_map must be one of {LINEAR_ATTN_FEATURE_MAPS}, got {feature_map!r}")
    if output_norm not in ("rmsnorm", "identity"):
      raise ValueError(f"output_norm must be 'rmsnorm' or 'identity', got {output_norm!r}")
    if feature_map_init not in ("model", "module"):
      raise ValueError(f"feature_map_init must be 'model' or 'module', got {feature_map_init!r}")
    for name, flag in (("tie_feature_map_qk", tie_feature_map_qk), ("norm_q", norm_q), ("norm_k", norm_k),
                       ("do_feature_map_norm", do_feature_map_norm)):
      if not isinstance(flag, bool):
        raise ValueError(f"{name} must be a bool, got {flag!r}")
    key_dim, value_dim = hidden_size * expand_k, hidden_size * expand_v
    if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
      raise ValueError(f"hidden_size·expand_k ({key_dim}) and hidden_size·expand_v ({value_dim}) "
                       "must be integers")
    key_dim, value_dim = round(key_dim), round(value_dim)
    if key_dim % num_heads or value_dim % num_heads:
      raise ValueError(f"key_dim ({key_dim}) and value_dim ({value_dim}) must be divisible by "
                       f"num_heads ({num_heads})")
    self.key_dim, self.value_dim = key_dim, value_dim
    self.head_k_dim, self.head_v_dim = key_dim // num_heads, value_dim // num_heads
    self.feature_map_name, self.tie_feature_map_qk = feature_map, tie_feature_map_qk
    self.norm_q, self.norm_k = norm_q, norm_k
    self.op_options = (("normalize", do_feature_map_norm),)

    kv_k, kv_v = num_kv_heads * self.head_k_dim, num_kv_heads * self.head_v_dim
    self.q_proj = self._dense(hidden_size, key_dim, ("embed", "heads"), rngs=rngs)
    self.k_proj = self._dense(hidden_size, kv_k, ("embed", "kv"), rngs=rngs)
    self.v_proj = self._dense(hidden_size, kv_v, ("embed", "kv"), rngs=rngs)
    fm_kw = dict(init_std=init_std if feature_map_init == "model" else None, dtype=dtype,
                 param_dtype=param_dtype, rngs=rngs)
    self.feature_map_q = make_feature_map(feature_map, self.head_k_dim, **fm_kw)
    # tied: one module, stored once (see the module doc); fla ties only maps with weights
    self.feature_map_k = None if tie_feature_map_qk else make_feature_map(feature_map, self.head_k_dim, **fm_kw)
    self.state_k_dim, self.state_v_dim = self.feature_map_q.out_dim, self.head_v_dim
    self.norm = (RMSNorm(self.head_v_dim, eps=norm_eps, elementwise_affine=elementwise_affine,
                         param_dtype=_f32, rngs=rngs) if output_norm == "rmsnorm" else None)
    self.o_proj = self._dense(value_dim, hidden_size, ("heads", "embed"), rngs=rngs)

  @classmethod
  def from_config(cls, config, layer_idx: int, *, rngs: nnx.Rngs) -> "LinearAttention":
    """The layer of a `LinearAttentionConfig` (every layer alike; fla's block passes these fields)."""
    del layer_idx
    c = config
    return cls(c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v, num_heads=c.num_heads,
               num_kv_heads=c.num_kv_heads, feature_map=c.feature_map, tie_feature_map_qk=c.tie_feature_map_qk,
               norm_q=c.norm_q, norm_k=c.norm_k, do_feature_map_norm=c.norm_feature_map,
               elementwise_affine=c.elementwise_affine, norm_eps=c.norm_eps, mode=c.attn_mode,
               init_std=c.initializer_range, impl=c.attn_impl, chunk_size=c.chunk_size, **config_dtypes(c),
               rngs=rngs)

  def qkv(self, x: jax.Array, streams: dict[str, jax.Array], ctx: CallContext):
    """Heads, the feature maps, norm_q / norm_k, GQA repeat; no gate."""
    del x, ctx
    fmap_k = self.feature_map_q if self.feature_map_k is None else self.feature_map_k
    q = self.feature_map_q(self.heads(streams["q"], self.head_k_dim))  # [B, T, H, K_φ]
    k = fmap_k(self.heads(streams["k"], self.head_k_dim))  # [B, T, Hkv, K_φ]
    if self.norm_q:
      q = sum_normalize(q)
    if self.norm_k:
      k = sum_normalize(k)
    v = self.heads(streams["v"], self.head_v_dim)  # [B, T, Hkv, V]
    return q, self.repeat_kv(k), self.repeat_kv(v), {}

  def output(self, o: jax.Array, x: jax.Array) -> jax.Array:
    """fla's layer: a plain per-head RMSNorm named `norm` (no output gate), then o_proj."""
    del x
    B, T = o.shape[:2]
    if self.norm is not None:
      o = self.norm(o)
    return self.o_proj(o.reshape(B, T, -1))
