"""The kernel layout of the Mosaic TPU kernels, shared by every op: token tensors as [B, Tp, H·Dp] (a free
reshape of [B, T, H, D] when nothing is padded), channels padded to multiples of 128 lanes, T to a multiple
of the chunk; packed documents as a chunk-relative document index, as a column and as rows."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels.common.chunking import chunked_doc_index


@dataclasses.dataclass(frozen=True)
class Dims:
  """Static sizes of one call's (B, H / hb, N) grid: padded K, V and the heads per block."""

  B: int
  H: int
  N: int
  C: int
  Kp: int
  Vp: int
  hb: int  # heads per block

LANES = 128
_f32 = jnp.float32


def pad_to(n: int, m: int) -> int:
  return -(-n // m) * m


def to_kernel_layout(x, Tp: int, Dp: int):
  """[B, T, H, D] → [B, Tp, H·Dp], zero-padded (a free reshape when T = Tp and D = Dp)."""
  B, T, H, D = x.shape
  if (T, D) != (Tp, Dp):
    x = jnp.pad(x, ((0, 0), (0, Tp - T), (0, 0), (0, Dp - D)))
  return x.reshape(B, Tp, H * Dp)


def doc_layout(segment_ids, C: int):
  """The chunk-relative document index (0 ⇔ the document the chunk started in), float32, as a column
  [B, Tp, 1] and as rows [B, N, 1, C]."""
  doc = chunked_doc_index(segment_ids, C)  # [B, N, C]
  prev = jnp.concatenate([jnp.zeros_like(doc[:, :1, -1]), doc[:, :-1, -1]], axis=1)  # [B, N]
  rel = (doc - prev[..., None]).astype(_f32)
  B, N, _ = rel.shape
  return rel.reshape(B, N * C, 1), rel.reshape(B, N, 1, C)


def unpack_refs(refs, names):
  """Names a kernel's refs: `names` is [(name, present)], absent (optional) inputs are None."""
  it = iter(refs)
  return {n: (next(it) if present else None) for n, present in names}
