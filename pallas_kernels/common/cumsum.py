"""Running sums over time that restart with every document: the normaliser of linear attention.

    z_t = z0 + Σ_{s ≤ t} x_s        over the s in t's document (z0 only in the row's first document)

`chunk_linear_attn(normalize=True)` divides its output by `scale · q_t · z_t + 1e-10` with z the running
key sum (docs/ops.md). With packed documents the sum must restart exactly at each change of
`segment_ids`: subtracting a global cumsum at the document start would cost float32 digits in every
short document that follows a long one, so the restart is a segmented scan instead,

    (f_l, x_l) ∘ (f_r, x_r) = (f_l ∨ f_r,  x_r if f_r else x_l + x_r)       (f: "a document starts here")

as one `lax.associative_scan` (O(T log T) adds, no T×T tensor). Its gradient is the same segmented scan
run backwards over the cotangent (a reverse cumsum within each document), given as a custom VJP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.segments import segment_starts

_f32 = jnp.float32


def segment_cumsum(x, segment_ids=None, *, initial=None):
  """Inclusive float32 cumsum over time (axis 1) that restarts at every change of segment id.

  Args:
    x: [B, T, *F] (any float dtype), e.g. keys [B, T, H, K].
    segment_ids: [B, T] int or None; a change of id starts a new document (ids may repeat later).
    initial: [B, *F] or None: the sum before t = 0, counted in each row's first document only.

  Returns:
    [B, T, *F] float32, z_t = initial + Σ_{s ≤ t, s in t's document} x_s; differentiable w.r.t. x
    and initial (in their dtypes).

  Example:
    >>> x = jnp.ones((1, 5, 1)); seg = jnp.array([[0, 0, 1, 1, 0]])
    >>> segment_cumsum(x, seg, initial=jnp.full((1, 1), 10.0))[0, :, 0]
    Array([11., 12.,  1.,  2.,  1.], dtype=float32)
  """
  if x.ndim < 2:
    raise ValueError(f"x must have shape [B, T, ...] (rank >= 2), got shape {x.shape}")
  B, T = x.shape[:2]
  x = x.astype(_f32)
  if initial is not None:
    if tuple(initial.shape) != (B, *x.shape[2:]):
      raise ValueError(f"initial must have shape [B, *F] = {(B, *x.shape[2:])}, got {initial.shape}")
    x = x.at[:, 0].add(initial.astype(_f32))  # t = 0 is always in the first document
  if segment_ids is None:
    return jnp.cumsum(x, axis=1)
  if tuple(segment_ids.shape) != (B, T):
    raise ValueError(f"segment_ids must have shape [B, T] = {(B, T)}, got {segment_ids.shape}")
  return _segmented_cumsum(x, segment_starts(segment_ids))


def _scan(x, starts):
  """Forward segmented inclusive cumsum. x: [B, T, *F] f32; starts: [B, T] bool."""
  f = starts.reshape(starts.shape + (1,) * (x.ndim - 2))

  def combine(left, right):
    f_l, x_l = left
    f_r, x_r = right
    return f_l | f_r, jnp.where(f_r, x_r, x_l + x_r)

  return jax.lax.associative_scan(combine, (f, x), axis=1)[1]


@jax.custom_vjp
def _segmented_cumsum(x, starts):
  return _scan(x, starts)


def _fwd(x, starts):
  return _scan(x, starts), starts


def _bwd(starts, dz):
  # dx_s = Σ_{t ≥ s, same document} dz_t: the forward scan on the time-reversed cotangent, whose
  # documents start where the forward ones end (at t with a start at t + 1)
  ends = jnp.pad(starts[:, 1:], ((0, 0), (0, 1)))
  dx = jnp.flip(_scan(jnp.flip(dz, 1), jnp.flip(ends, 1)), 1)
  return dx, None


_segmented_cumsum.defvjp(_fwd, _bwd)
