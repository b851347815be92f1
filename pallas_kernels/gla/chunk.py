"""Chunkwise two-level GLA in plain jnp: the readable algorithm, the XLA fallback on every backend, and the
stage structure the Pallas kernels mirror (GLA paper §4, docs/ops.md).

Layout inside: [B, H, N, C, *] with N = T / C chunks of C (64) tokens, each split into C / S sub-chunks
of S = 16. Stage names, shared with the kernels (1, 2, 4 and 5 are gate-shape-agnostic and live in
`pallas_kernels/common/chunk_stages.py`, shared with simple GLA):

  forward   1 `chunk_local_cumsum`   G = inclusive cumsum of g inside each chunk (float32)
            2 `chunk_state_pass`     h entering every chunk (float32), and the final state
            3 `chunk_intra_attention` A = the causal C×C decay-weighted q·kᵀ of each chunk (two-level)
            4 `chunk_output`         o = (q ⊙ e^G) h + A v
  backward  1, 2 recomputed (h is not stored by the forward, as fla does)
            5 `chunk_state_grad_pass` dh leaving every chunk (reverse pass), and d initial_state
            6 `chunk_grads`          dq, dk, dv from the intra (two-level) and inter terms
            7 `chunk_gate_grad`      dg: reverse cumsum of q⊙dq − k⊙dk within the chunk + the state terms

Packed documents are masks: a row reads h only while it is still in the document the chunk started in
(`row_in`), a key feeds the chunk's outgoing state only if it is in the chunk's last document
(`row_out`), h decays into the next chunk only if no document starts inside (`carry`), and A only
links tokens of one document (`same_doc`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import check_gla_inputs, default_scale
from pallas_kernels.common.chunk_stages import (ChunkGates, chunk_local_cumsum, chunk_output,
                                                chunk_state_grad_pass, chunk_state_pass, dot, masked,
                                                suffix_sum)
from pallas_kernels.common.chunking import DocMasks, chunked_doc_index, doc_masks, from_chunks, to_chunks

SUB_CHUNK = 16
_GATE_FLOOR = -1e30  # a stand-in for −inf where a gate sum meets a 0 in a matmul
_f32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class ChunkOptions:
  """Static options of one call (hashable: the custom_vjp's non-differentiable argument)."""

  scale: float
  chunk_size: int = 64
  sub_chunk: int = SUB_CHUNK
  compute_dtype: str = "float32"  # matmul operand dtype; accumulation is always float32


# ------------------------------------------------------------------------------------------------
# forward stages (1 `chunk_local_cumsum`, 2 `chunk_state_pass` and 4 `chunk_output` are shared)
# ------------------------------------------------------------------------------------------------


def _intra_factors(g, S: int, strict: bool = False):
  """Two-level decay factors for the C×C intra-chunk block (all ≤ 1, so no overflow anywhere).

  With n_i the first row of sub-chunk i and m_j the last row of sub-chunk j, an off-diagonal
  sub-block (i > j) factors as e^{G_t − G_s} = e^{G_t − G_{n_i}} · e^{G_{n_i} − G_{m_j}} · e^{G_{m_j} − G_s},
  so A_ij is a plain matmul of (Q_i ⊙ q_fac_i) and (K_j ⊙ k_fac_j) with a K-vector (`mid`) between.
  Diagonal sub-blocks keep the exact log-space e^{G_t − G_s} per element. Every exponent is summed
  directly from the gates (see `ChunkGates`).

  g: [..., C, K] float32 → q_fac, k_fac [..., ns, S, K]; mid [..., ns, ns, K]; diag [..., ns, S, S, K]
  (diag covers s ≤ t, or s < t if `strict`).
  """
  *lead, C, K = g.shape
  ns = C // S
  gs = g.reshape(*lead, ns, S, K)
  row = jnp.arange(S)
  # Σ_{n_i < r ≤ t} g_r and Σ_{s < r ≤ m_j} g_r
  q_fac = jnp.exp(jnp.cumsum(jnp.where(row[:, None] > 0, gs, 0.0), axis=-2))
  k_fac = jnp.exp(suffix_sum(gs))
  # floored so that a −inf gate (legal: exp = 0) never meets a 0 of `between` below (0·(−inf) = NaN);
  # e^{−1e30} is 0 like e^{−inf}, and every finite gate sum above −1e30 is unchanged
  total = jnp.maximum(jnp.sum(gs, axis=-2), _GATE_FLOOR)  # [..., ns, K]
  sub = jnp.arange(ns)
  between = (sub[None, :, None] < sub[None, None, :]) & (sub[None, None, :] < sub[:, None, None])
  # mid[i, j] = Σ_{m_j < r ≤ n_i} g_r = g_{n_i} + Σ_{j < l < i} total_l, for i > j
  mid_log = gs[..., :, None, 0, :] + jnp.einsum("ijl,...lk->...ijk", between.astype(_f32), total,
                                                precision="highest")
  below = (sub[:, None] > sub[None, :])[:, :, None]
  mid = jnp.exp(jnp.where(below, mid_log, -jnp.inf))
  # diag[t, s] = Σ_{s < r ≤ t} g_r, summed per (s, t) pair
  later = row[None, :] > row[:, None]  # [s, t]
  D = jnp.cumsum(jnp.where(later[:, :, None], gs[..., None, :, :], 0.0), axis=-2)  # [..., ns, s, t, K]
  D = jnp.swapaxes(D, -3, -2)  # [..., ns, t, s, K]
  causal = jnp.tril(jnp.ones((S, S), bool), -1 if strict else 0)[:, :, None]  # t ≥ s (t > s)
  diag = jnp.exp(jnp.where(causal, D, -jnp.inf))
  return q_fac, k_fac, mid, diag


def _blocks_to_matrix(off, diag_block, ns: int, S: int):
  """off: [..., ns, ns, S, S] (used where i > j), diag_block: [..., ns, S, S] → [..., C, C]."""
  eye = jnp.eye(ns, dtype=bool)[:, :, None, None]
  below = jnp.tril(jnp.ones((ns, ns), bool), -1)[:, :, None, None]
  blocks = jnp.where(eye, diag_block[..., :, None, :, :], jnp.where(below, off, 0.0))
  *lead, _, _, _, _ = blocks.shape
  return jnp.swapaxes(blocks, -3, -2).reshape(*lead, ns * S, ns * S)


def _matrix_to_blocks(A, ns: int, S: int):
  """[..., C, C] → [..., ns_i, ns_j, S, S]."""
  *lead, _, _ = A.shape
  return jnp.swapaxes(A.reshape(*lead, ns, S, ns, S), -3, -2)


def chunk_intra_attention(q_scaled, k, gates: ChunkGates, masks: DocMasks, opts: ChunkOptions):
  """Stage 3: A_ts = Σ_d q_td k_sd e^{G_td − G_sd} for s ≤ t (same document), per chunk, float32.

  q_scaled, k: [B, H, N, C, K] → A: [B, H, N, C, C].
  """
  S = opts.sub_chunk
  *lead, C, K = q_scaled.shape
  ns = C // S
  q_fac, k_fac, mid, diag = _intra_factors(gates.g, S)
  qs = q_scaled.astype(_f32).reshape(*lead, ns, S, K)
  ks = k.astype(_f32).reshape(*lead, ns, S, K)
  # off-diagonal sub-blocks: matmuls of factors ≤ 1
  q_mid = (qs * q_fac)[..., :, None, :, :] * mid[..., :, :, None, :]  # [..., i, j, S, K]
  off = dot("...ijtk,...jsk->...ijts", q_mid, ks * k_fac, opts)
  # diagonal sub-blocks: exact log-space decays, float32
  diag_block = jnp.einsum("...itk,...isk,...itsk->...its", qs, ks, diag, precision="highest")
  return masked(masks.same_doc, _blocks_to_matrix(off, diag_block, ns, S))


# ------------------------------------------------------------------------------------------------
# backward stages (5 `chunk_state_grad_pass` is shared)
# ------------------------------------------------------------------------------------------------


def chunk_grads(q_scaled, k, v, gates: ChunkGates, h, dh, do, masks: DocMasks, opts: ChunkOptions):
  """Stage 6: dq (w.r.t. the scaled q), dk, dv of one chunk, float32, and the gate's local term dG.

  dv = Aᵀ do + (k ⊙ e^{Γ−G}) dh
  dq = (do hᵀ) ⊙ e^G + Σ_s dA_ts k_s e^{G_t − G_s}            (two-level, like stage 3)
  dk = (v dhᵀ) ⊙ e^{Γ−G} + Σ_t dA_ts q_t e^{G_t − G_s}
  dG = q ⊙ dq − k ⊙ dk_intra, *without* the s = t terms (decay e^0): those cancel exactly, and leaving
  them in would cancel O(1) numbers in float32 and swamp dg when the decay is strong (g ≈ −20). The
  inter dk term goes to stage 7 separately for the same reason.
  """
  S = opts.sub_chunk
  *lead, C, K = q_scaled.shape
  ns = C // S
  q32, k32 = q_scaled.astype(_f32), k.astype(_f32)
  # recompute A (stage 3) and take dA = do vᵀ on the causal, same-document positions
  A = chunk_intra_attention(q_scaled, k, gates, masks, opts)
  causal = jnp.tril(jnp.ones((C, C), bool))
  dA = masked(masks.same_doc, jnp.where(causal, dot("bhncv,bhnsv->bhncs", do, v, opts), 0.0))
  decay_out = masked(masks.row_out, jnp.exp(gates.R))  # e^{Γ−G}: [B, H, N, C, K]
  dv = dot("bhnts,bhntv->bhnsv", A, do, opts) + dot("bhnck,bhnkv->bhncv", k32 * decay_out, dh, opts)
  dq = dot("bhncv,bhnkv->bhnck", do, h, opts) * masked(masks.row_in, jnp.exp(gates.G))
  dk_inter = dot("bhncv,bhnkv->bhnck", v, dh, opts) * decay_out
  # intra-chunk, two-level; the s = t terms (decay e^0) are added separately, see the docstring
  q_fac, k_fac, mid, diag = _intra_factors(gates.g, S, strict=True)
  qs, ks = q32.reshape(*lead, ns, S, K), k32.reshape(*lead, ns, S, K)
  dA_blocks = _matrix_to_blocks(dA, ns, S)  # [..., i, j, S, S]
  dq_off = jnp.einsum("...ijtk,...ijk->...itk",
                      dot("...ijts,...jsk->...ijtk", dA_blocks, ks * k_fac, opts), mid) * q_fac
  dk_off = jnp.einsum("...ijsk,...ijk->...jsk",
                      dot("...ijts,...itk->...ijsk", dA_blocks, qs * q_fac, opts), mid) * k_fac
  dA_diag = jnp.diagonal(dA_blocks, axis1=-4, axis2=-3)  # [..., S, S, ns]
  dA_diag = jnp.moveaxis(dA_diag, -1, -3)  # [..., ns, S, S]
  dq_diag = jnp.einsum("...its,...isk,...itsk->...itk", dA_diag, ks, diag, precision="highest")
  dk_diag = jnp.einsum("...its,...itk,...itsk->...isk", dA_diag, qs, diag, precision="highest")
  dq_intra = (dq_off + dq_diag).reshape(*lead, C, K)
  dk_intra = (dk_off + dk_diag).reshape(*lead, C, K)
  dG = q32 * (dq + dq_intra) - k32 * dk_intra
  dA_self = jnp.diagonal(dA, axis1=-2, axis2=-1)[..., None]  # [B, H, N, C, 1]
  dq = dq + dq_intra + dA_self * k32
  dk = dk_inter + dk_intra + dA_self * q32
  return dq, dk, dv, dG, dk_inter


def chunk_gate_grad(k, gates: ChunkGates, h, dh, dG, dk_inter, masks: DocMasks):
  """Stage 7: dg from its three kinds of terms, each summed once (no cancellation of large numbers):

  * dG (stage 6): G_t enters through e^{G_t} (q side) and e^{−G_s} (k side), so dg_r = Σ_{t ≥ r} dG_t,
    a reverse cumsum within the chunk (and within the document);
  * the inter dk term: k_s ⊙ dk_inter_s depends on g_r for s < r ≤ C−1 (through e^{Γ−G_s}), an
    exclusive forward cumsum;
  * the carried state: e^Γ ⊙ Σ_v (h ⊙ dh) depends on every g_r of the chunk.
  """
  decay = masked(masks.carry, jnp.exp(gates.Gamma))[..., 0, :]  # [B, H, N, K]
  through_state = (decay * jnp.sum(h * dh, axis=-1))[..., None, :]  # [B, H, N, 1, K]
  k_term = k.astype(_f32) * dk_inter
  shifted = jnp.concatenate([jnp.zeros_like(k_term[..., :1, :]), k_term[..., :-1, :]], axis=-2)
  through_k = jnp.cumsum(shifted, axis=-2)  # exclusive (cumsum − self would cancel O(1) terms)
  if masks.same_doc is None:
    through_q = jnp.flip(jnp.cumsum(jnp.flip(dG, -2), axis=-2), -2)
  else:  # a reverse cumsum that restarts at document starts (its sum over a whole document is 0)
    C = dG.shape[-2]
    later_same_doc = masks.same_doc & jnp.tril(jnp.ones((C, C), bool))  # [.., t, r]: t ≥ r
    through_q = jnp.einsum("bhntr,bhntk->bhnrk", later_same_doc.astype(_f32), dG,
                           precision="highest")
  return through_q + through_k + through_state


# ------------------------------------------------------------------------------------------------
# the op: custom_vjp over the chunked layout
# ------------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_gla(opts: ChunkOptions, q, k, v, g, h0, doc):
  o, ht, _ = _chunk_gla_fwd(opts, q, k, v, g, h0, doc)
  return o, ht


def _chunk_gla_fwd(opts, q, k, v, g, h0, doc):
  masks = doc_masks(doc)
  q_scaled = q.astype(_f32) * opts.scale
  gates = chunk_local_cumsum(g)  # 1
  h, ht = chunk_state_pass(k, v, gates, h0, masks, opts)  # 2
  A = chunk_intra_attention(q_scaled, k, gates, masks, opts)  # 3
  o = chunk_output(q_scaled, v, gates, h, A, masks, opts)  # 4
  return o, ht, (q, k, v, g, h0, doc)


def _chunk_gla_fwd_rule(opts, q, k, v, g, h0, doc):
  o, ht, residuals = _chunk_gla_fwd(opts, q, k, v, g, h0, doc)
  return (o, ht), residuals


def _chunk_gla_bwd_rule(opts, residuals, cotangents):
  q, k, v, g, h0, doc = residuals
  do, dht = cotangents
  masks = doc_masks(doc)
  q_scaled = q.astype(_f32) * opts.scale
  gates = chunk_local_cumsum(g)  # 1 (recomputed)
  h, _ = chunk_state_pass(k, v, gates, h0, masks, opts)  # 2 (recomputed)
  dh, dh0 = chunk_state_grad_pass(q_scaled, do, gates, dht, masks, opts)  # 5
  dq_scaled, dk, dv, dG, dk_inter = chunk_grads(q_scaled, k, v, gates, h, dh, do, masks, opts)  # 6
  dg = chunk_gate_grad(k, gates, h, dh, dG, dk_inter, masks)  # 7
  dq = dq_scaled * opts.scale
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dg.astype(g.dtype),
          dh0.astype(h0.dtype), None)


_chunk_gla.defvjp(_chunk_gla_fwd_rule, _chunk_gla_bwd_rule)


def chunk_gla_jnp(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                  segment_ids=None, chunk_size=64):
  """Chunkwise two-level GLA in jnp (the XLA implementation of `chunk_gla`).

  Args:
    q, k, g: [B, T, H, K]; v: [B, T, H, V]; any T (padded inside), any K, V.
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V] (any float dtype; used in float32).
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id.
    chunk_size: C, a multiple of the 16-token sub-chunk.

  Returns:
    (o [B, T, H, V] in v's dtype, final_state [B, H, K, V] float32 or None). Gradients (a hand-written
    backward that recomputes h) flow to q, k, v, g and initial_state.

  Example:
    >>> B, T, H, K, V = 2, 100, 4, 64, 128
    >>> q = k = jnp.ones((B, T, H, K), jnp.bfloat16); v = jnp.ones((B, T, H, V), jnp.bfloat16)
    >>> g = jax.nn.log_sigmoid(jnp.zeros((B, T, H, K))) / 16
    >>> o, ht = chunk_gla_jnp(q, k, v, g, output_final_state=True)
  """
  info = check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state,
                          segment_ids=segment_ids, chunk_size=chunk_size)
  return chunk_gla_xla(info, q, k, v, g, scale=scale, initial_state=initial_state,
                       output_final_state=output_final_state, segment_ids=segment_ids,
                       chunk_size=chunk_size)


def chunk_gla_xla(info, q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                  segment_ids=None, chunk_size=64):
  """`chunk_gla_jnp` on an already-checked call (`info`: its `CallInfo`); the registered "xla" impl."""
  opts = ChunkOptions(scale=default_scale(scale, info.K), chunk_size=chunk_size,
                      compute_dtype=jnp.dtype(q.dtype).name)
  C = chunk_size
  h0 = (jnp.zeros((info.B, info.H, info.K, info.V), _f32) if initial_state is None
        else initial_state.astype(_f32))
  o, ht = _chunk_gla(opts, to_chunks(q, C), to_chunks(k, C), to_chunks(v, C), to_chunks(g, C), h0,
                     chunked_doc_index(segment_ids, C))
  o = from_chunks(o, info.T).astype(v.dtype)
  return o, (ht if output_final_state else None)
