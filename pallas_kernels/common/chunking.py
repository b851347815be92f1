"""Chunked layout and document masks shared by the jnp chunk forms of every op (gla, simple_gla, …).

Inside the chunk forms a [B, T, H, D] tensor is [B, H, N, C, D]: N = ceil(T / C) chunks of C tokens,
T zero-padded (zeros are inert: k = v = 0 adds nothing to a state and g = 0 does not decay it). Packed
documents become four masks per chunk (`DocMasks`), the same for every gate kind.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pallas_kernels.common.segments import doc_index


def pad_axis(x, axis: int, size: int, mode: str = "constant"):
  """x zero-padded (or edge-padded) along `axis` to `size`."""
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, mode=mode)


def _two_float_add(a, b):
  """(hi, lo) + (hi, lo) of float32 pairs whose sum hi + lo carries ~2× float32's digits (Knuth's two-sum
  of the leading parts, the trailing parts added to its error, then renormalised)."""
  (a_hi, a_lo), (b_hi, b_lo) = a, b
  s = a_hi + b_hi
  b_virtual = s - a_hi
  err = (a_hi - (s - b_virtual)) + (b_hi - b_virtual)
  lo = err + a_lo + b_lo
  hi = s + lo
  return hi, lo - (hi - s)


def compensated_cumsum(x, axis: int):
  """The inclusive cumsum of float32 `x` along `axis` as two float32 arrays (hi, lo), hi + lo exact to
  ~1e-14 relative: hi alone (the float32 cumsum's precision) has absolute error ~ulp(hi), so a
  difference hi_t − hi_s of two large prefix sums loses digits that lo keeps — (hi_t − hi_s) +
  (lo_t − lo_s) is the sum Σ_{s<r≤t} x_r to float32 precision of itself, at any |hi|."""
  x = x.astype(jnp.float32)
  return jax.lax.associative_scan(_two_float_add, (x, jnp.zeros_like(x)), axis=axis)


def to_chunks(x, C: int):
  """[B, T, H, D] → [B, H, N, C, D], zero-padding T up to a multiple of C."""
  B, T, H, D = x.shape
  N = -(-T // C)
  x = jnp.pad(x, ((0, 0), (0, N * C - T), (0, 0), (0, 0)))
  return jnp.transpose(x.reshape(B, N, C, H, D), (0, 3, 1, 2, 4))


def from_chunks(x, T: int):
  """[B, H, N, C, D] → [B, T, H, D]."""
  B, H, N, C, D = x.shape
  return jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(B, N * C, H, D)[:, :T]


def chunked_doc_index(segment_ids, C: int):
  """segment_ids [B, T] → doc index [B, N, C]; padding continues the last document."""
  if segment_ids is None:
    return None
  doc = doc_index(segment_ids)
  B, T = doc.shape
  N = -(-T // C)
  return jnp.pad(doc, ((0, 0), (0, N * C - T)), mode="edge").reshape(B, N, C)


@dataclasses.dataclass(frozen=True)
class DocMasks:
  """Per-chunk masks from the document index (all None when there are no segment_ids)."""

  row_in: jax.Array | None = None  # [B, 1, N, C, 1]  row t still in the chunk's first document
  row_out: jax.Array | None = None  # [B, 1, N, C, 1]  row s in the chunk's last document
  carry: jax.Array | None = None  # [B, 1, N, 1, 1]  no document starts inside the chunk
  same_doc: jax.Array | None = None  # [B, 1, N, C, C]  rows t, s in one document


def doc_masks(doc: jax.Array | None) -> DocMasks:
  """doc: [B, N, C] monotone document index, or None."""
  if doc is None:
    return DocMasks()
  # the document of the token before each chunk (0 before the first one: initial_state's document)
  prev = jnp.concatenate([jnp.zeros_like(doc[:, :1, -1]), doc[:, :-1, -1]], axis=1)  # [B, N]
  last = doc[:, :, -1]
  e = lambda m: m[:, None]  # broadcast over H
  return DocMasks(
      row_in=e(doc == prev[..., None])[..., None],
      row_out=e(doc == last[..., None])[..., None],
      carry=e(last == prev)[..., None, None],
      same_doc=e(doc[..., :, None] == doc[..., None, :]),
  )
