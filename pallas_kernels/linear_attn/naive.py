"""The specification of linear attention (docs/ops.md): a float32 `lax.scan` that carries (S, z).

    S_t = S_{t-1} + k_tᵀ v_t              z_t = z_{t-1} + k_t           (no decay; both restart at
    o_t = scale · q_t · S_t                                               every document start)
    normalize=True:  o_t = scale · q_t · S_t / (scale · q_t · z_t + 1e-10)

`initial_state` is S_{-1} (or, with normalize=True, the pair (S_{-1}, z_{-1})) of each row's first
document. This file is the definition the chunk forms are tested against; it shares no code with
simple_gla and has no performance code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import check_linear_attn_inputs, default_scale
from pallas_kernels.common.segments import segment_starts

_f32 = jnp.float32
EPS = 1e-10  # fla's normaliser epsilon (fla.ops.linear_attn.utils.normalize_output)


def split_state(initial_state, normalize: bool, B: int, H: int, K: int, V: int):
  """(S0 [B, H, K, V] f32, z0 [B, H, K] f32) from the op's initial_state (zeros where absent)."""
  S0, z0 = (initial_state if normalize and initial_state is not None else (initial_state, None))
  S0 = jnp.zeros((B, H, K, V), _f32) if S0 is None else S0.astype(_f32)
  z0 = jnp.zeros((B, H, K), _f32) if z0 is None else z0.astype(_f32)
  return S0, z0


def naive_recurrent_linear_attn(q, k, v, *, scale=None, normalize=False, initial_state=None,
                                output_final_state=False, segment_ids=None):
  """The specification: one `lax.scan` over time in float32, normalising token by token.

  Args:
    q, k: [B, T, H, K] (feature maps already applied; positive for the normaliser).
    v: [B, T, H, V].
    scale: multiplies q; defaults to K ** -0.5.
    normalize: divide by scale · q_t · z_t + 1e-10, z_t the running key sum of the document.
    initial_state: S0 [B, H, K, V], or with normalize=True the pair (S0, z0 [B, H, K]).
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id.

  Returns:
    (o [B, T, H, V] float32, final state: S [B, H, K, V] float32, or (S, z [B, H, K]) float32 with
    normalize=True; None unless requested).

  Example:
    >>> q = k = jnp.ones((1, 8, 2, 16)); v = jnp.ones((1, 8, 2, 32))
    >>> o, (S, z) = naive_recurrent_linear_attn(q, k, v, normalize=True, output_final_state=True)
  """
  info = check_linear_attn_inputs(q, k, v, scale=scale, normalize=normalize,
                                  initial_state=initial_state, segment_ids=segment_ids)
  B, T, H, K, V = info.B, info.T, info.H, info.K, info.V
  scale = default_scale(scale, K)
  S0, z0 = split_state(initial_state, normalize, B, H, K, V)
  starts = jnp.zeros((B, T), bool) if segment_ids is None else segment_starts(segment_ids)

  def step(carry, xs):  # S: [B, H, K, V]; z: [B, H, K]
    S, z = carry
    q_t, k_t, v_t, start_t = xs
    keep = jnp.logical_not(start_t)[:, None, None]  # [B, 1, 1]
    S = jnp.where(keep[..., None], S, 0.0) + k_t[..., :, None] * v_t[..., None, :]
    z = jnp.where(keep, z, 0.0) + k_t
    o_t = scale * jnp.einsum("bhk,bhkv->bhv", q_t, S, precision="highest")
    if normalize:
      o_t = o_t / (scale * jnp.sum(q_t * z, axis=-1, keepdims=True) + EPS)
    return (S, z), o_t

  tm = lambda x: jnp.moveaxis(x.astype(_f32), 1, 0)
  (S, z), o = jax.lax.scan(step, (S0, z0), (tm(q), tm(k), tm(v), jnp.moveaxis(starts, 1, 0)))
  o = jnp.moveaxis(o, 0, 1)
  if not output_final_state:
    return o, None
  return o, ((S, z) if normalize else S)
