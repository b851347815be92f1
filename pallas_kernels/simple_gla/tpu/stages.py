"""The chunk stages of simple GLA inside a Mosaic TPU kernel: one chunk of one head, for the three scalar
gate kinds (docs/ops.md):

  | kind       | decay of the state per token | where the log-decays come from                      |
  |------------|------------------------------|-----------------------------------------------------|
  | "scalar"   | exp(g_t) (per token, head)   | log-step scans of the chunk's gate column g [C, 1]   |
  | "constant" | exp(γ) (per head)            | closed forms from the count of steps: (t − s)·γ      |
  | "none"     | 1                            | none: no exponential is formed (static)             |

With a scalar decay the intra-chunk scores need no sub-chunks: A = (Q Kᵀ) ⊙ e^E over the whole chunk,
E_ts = Σ_{s<r≤t} g_r for s ≤ t, one MXU matmul and one [C, C] exponential. The inter-chunk stages (2, 4, 5:
`pallas_kernels/common/tpu/state.py`) are GLA's, fed [C, 1] / [1, 1] log-decays instead of [C, K] / [1, K].

Stage names follow `gla/chunk.py`:

  1 `scalar_gates` / `constant_gates` / `NO_GATES`   G, R, Γ (columns) and the decay matrix e^E
  3 `chunk_intra_attention`  A = (q kᵀ) ⊙ e^E on the causal, same-document positions
  6 `chunk_grads`            dq, dk, dv (and the pieces stage 7 needs)
  7 `chunk_gate_grad`        dg [C, 1] for the "scalar" kind

Numerics: E, G = Σ_{r≤t} g_r, R = Σ_{r>t} g_r and Γ are *direct* sums of gates (row scans, never a
difference of two cumsums), so they keep full relative precision at g ≈ −20 per token; masks are applied
with `where` and never multiplied in, so g = −inf gives exp = 0 and no 0·(−inf). dg (stage 7) is a sum of
three kinds of terms, each summed once without the s = t terms (which do not depend on any gate), so it
has no cancellation of O(1) numbers under strong decay.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pallas_kernels.common.tpu.state import decayed_keys, state_decay
from pallas_kernels.common.tpu.tiles import (NN, NT, TN, ChunkMasks, both, iota, mxu, scan_rows,
                                             shift_rows, where)

_f32 = jnp.float32


# ------------------------------------------------------------------------------------------------
# stage 1: the chunk's log-decays, per gate kind
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScalarGates:
  """The log-decays of one chunk (every field None for gate kind "none"), float32."""

  G: jax.Array | None = None  # [C, 1] Σ_{r ≤ t} g_r  (inclusive prefix)
  R: jax.Array | None = None  # [C, 1] Σ_{r > t} g_r  (exclusive suffix)
  Gamma: jax.Array | None = None  # [1, 1] Σ_r g_r
  W: jax.Array | None = None  # [C, C] e^{E_ts}, E_ts = Σ_{s<r≤t} g_r (1 where s ≥ t: masked by users)


NO_GATES = ScalarGates()


def scalar_gates(g, intra: bool = True) -> ScalarGates:
  """Stage 1, kind "scalar": g [C, 1] (any float dtype; padded tokens 0) → the chunk's direct gate sums;
  `intra=False` (the state pass): only what the state update reads (R, Γ).

  E is a row scan of the strictly-lower matrix g_r·[r > s]: column s sums g over (s, t], a sum of gates of
  one sign (no cancellation, and −inf stays −inf)."""
  g = g.astype(_f32)
  R, Gamma = scan_rows(shift_rows(g, -1), reverse=True), jnp.sum(g, axis=0, keepdims=True)
  if not intra:
    return ScalarGates(R=R, Gamma=Gamma)
  C = g.shape[0]
  t, s = iota((C, C), 0), iota((C, C), 1)
  E = scan_rows(jnp.where(t > s, g, 0.0))  # [C, C]
  return ScalarGates(G=scan_rows(g), R=R, Gamma=Gamma, W=jnp.exp(E))


def constant_gates(gamma, C: int, n_valid, intra: bool = True) -> ScalarGates:
  """Stage 1, kind "constant": gamma, the head's log decay (a float32 scalar, ≤ 0, may be −inf); n_valid,
  the tokens of this chunk before the padding (1..C, a traced int32): the chunk's last real token ends
  the state's decay, so padded tokens do not decay it."""
  def times(n):  # n·γ for integer counts n ≥ 0, exactly 0 for n = 0 (no 0·(−inf))
    return jnp.where(n > 0, n.astype(_f32) * gamma, 0.0)
  rows = iota((C, 1), 0)
  R, Gamma = times(jnp.maximum(n_valid - 1 - rows, 0)), times(jnp.full((1, 1), n_valid, jnp.int32))
  if not intra:
    return ScalarGates(R=R, Gamma=Gamma)
  t, s = iota((C, C), 0), iota((C, C), 1)
  return ScalarGates(G=times(rows + 1), R=R, Gamma=Gamma, W=jnp.exp(times(t - s)))


def decayed_causal(x, gates: ScalarGates, masks: ChunkMasks):
  """x [C, C] ⊙ e^E on the causal (s ≤ t), same-document positions, 0 elsewhere."""
  C = x.shape[0]
  mask = both(iota((C, C), 0) >= iota((C, C), 1), masks.same_doc)
  return jnp.where(mask, x if gates.W is None else x * gates.W, 0.0)


# ------------------------------------------------------------------------------------------------
# stage 3: the intra-chunk block
# ------------------------------------------------------------------------------------------------


def chunk_intra_attention(q_scaled, k, gates: ScalarGates, masks: ChunkMasks, compute_dtype):
  """Stage 3: A [C, C] float32, A_ts = (q_t · k_s) e^{E_ts} for s ≤ t in one document: one matmul."""
  return decayed_causal(mxu(q_scaled, k, NT, compute_dtype), gates, masks)


# ------------------------------------------------------------------------------------------------
# stages 6 and 7: gradients of one chunk
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GateGradTerms:
  """What stage 7 needs from stage 6 (kind "scalar" only)."""

  P: jax.Array  # [C, C] dA_ts · A_ts for s < t (0 elsewhere): the intra pair terms
  dq_inter: jax.Array  # [C, K] (do h) ⊙ e^G on the rows still in the chunk's first document
  dk_inter: jax.Array  # [C, K] (v dhᵀ) ⊙ e^R on the rows of the chunk's last document


def chunk_grads(q_scaled, k, v, do, gates: ScalarGates, hT, dhT, masks: ChunkMasks, compute_dtype,
                gate_grad: bool):
  """Stage 6: dq (w.r.t. the scaled q), dk, dv of one chunk, float32, and (if `gate_grad`) the terms
  of stage 7.

  hT: the state entering the chunk, dhT: the gradient w.r.t. the state leaving it, both [V, K].

      dv = Aᵀ do + (k ⊙ e^R) dh
      dq = (dA ⊙ e^E) k + (do hᵀ) ⊙ e^G          dA = do vᵀ (causal, same document)
      dk = (dA ⊙ e^E)ᵀ q + (v dhᵀ) ⊙ e^R
  """
  C = q_scaled.shape[0]
  k32 = k.astype(_f32)
  A = chunk_intra_attention(q_scaled, k32, gates, masks, compute_dtype)
  dA = mxu(do, v, NT, compute_dtype)  # [C, C]
  dAW = decayed_causal(dA, gates, masks)
  dq_inter = where(masks.row_in, mxu(do, hT, NN, compute_dtype))
  dk_inter = where(masks.row_out, mxu(v, dhT, NN, compute_dtype))
  if gates.G is not None:
    dq_inter = dq_inter * jnp.exp(gates.G)
    dk_inter = dk_inter * jnp.exp(gates.R)
  k_dec = decayed_keys(k32, gates, masks)
  dq = dq_inter + mxu(dAW, k32, NN, compute_dtype)
  dk = dk_inter + mxu(dAW, q_scaled, TN, compute_dtype)
  dv = mxu(A, do, TN, compute_dtype) + mxu(k_dec, dhT, NT, compute_dtype)
  terms = None
  if gate_grad:
    strict = iota((C, C), 0) > iota((C, C), 1)
    terms = GateGradTerms(P=jnp.where(strict, dA * A, 0.0), dq_inter=dq_inter, dk_inter=dk_inter)
  return dq, dk, dv, terms


def chunk_gate_grad(q_scaled, k, gates: ScalarGates, hT, dhT, terms: GateGradTerms,
                    masks: ChunkMasks):
  """Stage 7, kind "scalar": dg [C, 1] float32 — GLA's dg summed over K (and V), each kind of term once:

  * intra pairs: g_r enters A_ts for s < r ≤ t, so dg_r = Σ_{s<r} Σ_{t≥r} P_ts: a reverse row scan of P
    and a masked row sum (every pair summed once; pairs never cross a document, P is 0 there);
  * through q: e^{G_t} for t ≥ r: a reverse scan of Σ_k q ⊙ dq_inter (rows past the first document are 0);
  * through k: e^{R_s} for s < r: an exclusive forward scan of Σ_k k ⊙ dk_inter;
  * through the carried state: e^Γ Σ h ⊙ dh, for every gate of the chunk.
  """
  C = q_scaled.shape[0]
  r, s = iota((C, C), 0), iota((C, C), 1)
  intra = jnp.sum(jnp.where(s < r, scan_rows(terms.P, reverse=True), 0.0), axis=1, keepdims=True)
  through_q = scan_rows(jnp.sum(q_scaled * terms.dq_inter, axis=1, keepdims=True), reverse=True)
  k_terms = jnp.sum(k.astype(_f32) * terms.dk_inter, axis=1, keepdims=True)  # [C, 1]
  through_k = scan_rows(shift_rows(k_terms, 1))
  hdh = jnp.sum(jnp.sum(hT.astype(_f32) * dhT, axis=1, keepdims=True), axis=0, keepdims=True)  # [1, 1]
  return intra + through_q + through_k + state_decay(gates, masks) * hdh
