"""The chunk stages of `chunk.py`, rewritten for the inside of a Mosaic TPU kernel: one chunk of one head.

Every function here works on *values* already loaded from VMEM (2-D, or 3-D with a leading sub-chunk axis),
with shapes a TPU tiles well: tokens on sublanes, K / V padded to multiples of 128 on lanes. The carried
state is kept **transposed**, hT = hᵀ [V, K], so that the per-channel decay e^Γ [1, K] is a row vector
(broadcast over sublanes, no transpose of a vector) and every product is one of the three forms Mosaic's
`tpu.matmul` takes (NN, NT = "A·Bᵀ", TN = "Aᵀ·B").

Stage names follow `chunk.py` (docs/ops.md). Stages 2, 4 and 5 and the tile helpers (iota, mxu, row
shifts and scans, document masks) are op-agnostic and live in `pallas_kernels/common/tpu/`, shared with
the simple-GLA kernels; they are re-exported here:

  1 `chunk_local_cumsum`     prefix / suffix / sub-chunk sums of g (log-step scans on the VPU)
  2 `chunk_state_update`     one step of `chunk_state_pass`: hT' = e^Γ ⊙ hT + vᵀ (k ⊙ e^R)
  3 `chunk_intra_attention`  A: the causal C×C decay-weighted q·kᵀ (two-level: exact diagonal sub-blocks)
  4 `chunk_output`           o = (q ⊙ e^G) h + A v
  5 `chunk_state_grad_update` one step of `chunk_state_grad_pass`: dhT' = e^Γ ⊙ dhT + doᵀ (q ⊙ e^G)
  6 `chunk_grads`            dq, dk, dv, and the gate's local term dG (s = t terms kept out)
  7 `chunk_gate_grad`        dg = reverse cumsum of dG (restarting at document starts)
                                  + exclusive forward cumsum of k ⊙ dk_inter + e^Γ Σ_v h ⊙ dh

Numerics (why dg survives g ≈ −20): every exponent is ≤ 0; G, R, the sub-chunk prefix Gl and the
diagonal-block exponents are *direct* sums of gates (never a difference of two chunk-level cumsums); the
only difference taken is the off-diagonal key factor R_s − R_m (both direct suffix sums), whose error
ε·|R_s| only touches pairs that are ≥ 2 tokens apart across a sub-chunk edge. The three cancellation-free
choices of `chunk_grads` / `chunk_gate_grad` are kept as they are there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pallas_kernels.common.tpu.state import (chunk_output, chunk_state_grad_update,  # noqa: F401
                                             chunk_state_update, decayed_keys, decayed_queries,
                                             state_decay)
from pallas_kernels.common.tpu.tiles import (NEG, NN, NT, TN, ChunkMasks, chunk_masks,  # noqa: F401
                                             iota, mxu, scan_rows, shift_rows, where)

_f32 = jnp.float32


def _pow2_shift(n: int) -> int:
  if n & (n - 1):
    raise ValueError(f"sub_chunk must be a power of two, got {n}")
  return n.bit_length() - 1


# ------------------------------------------------------------------------------------------------
# stage 1
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Gates:
  """Stage 1's log-space sums of one chunk, float32 [C, K] unless noted."""

  g: jax.Array  # the gates
  G: jax.Array  # Σ_{r ≤ t} g_r            (inclusive prefix over the chunk)
  R: jax.Array  # Σ_{r > t} g_r            (exclusive suffix over the chunk)
  Gl: jax.Array  # Σ_{n_i ≤ r ≤ t} g_r     (inclusive prefix inside t's sub-chunk i, which starts at n_i)
  Gamma: jax.Array  # [1, K] Σ_r g_r


def chunk_local_cumsum(g, sub_chunk: int) -> Gates:
  """Stage 1: g [C, K] (any float dtype) → the chunk's direct gate sums (log-step scans on the VPU)."""
  g = g.astype(_f32)
  _pow2_shift(sub_chunk)
  return Gates(g=g, G=scan_rows(g), R=scan_rows(shift_rows(g, -1), reverse=True),
               Gl=scan_rows(g, segment=sub_chunk), Gamma=jnp.sum(g, axis=0, keepdims=True))


# ------------------------------------------------------------------------------------------------
# stage 3: the intra-chunk block (stage 4, the output, is common.tpu.state.chunk_output)
# ------------------------------------------------------------------------------------------------


def _diag_pass(q, k, g, sub_chunk: int, dA=None):
  """The diagonal S×S sub-blocks, exactly in log space: A_ts = Σ_d q_td k_sd e^{Σ_{s<r≤t} g_rd}.

  All sub-chunks at once ([ns, S, ·] views), one key offset s at a time, walking s downwards so that
  the exponent E = Σ_{s<r≤t} g_r is accumulated directly (a sum of gates, never a difference).
  Returns A's block diagonal [C, C]; with dA [C, C] also the strictly-causal (s < t) diagonal-block
  parts of dq = Σ_s dA_ts k_s e^E and dk = Σ_t dA_ts q_t e^E, [C, K] each (the s = t terms are left to
  the caller, see `chunk_grads`).

  Everything here is float32 on the VPU (the sums over d are cross-lane reductions on the XLU), whatever
  the input dtype. Sending those sums to the MXU in bf16 was tried: −2% static cycles, not worth a second
  numerical path (benchmarks/TPU.md).
  """
  C, K = q.shape
  S = sub_chunk
  ns = C // S
  q3, k3, g3 = (x.reshape(ns, S, K) for x in (q, k, g))
  tK = iota((ns, S, K), 1)
  tC = iota((ns, S, C), 1)
  col = iota((ns, S, C), 2) - iota((ns, S, C), 0) * S  # column relative to the sub-chunk start
  # the key offset each causal (t ≥ s) / strictly causal (t > s) diagonal-block entry belongs to, −1
  # elsewhere: one compare per s finds the entries of column s
  causal_col = jnp.where(tC >= col, col, -1)
  strict_col = jnp.where(tC > col, col, -1)
  E = jnp.zeros((ns, S, K), _f32)
  A3 = jnp.zeros((ns, S, C), _f32)
  if dA is not None:
    dA3 = dA.reshape(ns, S, C)
    dq3 = jnp.zeros((ns, S, K), _f32)
    dk3 = jnp.zeros((ns, S, K), _f32)
  for s in reversed(range(S)):
    if s < S - 1:
      E = E + jnp.where(tK >= s + 1, g3[:, s + 1:s + 2, :], 0.0)
    W = jnp.exp(E)  # e^{Σ_{s<r≤t} g_r}; 1 for t ≤ s (masked below)
    kW = k3[:, s:s + 1, :] * W
    a = jnp.sum(q3 * kW, axis=2, keepdims=True)  # [ns, S, 1]
    A3 = jnp.where(causal_col == s, a, A3)
    if dA is not None:
      d = jnp.sum(jnp.where(strict_col == s, dA3, 0.0), axis=2, keepdims=True)  # dA_ts, t > s
      dq3 = dq3 + d * kW
      dk_row = jnp.sum(d * q3 * W, axis=1, keepdims=True)  # [ns, 1, K]
      dk3 = jnp.where(tK == s, dk_row, dk3)
  A = A3.reshape(C, C)
  if dA is None:
    return A
  return A, dq3.reshape(C, K), dk3.reshape(C, K)


def _off_diag_factors(q_scaled, k, gates: Gates, i: int, sub_chunk: int):
  """Factors of the sub-block row i (rows n..n+S−1) against every key s < n, both ≤ 1:

      e^{Σ_{s<r≤t} g_r} = e^{Gl_t} · e^{R_s − R_m},   m = n − 1 (the last row before sub-chunk i)

  Returns (QF = q_i ⊙ e^{Gl_i} [S, K], e^{Gl_i} [S, K], F = e^{R_s − R_m} for s ≤ m, 0 below [C, K]);
  the exponentials are taken on the n rows before the sub-chunk only.
  """
  C, K = k.shape
  n = i * sub_chunk
  eGl = jnp.exp(gates.Gl[n:n + sub_chunk])
  F = jnp.exp(gates.R[:n] - gates.R[n - 1:n])
  if n < C:
    F = jnp.concatenate([F, jnp.zeros((C - n, K), _f32)], axis=0)
  return q_scaled[n:n + sub_chunk] * eGl, eGl, F


def chunk_intra_attention(q_scaled, k, gates: Gates, masks: ChunkMasks, sub_chunk: int,
                          compute_dtype):
  """Stage 3: A [C, C] float32, A_ts = Σ_d q_td k_sd e^{G_td − G_sd} for s ≤ t in one document."""
  C, _ = q_scaled.shape
  S = sub_chunk
  k32 = k.astype(_f32)
  A = _diag_pass(q_scaled, k32, gates.g, S)
  rows = [jnp.zeros((S, C), _f32)]
  for i in range(1, C // S):
    QF, _, F = _off_diag_factors(q_scaled, k32, gates, i, S)
    rows.append(mxu(QF, k32 * F, NT, compute_dtype))
  if len(rows) > 1:
    A = A + jnp.concatenate(rows, axis=0)
  return where(masks.same_doc, A)


# ------------------------------------------------------------------------------------------------
# stages 6 and 7: gradients of one chunk
# ------------------------------------------------------------------------------------------------


def chunk_grads(q_scaled, k, v, do, gates: Gates, hT, dhT, masks: ChunkMasks, sub_chunk: int,
                compute_dtype):
  """Stage 6 (see chunk.chunk_grads): dq (w.r.t. the scaled q), dk, dv, dG, dk_inter, float32.

  hT: the state entering the chunk, dhT: the gradient w.r.t. the state leaving it, both [V, K].
  dG = q ⊙ dq − k ⊙ dk_intra *without* the s = t terms (they cancel exactly; in float32 they would
  cancel O(1) numbers and swamp dg at strong decay), and without the inter dk term (stage 7 adds it as
  an exclusive cumsum).
  """
  C, K = q_scaled.shape
  S = sub_chunk
  ns = C // S
  k32 = k.astype(_f32)
  t, s = iota((C, C), 0), iota((C, C), 1)
  dA = where(masks.same_doc, jnp.where(s <= t, mxu(do, v, NT, compute_dtype), 0.0))
  A, dq_intra, dk_intra = _diag_pass(q_scaled, k32, gates.g, S, dA)
  A_rows, dq_rows = [jnp.zeros((S, C), _f32)], [jnp.zeros((S, K), _f32)]
  for i in range(1, ns):
    n = i * S
    QF, eGl, F = _off_diag_factors(q_scaled, k32, gates, i, S)
    KF = k32 * F
    dA_i = dA[n:n + S]
    A_rows.append(mxu(QF, KF, NT, compute_dtype))
    dq_rows.append(mxu(dA_i, KF, NN, compute_dtype) * eGl)
    dk_intra = dk_intra + F * mxu(dA_i, QF, TN, compute_dtype)
  if ns > 1:
    A = A + jnp.concatenate(A_rows, axis=0)
    dq_intra = dq_intra + jnp.concatenate(dq_rows, axis=0)
  A = where(masks.same_doc, A)
  eG = where(masks.row_in, jnp.exp(gates.G))
  k_dec = decayed_keys(k32, gates, masks)
  dv = mxu(A, do, TN, compute_dtype) + mxu(k_dec, dhT, NT, compute_dtype)
  dq_inter = mxu(do, hT, NN, compute_dtype) * eG
  dk_inter = where(masks.row_out, mxu(v, dhT, NN, compute_dtype) * jnp.exp(gates.R))
  dG = q_scaled * (dq_inter + dq_intra) - k32 * dk_intra
  dA_self = jnp.sum(jnp.where(s == t, dA, 0.0), axis=1, keepdims=True)  # [C, 1]
  dq = dq_inter + dq_intra + dA_self * k32
  dk = dk_inter + dk_intra + dA_self * q_scaled
  return dq, dk, dv, dG, dk_inter


def chunk_gate_grad(k, gates: Gates, hT, dhT, dG, dk_inter, masks: ChunkMasks, doc_col=None):
  """Stage 7 (see chunk.chunk_gate_grad): dg [C, K] float32, each kind of term summed once.

  * through q: Σ_{t ≥ r, same document} dG_t, a reverse cumsum restarting at document starts;
  * through k: Σ_{s < r} k_s ⊙ dk_inter_s, an exclusive forward cumsum;
  * through the carried state: e^Γ ⊙ Σ_v h ⊙ dh (every gate of the chunk).

  doc_col [C, 1]: the chunk's document index (None without segment_ids).
  """
  through_q = scan_rows(dG, reverse=True, doc=doc_col)
  through_k = scan_rows(shift_rows(k.astype(_f32) * dk_inter, 1))
  through_state = state_decay(gates, masks) * jnp.sum(hT.astype(_f32) * dhT, axis=0, keepdims=True)
  return through_q + through_k + through_state
