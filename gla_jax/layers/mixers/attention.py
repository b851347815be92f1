"""Causal softmax attention with rotary embeddings: the Transformer++ token mixer (fla `Attention`).

    q, k, v = x W_q (+b), x W_k (+b), x W_v (+b)       GQA: num_kv_heads ≤ num_heads
    q, k    = RMSNorm?(q), RMSNorm?(k)                   (qk_norm, per head)
    q, k    = RoPE(q), RoPE(k)                           (GPT-NeoX halves, base rope_theta)
    o       = softmax(q kᵀ / √d + causal mask) v        (jax.nn.dot_product_attention)
    y       = o W_o

Packed documents (`segment_ids`): block-diagonal causal mask, and RoPE positions restart at 0 in every
document (fla's varlen path does the same). Decoding keeps a KV cache [B, S, Hkv, d] per layer; the
cache's write position is the model's `offset` (the same for every row). Writing past the S = max_len
positions never corrupts silently: a concrete offset raises ValueError; a traced one (under jit, where
nothing can be raised) makes the output NaN for every row.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gla_jax.layers.linear import dense
from gla_jax.layers.mixers.base import Mixer, config_dtypes
from gla_jax.layers.norm import RMSNorm
from pallas_kernels import compat
from pallas_kernels.common.segments import doc_index, segment_starts

_f32 = jnp.float32


@flax.struct.dataclass
class KVCache:
  """Decode-time keys and values of one attention layer (RoPE already applied to k)."""

  k: jax.Array  # [B, S, Hkv, d]
  v: jax.Array  # [B, S, Hkv, d]

  @property
  def max_len(self) -> int:
    """S: the number of positions the cache holds (static, also under jit)."""
    return self.k.shape[1]


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """[B, T] int32: the position of each token within its document (0 at every document start)."""
  T = segment_ids.shape[1]
  t = jnp.arange(T, dtype=jnp.int32)[None]
  start = jax.lax.cummax(jnp.where(segment_starts(segment_ids), t, 0), axis=1)
  return t - start


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """RoPE on x [B, T, H, d] at positions [B or 1, T] (GPT-NeoX: rotate the two halves of each head).

  cos/sin are formed in float32 and rounded to x's dtype (fla's cache), the rotation in float32.
  """
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=_f32) / d))  # [d/2]
  freqs = positions.astype(_f32)[..., None] * inv_freq  # [B, T, d/2]
  cos = jnp.cos(freqs).astype(x.dtype).astype(_f32)[:, :, None, :]  # [B, T, 1, d/2]
  sin = jnp.sin(freqs).astype(x.dtype).astype(_f32)[:, :, None, :]
  x32 = x.astype(_f32)
  x1, x2 = x32[..., : d // 2], x32[..., d // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(Mixer):
  """Causal softmax attention with RoPE: x [B, T, D] → [B, T, D]. Arguments and defaults are fla's.

  Params: q_proj [D, H·d] (embed, heads), k_proj/v_proj [D, Hkv·d] (embed, kv), o_proj [H·d, D]
  (heads, embed), d = D / H; optional qkv biases; q_norm/k_norm [d] (norm) with qk_norm.
  `impl`: "auto" (cuDNN flash attention on GPU for bf16/fp16 without packed documents, XLA otherwise),
  "xla" or "cudnn".
  """

  kind = "attention"

  def __init__(self, hidden_size: int = 2048, *, num_heads: int = 32, num_kv_heads: int | None = None,
               qkv_bias: bool = False, qk_norm: bool = False, window_size: int | None = None,
               rope_theta: float = 10000.0, norm_eps: float = 1e-6, init_std: float = 0.02,
               impl: str = "auto", dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
    if hidden_size % num_heads:
      raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if impl not in ("auto", "xla", "cudnn"):
      raise ValueError(f"impl must be 'auto', 'xla' or 'cudnn', got {impl!r}")
    self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
    self.head_dim = hidden_size // num_heads
    if self.head_dim % 2:
      raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE")
    self.window_size, self.rope_theta, self.impl, self.dtype = window_size, rope_theta, impl, dtype
    kv_dim = num_kv_heads * self.head_dim
    kw = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = dense(hidden_size, hidden_size, ("embed", "heads"), use_bias=qkv_bias, **kw)
    self.k_proj = dense(hidden_size, kv_dim, ("embed", "kv"), use_bias=qkv_bias, **kw)
    self.v_proj = dense(hidden_size, kv_dim, ("embed", "kv"), use_bias=qkv_bias, **kw)
    self.o_proj = dense(hidden_size, hidden_size, ("heads", "embed"), **kw)
    if qk_norm:  # fla keeps these norms' weights in float32
      self.q_norm = RMSNorm(self.head_dim, eps=1e-5, param_dtype=_f32, rngs=rngs)
      self.k_norm = RMSNorm(self.head_dim, eps=1e-5, param_dtype=_f32, rngs=rngs)
    else:
      self.q_norm = self.k_norm = None

  @classmethod
  def from_config(cls, config, layer_idx: int, *, rngs: nnx.Rngs) -> "Attention":
    """Layer `layer_idx` of a TransformerConfig, or a hybrid's attention layer (its `attn` spec)."""
    spec = config.attn_spec(layer_idx)
    kw = dict(init_std=config.initializer_range, **config_dtypes(config), rngs=rngs)
    if spec is not None:  # fla's get_attention: the spec's heads/bias/window/theta, defaults otherwise
      impl = getattr(config, "attention_impl", "auto")
      return cls(config.hidden_size, num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads,
                 qkv_bias=spec.qkv_bias, window_size=spec.window_size, rope_theta=spec.rope_theta,
                 impl=impl, **kw)
    c = config
    return cls(c.hidden_size, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, qkv_bias=c.qkv_bias,
               qk_norm=c.qk_norm, window_size=c.window_size, rope_theta=c.rope_theta, impl=c.attn_impl, **kw)

  def init_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> KVCache:
    """Zero KV cache [B, max_len, Hkv, d] in the compute dtype (`dtype` overrides it)."""
    if max_len is None:
      raise ValueError("the attention layer's KV cache needs max_len: init_cache(batch_size, max_len)")
    for name, n in (("batch_size", batch_size), ("max_len", max_len)):
      if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    shape = (batch_size, max_len, self.num_kv_heads, self.head_dim)
    dt = dtype or self.dtype or _f32
    return KVCache(k=jnp.zeros(shape, dt), v=jnp.zeros(shape, dt))

  def _pick_impl(self, dtype, has_mask: bool) -> str:
    if self.impl != "auto":
      return self.impl
    ok = (compat.backend_platform() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
          and not has_mask and self.head_dim % 8 == 0 and self.head_dim <= 128)
    return "cudnn" if ok else "xla"

  def _window(self):
    return None if self.window_size is None else (self.window_size - 1, 0)

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               cache: KVCache | None = None, offset: jax.Array | int | None = None,
               return_cache: bool = False) -> tuple[jax.Array, KVCache | None]:
    """x [B, T, D]; segment_ids [B, T]; cache: KV cache to attend to and write at `offset`.

    Without a cache this is plain causal attention over the T tokens (return_cache is not supported:
    a KV cache needs its length; the model's `prefill` allocates it). With a cache, the T new tokens are
    written at positions offset … offset+T−1 and attend to every cached position ≤ their own.
    Past the cache (offset + T > max_len, or offset < 0): ValueError when `offset` is concrete; under
    jit the output is NaN (all rows), so an overflow can never pass for a plausible result.
    """
    B, T, D = x.shape
    if D != self.hidden_size:
      raise ValueError(f"x must have shape [B, T, {self.hidden_size}], got {x.shape}")
    if return_cache and cache is None:
      raise ValueError("Attention needs a preallocated cache (init_cache(batch_size, max_len)) to return one")
    q = self.q_proj(x).reshape(B, T, self.num_heads, self.head_dim)  # [B, T, H, d]
    k = self.k_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)  # [B, T, Hkv, d]
    v = self.v_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    scale = self.head_dim ** -0.5
    if cache is None:
      positions = (jnp.arange(T, dtype=jnp.int32)[None] if segment_ids is None
                   else segment_positions(segment_ids))
      q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
      mask = None
      if segment_ids is not None:
        doc = doc_index(segment_ids)
        mask = (doc[:, :, None] == doc[:, None, :])[:, None]  # [B, 1, T, T]
      o = jax.nn.dot_product_attention(
          q, k, v, mask=mask, scale=scale, is_causal=True, local_window_size=self._window(),
          implementation=self._pick_impl(q.dtype, mask is not None))
      return self.o_proj(o.reshape(B, T, D)), None

    if segment_ids is not None:
      raise ValueError("segment_ids are not supported together with a KV cache")
    S = cache.max_len
    offset = 0 if offset is None else offset
    if not isinstance(offset, jax.core.Tracer):
      off = int(offset)
      if off < 0 or off + T > S:
        raise ValueError(f"KV cache overflow: {T} new token(s) at position {off} do not fit the cache's "
                         f"max_len={S}; allocate a larger cache (prefill(ids, max_len=...) or "
                         "init_cache(batch_size, max_len))")
    if T > S:
      raise ValueError(f"KV cache overflow: {T} new tokens do not fit the cache's max_len={S}")
    offset = jnp.asarray(offset, jnp.int32)
    positions = offset + jnp.arange(T, dtype=jnp.int32)[None]  # [1, T]
    q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
    ck = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, offset, 0, 0))
    cv = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, offset, 0, 0))
    s = jnp.arange(S, dtype=jnp.int32)[None, :]  # [1, S]
    t = positions[0][:, None]  # [T, 1]
    allowed = s <= t
    if self.window_size is not None:
      allowed &= s > t - self.window_size
    o = jax.nn.dot_product_attention(q, ck.astype(q.dtype), cv.astype(q.dtype),
                                     mask=allowed[None, None], scale=scale, implementation="xla")
    overflow = (offset < 0) | (offset + T > S)  # only reachable traced: poison instead of clamping
    o = jnp.where(overflow, jnp.asarray(jnp.nan, o.dtype), o)
    return self.o_proj(o.reshape(B, T, D)), KVCache(k=ck, v=cv)
