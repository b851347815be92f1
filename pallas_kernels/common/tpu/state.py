"""The inter-chunk stages of every gate kind inside a Mosaic TPU kernel: one step of the state pass, of its
gradient, and the output that reads the state (stages 2, 4 and 5 of `gla/chunk.py`), as fla's one
`chunk_fwd_h` serves every decay (docs/ops.md).

The carried state is kept **transposed**, hT = hᵀ [V, K], so that a per-key decay e^Γ [1, K] is a row
vector (broadcast over sublanes, no transpose of a vector) and every product is one of Mosaic's matmul
forms (NN, NT, TN). The gate kind is the shape of the chunk's log-decays, read from any object `gates`
with fields `G`, `R`, `Gamma`:

  | kind                        | G, R (incl. prefix, excl. suffix) | Gamma (whole chunk) |
  |-----------------------------|-----------------------------------|---------------------|
  | per key (GLA)               | [C, K]                            | [1, K]              |
  | per token scalar / constant | [C, 1]                            | [1, 1]              |
  | none                        | None (statically no exp)          | None                |

Every exponent is ≤ 0 (a sum of gates), and masks are applied with `where`, never by a product, so a
gate of −inf gives e^{−inf} = 0 and never 0·(−inf).
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.common.tpu.tiles import TN, NN, NT, ChunkMasks, mxu, where

_f32 = jnp.float32


def decayed_keys(k, gates, masks: ChunkMasks):
  """k ⊙ e^R (= e^{Γ − G}), zero outside the chunk's last document: [C, K] float32."""
  k = k.astype(_f32)
  return where(masks.row_out, k if gates.R is None else k * jnp.exp(gates.R))


def decayed_queries(q_scaled, gates, masks: ChunkMasks):
  """q ⊙ e^G, zero once a new document started in the chunk: [C, K] float32."""
  return where(masks.row_in, q_scaled if gates.G is None else q_scaled * jnp.exp(gates.G))


def state_decay(gates, masks: ChunkMasks):
  """e^Γ ([1, K] or [1, 1]), zero if a document starts inside the chunk; None if the state is kept
  as it is (no decay, no documents)."""
  if gates.Gamma is None:
    return None if masks.carry is None else jnp.where(masks.carry, 1.0, 0.0)
  return where(masks.carry, jnp.exp(gates.Gamma))


def _decay(decay, x):
  return x if decay is None else decay * x


def chunk_state_update(hT, k, v, gates, masks: ChunkMasks, compute_dtype):
  """Stage 2 step: hT [V, K] entering the chunk → hT leaving it, float32: e^Γ ⊙ hT + vᵀ (k ⊙ e^R)."""
  k_dec = decayed_keys(k, gates, masks)
  return _decay(state_decay(gates, masks), hT) + mxu(v, k_dec, TN, compute_dtype)


def chunk_state_grad_update(dhT, q_dec, do, gates, masks: ChunkMasks, compute_dtype):
  """Stage 5 step: dhT [V, K] w.r.t. the state leaving the chunk → w.r.t. the state entering it:
  e^Γ ⊙ dhT + doᵀ (q ⊙ e^G)."""
  return _decay(state_decay(gates, masks), dhT) + mxu(do, q_dec, TN, compute_dtype)


def chunk_output(q_dec, v, hT, A, compute_dtype):
  """Stage 4: o = (q ⊙ e^G) h + A v, [C, V] float32 (q_dec from `decayed_queries`, A [C, C])."""
  return mxu(q_dec, hT, NT, compute_dtype) + mxu(A, v, NN, compute_dtype)
