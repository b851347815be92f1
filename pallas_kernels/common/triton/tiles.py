"""Op-agnostic building blocks of the Pallas Triton kernels (GLA, simple GLA, ...).

Everything here either runs *inside* a kernel body on tiles loaded from refs (matmul flavours, loads,
document masks of a chunk, causal masks) or builds the BlockSpecs every op uses for its public
[B, T, H, D] arrays. Triton tensors cannot be sliced or concatenated in registers, so a part of a
chunk is a separate load from the refs, never a slice of a loaded chunk.

The kernels see only a few fields of an op's static options (duck-typed): `dot_dtype`, `dtype`,
`interpret` (for `mm`), and for the shared state passes (state.py, scan.py) the fields listed there.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax


from pallas_kernels import compat

pl = compat.pl

C = 64  # chunk: rows per state step in every kernel
F32 = jnp.float32
SCAN_MIN_CHUNKS = 64  # state passes as a two-phase scan from this many chunks on (scan.py)


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, math.ceil(math.log2(n)))


def padded_dim(d: int) -> int:
  """K or V as the kernels see it: a power of two up to 64, a multiple of 64 above."""
  return max(16, _pow2_at_least(d)) if d <= 64 else -(-d // 64) * 64


def fit_tile(d: int, cap: int) -> int:
  """The widest power-of-two tile ≤ cap that divides the padded dim d. The kernels loop or grid over
  d // tile tiles, so a tile that does not divide d (128 for d = 192, 320, 448) would skip columns."""
  t = 1 << (max(1, min(d, cap)).bit_length() - 1)
  while d % t:
    t //= 2
  return t


# ------------------------------------------------------------------------------------------------
# BlockSpecs of the public [B, T, H, D] layout (the kernels read the arrays in place)
# ------------------------------------------------------------------------------------------------


def seq_block(T: int, D: int, H: int, tile_of):
  """BlockSpec of the whole sequence of one (b, h) with a D tile chosen by `tile_of(grid ids)`;
  the grid's last axis is b·H + h."""
  return pl.BlockSpec((None, T, None, D),
                      lambda *ids: (ids[-1] // H, 0, ids[-1] % H, tile_of(*ids)))


def doc_block(T: int, H: int):
  """BlockSpec of one row of the [B, T] document index; the grid's last axis is b·H + h."""
  return pl.BlockSpec((None, T), lambda *ids: (ids[-1] // H, 0))


def state_tiles(opts, bk: int, bv: int):
  """grid axis 0 = kt · (V / bv) + vt."""
  nv = opts.V // bv
  return (lambda i, bh: i // nv), (lambda i, bh: i % nv)


# ------------------------------------------------------------------------------------------------
# matmuls
# ------------------------------------------------------------------------------------------------


def _dot_general(a, b, ta: bool, tb: bool, precision):
  dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=F32)


def mm(a, b, opts, ta: bool = False, tb: bool = False, dtype=None):
  """aᵀ?·bᵀ? on the tensor cores: operands in `dtype` (default `opts.dot_dtype`), float32 accumulation.
  float32 operands of bf16/fp16 calls multiply as TF32 on the GPU (10-bit mantissas, 8× finer than bf16)."""
  dt = jnp.dtype(dtype or opts.dot_dtype)
  a, b = a.astype(dt), b.astype(dt)
  if opts.interpret and dt != F32:
    # XLA:CPU lacks some bf16×bf16→f32 dots; products of bf16 numbers are exact in f32
    a, b = a.astype(F32), b.astype(F32)
  exact = a.dtype == F32 and (opts.interpret or opts.dtype == "float32")
  return _dot_general(a, b, ta, tb, lax.Precision.HIGHEST if exact else lax.Precision.DEFAULT)


def mm_sum(mask, x, opts, tm: bool = False):
  """mask @ x for a 0/1 `mask` (a masked prefix/suffix sum) at ~float32 accuracy on the tensor cores:
  the mask is exact in bf16, x is split into two bf16 halves (≈16 significant bits)."""
  mask = mask.astype(F32)
  if opts.interpret or opts.dtype == "float32":
    return _dot_general(mask, x, tm, False, lax.Precision.HIGHEST)
  bf = jnp.bfloat16
  hi = x.astype(bf)
  lo = (x - hi.astype(F32)).astype(bf)
  m = mask.astype(bf)
  return (_dot_general(m, hi, tm, False, lax.Precision.DEFAULT)
          + _dot_general(m, lo, tm, False, lax.Precision.DEFAULT))


# ------------------------------------------------------------------------------------------------
# loads, masks
# ------------------------------------------------------------------------------------------------


def load(ref, r0, nr: int, c0, nc: int, dtype=F32):
  """ref[r0:r0+nr, c0:c0+nc] as `dtype` (rows and columns may be traced offsets)."""
  return ref[pl.ds(r0, nr), pl.ds(c0, nc)].astype(dtype)


def rows(mask, x):
  """x with the rows where `mask` ([R, 1] bool or None) is False zeroed."""
  return x if mask is None else jnp.where(mask, x, 0.0)


def iota2(shape, dim):
  return lax.broadcasted_iota(jnp.int32, shape, dim)


def causal(S: int, strict: bool = False):
  """[S, S] bool, t ≥ s (t > s if strict)."""
  t, s = iota2((S, S), 0), iota2((S, S), 1)
  return t > s if strict else t >= s


def last_row(x):
  """x[-1] as [1, W] (Triton cannot slice registers: a masked column sum, exact)."""
  R, W = x.shape
  return jnp.sum(jnp.where(iota2((R, W), 0) == R - 1, x, 0.0), axis=0, keepdims=True)


@dataclasses.dataclass(frozen=True)
class ChunkDocs:
  """Document masks of one chunk at sub-chunk granularity (chunking.py's `DocMasks` for one chunk)."""

  d: tuple  # per sub-chunk [S] int32 document index
  prev: jax.Array  # document of the token before the chunk (0 before the first: initial_state's)
  last: jax.Array  # document of the chunk's last token

  def row_in(self, i):  # row t still in the chunk's first document: reads the carried state
    return (self.d[i] == self.prev)[:, None]

  def row_out(self, i):  # row s in the chunk's last document: feeds the outgoing state
    return (self.d[i] == self.last)[:, None]

  @property
  def carry(self):  # no document starts inside the chunk: the state decays into the next one
    return self.last == self.prev

  def same(self, i, j):  # [S, S] rows of sub-chunks i, j in one document
    return self.d[i][:, None] == self.d[j][None, :]


def chunk_docs(doc_ref, t0, S: int, has_seg: bool, R: int = C) -> ChunkDocs | None:
  """Masks of the R-row block starting at row t0 (a chunk, or a 16-row step of the two-level forward),
  split into sub-chunks of S rows. doc_ref: [T] document index of every row of the sequence."""
  if not has_seg:
    return None
  d = tuple(doc_ref[pl.ds(t0 + i * S, S)] for i in range(R // S))
  prev = jnp.where(t0 > 0, doc_ref[jnp.maximum(t0 - 1, 0)], 0)
  return ChunkDocs(d=d, prev=prev, last=doc_ref[t0 + R - 1])


def row_in(docs, i):
  return None if docs is None else docs.row_in(i)


def row_out(docs, i):
  return None if docs is None else docs.row_out(i)


def carry_mask(docs, x):
  return x if docs is None else jnp.where(docs.carry, x, 0.0)


def block_mask(docs, i, j, S: int, strict: bool = False):
  """Which entries of the (i, j) block of A (or dA) are live: causal on the diagonal, same document."""
  m = causal(S, strict) if i == j else None
  if docs is not None:
    same = docs.same(i, j)
    m = same if m is None else (m & same)
  return m


def masked(m, x):
  return x if m is None else jnp.where(m, x, 0.0)
