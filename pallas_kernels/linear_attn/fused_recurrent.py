"""`fused_recurrent_linear_attn`: the token-by-token recurrence, for short sequences and decoding.

One `lax.scan` step per token over the float32 state (S [B, H, K, V] and, with normalize=True, the key
sum z [B, H, K]); T = 1 (a decode step) takes an explicit path with no scan. Gradients come from
differentiating the scan, which keeps one state per token (O(T·K·V) memory per head): train long
sequences with `chunk_linear_attn`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, check_linear_attn_inputs, default_scale
from pallas_kernels.common.segments import segment_starts
from pallas_kernels.linear_attn.naive import EPS, split_state

_f32 = jnp.float32


def _step(S, z, q_t, k_t, v_t, start_t, scale, normalize):
  """One token. S: [B, H, K, V] f32; z: [B, H, K] f32; q_t, k_t: [B, H, K]; v_t: [B, H, V]; start_t: [B]."""
  q_t, k_t, v_t = (x.astype(_f32) for x in (q_t, k_t, v_t))
  keep = jnp.logical_not(start_t)[:, None, None]
  S = jnp.where(keep[..., None], S, 0.0) + k_t[..., :, None] * v_t[..., None, :]
  o_t = scale * jnp.einsum("bhk,bhkv->bhv", q_t, S, precision="highest")
  if normalize:
    z = jnp.where(keep, z, 0.0) + k_t
    o_t = o_t / (scale * jnp.sum(q_t * z, axis=-1, keepdims=True) + EPS)
  return S, z, o_t


def fused_recurrent_linear_attn_xla(q, k, v, *, scale=None, normalize=False, initial_state=None,
                                    output_final_state=False, segment_ids=None, unroll: int = 1):
  """The recurrence as one `lax.scan` (XLA). Contract of `pallas_kernels.linear_attn.chunk_linear_attn`."""
  info = check_linear_attn_inputs(q, k, v, scale=scale, normalize=normalize,
                                  initial_state=initial_state, segment_ids=segment_ids)
  return fused_recurrent_linear_attn_scan(info, q, k, v, scale=scale, normalize=normalize,
                                          initial_state=initial_state,
                                          output_final_state=output_final_state,
                                          segment_ids=segment_ids, unroll=unroll)


def fused_recurrent_linear_attn_scan(info: CallInfo, q, k, v, *, scale=None, normalize=False,
                                     initial_state=None, output_final_state=False,
                                     segment_ids=None, unroll: int = 1):
  """`fused_recurrent_linear_attn_xla` on an already-checked call; the registered "xla" impl."""
  scale = default_scale(scale, info.K)
  S, z = split_state(initial_state, normalize, info.B, info.H, info.K, info.V)
  starts = (jnp.zeros((info.B, info.T), bool) if segment_ids is None else segment_starts(segment_ids))
  if info.T == 1:  # decode step
    S, z, o = _step(S, z, q[:, 0], k[:, 0], v[:, 0], starts[:, 0], scale, normalize)
    o = o[:, None]
  else:
    def body(carry, xs):
      S, z, o_t = _step(*carry, *xs, scale, normalize)
      return (S, z), o_t
    tm = lambda x: jnp.moveaxis(x, 1, 0)
    (S, z), o = jax.lax.scan(body, (S, z), (tm(q), tm(k), tm(v), tm(starts)), unroll=unroll)
    o = jnp.moveaxis(o, 0, 1)
  o = o.astype(v.dtype)
  if not output_final_state:
    return o, None
  return o, ((S, z) if normalize else S)
