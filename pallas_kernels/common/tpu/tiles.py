"""Op-agnostic helpers for the inside of a Mosaic TPU kernel: one chunk of one head, as *values* loaded from
VMEM (2-D, tokens on sublanes, channels padded to multiples of 128 on lanes).

* matmul forms Mosaic's `tpu.matmul` takes (NN, NT = "A·Bᵀ", TN = "Aᵀ·B") and `mxu` (float32
  accumulation, fp32 contract precision for float32 operands);
* `shift_rows` / `scan_rows`: row shifts and log-step prefix / suffix sums on the VPU (Mosaic has no
  cumsum);
* `ChunkMasks` / `chunk_masks`: the packed-document masks of one chunk, the same for every gate kind;
* `where(mask, x)`: x where the mask holds (no mask: x), 0 elsewhere — never a multiply by a 0/1 mask, so a
  masked −inf stays out of the result.

Used by the GLA and simple-GLA kernels (`pallas_kernels/{gla,simple_gla}/tpu/`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_f32 = jnp.float32
NEG = -1e30  # exp(NEG) == 0: masks an exponent without ever forming inf

NN = (((1,), (0,)), ((), ()))  # A · B
NT = (((1,), (1,)), ((), ()))  # A · Bᵀ
TN = (((0,), (0,)), ((), ()))  # Aᵀ · B


def iota(shape, dim):
  return jax.lax.broadcasted_iota(jnp.int32, shape, dim)


def mxu(a, b, dims, compute_dtype):
  """A matmul on the MXU: operands in the compute dtype, float32 accumulation (fp32 contract precision
  when the compute dtype is float32)."""
  cdt = jnp.dtype(compute_dtype)
  precision = jax.lax.Precision.HIGHEST if cdt == _f32 else None
  return jax.lax.dot_general(a.astype(cdt), b.astype(cdt), dims, precision=precision,
                             preferred_element_type=_f32)


def shift_rows(x, k: int):
  """x[t − k] along axis 0 (rows move down by k; k < 0 moves them up), zeros shifted in."""
  if k == 0:
    return x
  zeros = jnp.zeros((abs(k),) + x.shape[1:], x.dtype)
  if k > 0:
    return jnp.concatenate([zeros, x[:x.shape[0] - k]], axis=0)
  return jnp.concatenate([x[-k:], zeros], axis=0)


def scan_rows(x, *, reverse: bool = False, segment: int | None = None, doc=None):
  """Inclusive prefix sums along axis 0 (suffix sums if `reverse`), float32, in log2(C) steps.

  Mosaic has no cumsum, and a 0/1-mask matmul would put a chain of MXU passes (hundreds of cycles) on
  the critical path of every chunk; these Hillis–Steele steps are a few VPU ops each. Every partial sum is
  a sum of consecutive rows (gates of one sign stay a sum of one sign: no cancellation).
  `segment` (a power of two): restart every `segment` rows. `doc` [C, 1]: restart where it changes
  (it must be monotone, so that documents are contiguous).
  """
  C = x.shape[0]
  rows = iota((C, 1), 0)
  step = 1
  while step < (segment or C):
    k = -step if reverse else step
    add = shift_rows(x, k)
    valid = None
    if segment is not None:
      pos = rows & (segment - 1)
      valid = pos < segment - step if reverse else pos >= step
    if doc is not None:
      same = shift_rows(doc, k) == doc
      valid = same if valid is None else valid & same
    x = x + (add if valid is None else jnp.where(valid, add, 0.0))
    step *= 2
  return x


def where(mask, x):
  """x where `mask` holds, 0 elsewhere; x itself when there is no mask (None)."""
  return x if mask is None else jnp.where(mask, x, 0.0)


def both(a, b):
  """The conjunction of two optional masks (None = everywhere)."""
  if a is None:
    return b
  return a if b is None else a & b


# ------------------------------------------------------------------------------------------------
# document masks of one chunk
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChunkMasks:
  """Packed-document masks of one chunk (all None without segment_ids); see chunking.DocMasks."""

  row_in: jax.Array | None = None  # [C, 1] row t still in the chunk's first document
  row_out: jax.Array | None = None  # [C, 1] row s in the chunk's last document
  carry: jax.Array | None = None  # [1, 1] no document starts inside the chunk
  same_doc: jax.Array | None = None  # [C, C] rows t, s in one document


def chunk_masks(doc_col, doc_row) -> ChunkMasks:
  """doc_col [C, 1], doc_row [1, C]: the chunk's document index minus the document of the token before
  the chunk (float32, so 0 ⇔ still in the first document; monotone)."""
  if doc_col is None:
    return ChunkMasks()
  last = jnp.max(doc_row, axis=1, keepdims=True)  # [1, 1]
  return ChunkMasks(row_in=doc_col == 0.0, row_out=doc_col == last, carry=last == 0.0,
                    same_doc=doc_col == doc_row)
