"""Chunkwise linear attention = simple-GLA without a gate (the numerator and S) + the normaliser (z).

    stage 1  numerator   o_num, S_T = chunk_simple_gla(q, k, v, g=None)   any simple_gla implementation
    stage 2  normaliser  z = segment_cumsum(k, segment_ids, initial=z0)   [B, T, H, K] float32, exact
                         o = o_num / (scale · q_t · z_t + 1e-10)           in float32, then v's dtype

Every implementation of `chunk_linear_attn` is one of simple_gla's run through `on_simple_gla`: same
name, same platforms, its `check` asked about the same call seen as a gate-less simple-GLA call. The
call is checked once (by the linear-attention Op); `simple_gla_info` re-labels that check's result
instead of checking again. Gradients: the numerator's from simple_gla, the normaliser's from the
division and `segment_cumsum`'s VJP (to q, k and z0).

Difference from fla 0.6.0 (docs/ops.md): fla's `chunk_linear_attn(normalize=True)` sums the keys in the
input dtype, ignores any initial key sum and returns z as [B, 1, H, K]; here z is float32, z0 is part of
`initial_state`, and the state is (S [B, H, K, V], z [B, H, K]).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, default_scale
from pallas_kernels.common.cumsum import segment_cumsum
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.linear_attn.naive import EPS

_f32 = jnp.float32


def simple_gla_info(info: CallInfo) -> CallInfo:
  """The checked linear-attention call as simple_gla's CallInfo for the same q, k, v, S0 (no gate)."""
  return dataclasses.replace(info, gate="none", g_dtype=None, normalize=False)


def normalize_output(o, q, z, scale: float):
  """o [B, T, H, V] / (scale · q_t · z_t + 1e-10) in float32; q [B, T, H, K]; z [B, T, H, K] f32."""
  den = scale * jnp.einsum("bthk,bthk->bth", q.astype(_f32), z, precision="highest") + EPS
  return o.astype(_f32) / den[..., None]


def chunk_linear_attn_on(simple_fn, info: CallInfo, q, k, v, *, scale=None, normalize=False,
                         initial_state=None, output_final_state=False, segment_ids=None,
                         chunk_size=None, **kernel_kw):
  """`chunk_linear_attn` on a checked call, with `simple_fn` (a simple_gla implementation's `fn`)
  computing the numerator and S. `kernel_kw` (e.g. `interpret=True`) goes to `simple_fn`."""
  del chunk_size  # already in info
  S0, z0 = initial_state if normalize and initial_state is not None else (initial_state, None)
  o, S = simple_fn(simple_gla_info(info), q, k, v, None, scale=scale, initial_state=S0,
                   output_final_state=output_final_state, segment_ids=segment_ids,
                   chunk_size=info.chunk_size, **kernel_kw)  # stage 1
  if not normalize:
    return o, S
  z = segment_cumsum(k, segment_ids, initial=z0)  # stage 2: [B, T, H, K] f32
  o = normalize_output(o, q, z, default_scale(scale, info.K)).astype(v.dtype)
  return o, ((S, z[:, -1]) if output_final_state else None)


def on_simple_gla(impl: Implementation | None) -> Implementation | None:
  """The linear-attention implementation running simple_gla's `impl` (None stays None: not built)."""
  if impl is None:
    return None

  def fn(info, q, k, v, **kw):
    return chunk_linear_attn_on(impl.fn, info, q, k, v, **kw)

  def check(info):
    return impl.check(simple_gla_info(info))

  auto_check = None
  if impl.auto_check is not None:
    auto_check = lambda info: impl.auto_check(simple_gla_info(info))
  return Implementation(impl.name, fn, platforms=impl.platforms, check=check, auto_check=auto_check)
