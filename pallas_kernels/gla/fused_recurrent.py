"""`fused_recurrent_gla`: the token-by-token recurrence, for short sequences and decoding.

One `lax.scan` step per token over a float32 [B, H, K, V] state; T = 1 (a decode step) takes an explicit
path with no scan. `_step` is also the spec (and the backward) of the fused decode kernels that serve
T = 1 calls on GPUs (`impl="auto"` there: pallas_kernels/gla/triton/decode.py, one pass over the state).
Gradients come from differentiating the scan, which keeps one state per token (O(T·K·V) memory per head):
use `chunk_gla` for training on long sequences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import check_gla_inputs, default_scale
from pallas_kernels.common.segments import segment_starts

_f32 = jnp.float32


def _step(h, q_t, k_t, v_t, g_t, start_t, scale):
  """One token. h: [B, H, K, V] f32; q_t, k_t, g_t: [B, H, K]; v_t: [B, H, V]; start_t: [B] bool."""
  decay = jnp.where(start_t[:, None, None], 0.0, jnp.exp(g_t.astype(_f32)))
  h = decay[..., None] * h + (k_t.astype(_f32)[..., :, None] * v_t.astype(_f32)[..., None, :])
  o_t = scale * jnp.einsum("bhk,bhkv->bhv", q_t.astype(_f32), h, precision="highest")
  return h, o_t


def fused_recurrent_gla_xla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                            segment_ids=None, unroll: int = 1):
  """The recurrence as one `lax.scan` (XLA). Contract of `pallas_kernels.gla.chunk_gla`."""
  info = check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state, segment_ids=segment_ids)
  return fused_recurrent_gla_scan(info, q, k, v, g, scale=scale, initial_state=initial_state,
                                  output_final_state=output_final_state, segment_ids=segment_ids,
                                  unroll=unroll)


def fused_recurrent_gla_scan(info, q, k, v, g, *, scale=None, initial_state=None,
                             output_final_state=False, segment_ids=None, unroll: int = 1):
  """`fused_recurrent_gla_xla` on an already-checked call; the registered "xla" impl."""
  scale = default_scale(scale, info.K)
  h = (jnp.zeros((info.B, info.H, info.K, info.V), _f32) if initial_state is None
       else initial_state.astype(_f32))
  starts = (jnp.zeros((info.B, info.T), bool) if segment_ids is None else segment_starts(segment_ids))
  if info.T == 1:  # decode step
    h, o = _step(h, q[:, 0], k[:, 0], v[:, 0], g[:, 0], starts[:, 0], scale)
    o = o[:, None]
  else:
    body = lambda h, xs: _step(h, *xs, scale)
    tm = lambda x: jnp.moveaxis(x, 1, 0)
    h, o = jax.lax.scan(body, h, (tm(q), tm(k), tm(v), tm(g), tm(starts)), unroll=unroll)
    o = jnp.moveaxis(o, 0, 1)
  return o.astype(v.dtype), (h if output_final_state else None)
