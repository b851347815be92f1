"""Sliding-window softmax attention (kind "swa"): fla `Attention` with `window_size`, a rolling KV cache.

    o_t = softmax over s in (t − W, t] of q_t k_sᵀ / √d  · v_s        (W = window_size, itself included)

Training / scoring is the parent's windowed attention (`Attention.__call__` without a cache). Decoding
keeps only what a future token can see: a ring buffer of the last W keys (RoPE applied at their absolute
positions) and values,

    cache.k, cache.v  [B, W, Hkv, d]    slot j holds the token at the largest position p < offset with
                                        p ≡ j (mod W); slots with p < 0 are empty (masked out)

so the cache is O(W) whatever the sequence length, never overflows (its `max_len` is None: a model whose
attention layers are all SWA decodes without a limit), and `init_cache(batch, max_len)` ignores max_len.
T new tokens at `offset` attend to the W cached slots and to each other (W + T keys, masked to the
window), then the last W of all tokens are written back — for any T, so a prefill of T > W tokens leaves
exactly its last W keys. The slots' positions come from `offset` (the model's token count), nothing else
is stored.

Example:
    swa = SlidingWindowAttention(64, num_heads=2, window_size=4, rngs=nnx.Rngs(0))
    cache = swa.init_cache(2)                                    # k, v [2, 4, 2, 32]
    y, cache = swa(x[:, :9], cache=cache, offset=0)              # prefill 9 tokens: keeps positions 5…8
    y9, cache = swa.decode_step(x[:, 9], cache, offset=9)        # == swa(x)[0][:, 9]
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gla_jax.layers.mixers.attention import Attention, rotary

_f32 = jnp.float32


@flax.struct.dataclass
class RollingKVCache:
  """Decode-time keys and values of one SWA layer: a ring of the last W tokens (RoPE applied to k)."""

  k: jax.Array  # [B, W, Hkv, d]
  v: jax.Array  # [B, W, Hkv, d]

  @property
  def window(self) -> int:
    """W: the number of slots (static, also under jit)."""
    return self.k.shape[1]

  @property
  def max_len(self) -> None:
    """None: a rolling cache holds any number of tokens (ModelCache.max_len counts it as unbounded)."""
    return None


def slot_positions(offset: jax.Array, window: int) -> jax.Array:
  """[W] int32: the absolute position each ring slot holds after `offset` tokens (negative: empty)."""
  j = jnp.arange(window, dtype=jnp.int32)
  last = offset - 1  # the newest cached token
  return last - jnp.mod(last - j, window)


class SlidingWindowAttention(Attention):
  """Causal RoPE attention over the last `window_size` tokens (the token itself included).

  Same params and arguments as `Attention` (fla `Attention` with `window_size`); `window_size` is
  required. The decode cache is a `RollingKVCache` of window_size slots (see the module doc).
  """

  kind = "swa"

  def __init__(self, hidden_size: int = 2048, *, window_size: int, **kwargs):
    if isinstance(window_size, bool) or not isinstance(window_size, (int, np.integer)) or window_size < 1:
      raise ValueError(f"window_size must be a positive int for sliding-window attention, got {window_size!r}")
    super().__init__(hidden_size, window_size=int(window_size), **kwargs)

  def init_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> RollingKVCache:
    """Empty ring [B, window_size, Hkv, d] in the compute dtype (`dtype` overrides); max_len is ignored."""
    del max_len  # the ring holds the last window_size tokens of a sequence of any length
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    shape = (batch_size, self.window_size, self.num_kv_heads, self.head_dim)
    dt = dtype or self.dtype or _f32
    return RollingKVCache(k=jnp.zeros(shape, dt), v=jnp.zeros(shape, dt))

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               cache: RollingKVCache | None = None, offset: jax.Array | int | None = None,
               return_cache: bool = False) -> tuple[jax.Array, RollingKVCache | None]:
    """x [B, T, D] → (y [B, T, D], the updated ring if `cache` is given or `return_cache`, else None).

    Without a cache and return_cache: the parent's windowed attention (packed documents allowed).
    With `cache` (or return_cache, which starts from an empty ring at offset 0): the T tokens at
    positions offset … offset+T−1 attend to the cached window and to each other. A negative `offset`
    raises ValueError when concrete and gives NaN under jit.
    """
    if cache is None and not return_cache:
      return super().__call__(x, segment_ids=segment_ids)
    B, T, D = x.shape
    if D != self.hidden_size:
      raise ValueError(f"x must have shape [B, T, {self.hidden_size}], got {x.shape}")
    if segment_ids is not None:
      raise ValueError("segment_ids are not supported together with a KV cache")
    if cache is None:
      cache = self.init_cache(B, dtype=x.dtype)
    W = cache.window
    if W != self.window_size:
      raise ValueError(f"the cache has {W} slots but window_size is {self.window_size}")
    offset = 0 if offset is None else offset
    if not isinstance(offset, jax.core.Tracer) and int(offset) < 0:
      raise ValueError(f"offset must be >= 0 (tokens already in the cache), got {int(offset)}")
    offset = jnp.asarray(offset, jnp.int32)

    q = self.q_proj(x).reshape(B, T, self.num_heads, self.head_dim)  # [B, T, H, d]
    k = self.k_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)  # [B, T, Hkv, d]
    v = self.v_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    pos = offset + jnp.arange(T, dtype=jnp.int32)  # [T] absolute positions of the new tokens
    q, k = rotary(q, pos[None], self.rope_theta), rotary(k, pos[None], self.rope_theta)

    # keys: the W cached slots, then the T new tokens
    old = slot_positions(offset, W)  # [W]
    key_pos = jnp.concatenate([old, pos])  # [W + T]
    key_ok = jnp.concatenate([old >= 0, jnp.ones((T,), bool)])
    keys = jnp.concatenate([cache.k.astype(q.dtype), k], axis=1)  # [B, W + T, Hkv, d]
    values = jnp.concatenate([cache.v.astype(q.dtype), v], axis=1)
    t, s = pos[:, None], key_pos[None, :]
    allowed = key_ok[None, :] & (s <= t) & (s > t - W)  # [T, W + T]
    o = jax.nn.dot_product_attention(q, keys, values, mask=allowed[None, None], scale=self.head_dim ** -0.5,
                                     implementation="xla")
    o = jnp.where(offset < 0, jnp.asarray(jnp.nan, o.dtype), o)  # only reachable traced

    # write back: slot j now holds position p' = the largest p < offset + T with p ≡ j (mod W)
    new = slot_positions(offset + T, W)  # [W]
    fresh = new >= offset  # the slot's token is one of the T new ones
    idx = jnp.clip(new - offset, 0, T - 1)
    ck = jnp.where(fresh[None, :, None, None], jnp.take(k, idx, axis=1).astype(cache.k.dtype), cache.k)
    cv = jnp.where(fresh[None, :, None, None], jnp.take(v, idx, axis=1).astype(cache.v.dtype), cache.v)
    return self.o_proj(o.reshape(B, T, D)), RollingKVCache(k=ck, v=cv)
