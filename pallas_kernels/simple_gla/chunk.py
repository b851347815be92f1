"""Chunkwise simple GLA in plain jnp: one scalar decay per token and head (or a constant per head, or
none). The readable algorithm, the XLA fallback on every backend, and the stage structure the Pallas
kernels mirror (docs/ops.md).

    S_t = e^{g_t} S_{t-1} + k_tᵀ v_t ;   o_t = scale · q_t S_t          (g_t a scalar per head)

Layout inside: [B, H, N, C, *], N = T / C chunks of C (64) tokens; the gate is [B, H, N, C, 1] so that
the stages shared with GLA (`pallas_kernels/common/chunk_stages.py`) broadcast it over K. Within a chunk
G_t = Σ_{r ≤ t} g_r. Stage names (the same as gla/chunk.py):

  forward   1 `chunk_local_cumsum`    (shared) prefix / suffix / total gate sums of each chunk
            2 `chunk_state_pass`      (shared) h entering every chunk, and the final state
            3 `chunk_intra_attention` A = (Q Kᵀ) ⊙ M, M_ts = e^{G_t − G_s} (s ≤ t, one document): ONE
                                       masked C×C matmul per chunk — a scalar decay needs no sub-chunks
            4 `chunk_output`          (shared) o = (q e^{G_t}) h + A v
  backward  1, 2 recomputed (h is not stored by the forward, as fla does)
            5 `chunk_state_grad_pass` (shared) dh leaving every chunk (reverse), and d initial_state
            6 `chunk_grads`           dq, dk, dv from the intra and inter terms, and dg's pieces
            7 `chunk_gate_grad`       dg (scalar gate only)

Gate kinds: "scalar" (g [B, T, H]); "constant" (g_gamma [H], broadcast to every token here; it is a
constant of the op: `stop_gradient`, no gradient flows to g_gamma — fla gives none either — and stage 7
is skipped); "none" (no gate: the shared stages skip the exponentials, M is the causal mask).

Every exponent is a direct sum of gates (M's Σ_{s<r≤t} g_r is summed per (t, s) pair, never G_t − G_s),
so g = −inf (legal: exp = 0) gives exact zeros and no NaN, and dg keeps float32 precision at −20 per
token.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import check_simple_gla_inputs, default_scale
from pallas_kernels.common.chunk_stages import (ChunkGates, chunk_local_cumsum, chunk_output,
                                                chunk_state_grad_pass, chunk_state_pass,
                                                decayed_rows_out, dot, masked)
from pallas_kernels.common.chunking import DocMasks, chunked_doc_index, doc_masks, from_chunks, to_chunks

_f32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class ChunkOptions:
  """Static options of one call (hashable: the custom_vjp's non-differentiable argument)."""

  scale: float
  chunk_size: int = 64
  gate: str = "scalar"  # "scalar" (g), "constant" (g_gamma, no gate gradient) or "none"
  compute_dtype: str = "float32"  # matmul operand dtype; accumulation is always float32


def _exclusive_cumsum(x, axis: int):
  """out_i = Σ_{j < i} x_j along `axis` (shift, then cumsum: no cumsum − self cancellation)."""
  x = jnp.moveaxis(x, axis, -1)
  shifted = jnp.concatenate([jnp.zeros_like(x[..., :1]), x[..., :-1]], axis=-1)
  return jnp.moveaxis(jnp.cumsum(shifted, axis=-1), -1, axis)


def _reverse_cumsum(x, axis: int):
  """out_i = Σ_{j ≥ i} x_j along `axis`."""
  return jnp.flip(jnp.cumsum(jnp.flip(x, axis), axis=axis), axis)


# ------------------------------------------------------------------------------------------------
# forward stages (1, 2 and 4 are shared: common/chunk_stages.py)
# ------------------------------------------------------------------------------------------------


def intra_decay(gates: ChunkGates | None, masks: DocMasks, C: int):
  """M [B, H|1, N, C, C] float32: M_ts = e^{Σ_{s<r≤t} g_r} for s ≤ t in one document, else 0.

  The exponent is summed per (s, t) pair (a masked cumsum of the C gates), so it is exact to float32,
  ≤ 0, and −inf where a −inf gate lies between s and t (never −inf − (−inf)). Without a gate: the mask.
  """
  visible = jnp.tril(jnp.ones((C, C), bool))  # [t, s]: s ≤ t
  if masks.same_doc is not None:
    visible = visible & masks.same_doc
  if gates is None:
    return visible.astype(_f32)
  g = gates.g[..., 0]  # [B, H, N, C]
  idx = jnp.arange(C)
  later = idx[None, :] > idx[:, None]  # [s, r]: r > s
  D = jnp.cumsum(jnp.where(later, g[..., None, :], 0.0), axis=-1)  # [..., s, t] = Σ_{s<r≤t} g_r
  return jnp.exp(jnp.where(visible, jnp.swapaxes(D, -1, -2), -jnp.inf))


def chunk_intra_attention(q_scaled, k, gates: ChunkGates | None, masks: DocMasks, opts: ChunkOptions):
  """Stage 3: A = (Q Kᵀ) ⊙ M per chunk, one C×C matmul. q_scaled, k: [B, H, N, C, K] → [B, H, N, C, C]."""
  M = intra_decay(gates, masks, q_scaled.shape[-2])
  return dot("bhntk,bhnsk->bhnts", q_scaled, k, opts) * M


# ------------------------------------------------------------------------------------------------
# backward stages (5 is shared)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GateGradTerms:
  """Stage 6's pieces of dg, float32, each summed once in stage 7 (no large-number cancellation)."""

  P: jax.Array  # [B, H, N, C, C] dA_ts · A_ts for s < t: ∂L/∂(Σ_{s<r≤t} g_r) of the pair (t, s)
  q_inter: jax.Array  # [B, H, N, C] Σ_k q ⊙ dq_inter: ∂L/∂G_t through the read of h
  k_inter: jax.Array  # [B, H, N, C] Σ_k k ⊙ dk_inter: ∂L/∂(Γ − G_s) through the state update


def chunk_grads(q_scaled, k, v, gates: ChunkGates | None, h, dh, do, masks: DocMasks,
                opts: ChunkOptions):
  """Stage 6: dq (w.r.t. the scaled q), dk, dv of each chunk, float32, and dg's pieces (or None).

  With dA = (do vᵀ) ⊙ M and A = (Q Kᵀ) ⊙ M (M from `intra_decay`):
    dv = Aᵀ do + (k ⊙ e^{Γ−G}) dh
    dq = dA k + (do hᵀ) ⊙ e^G
    dk = dAᵀ q + (v dhᵀ) ⊙ e^{Γ−G}
  """
  C = q_scaled.shape[-2]
  M = intra_decay(gates, masks, C)
  QK = dot("bhntk,bhnsk->bhnts", q_scaled, k, opts)
  A = QK * M
  dA = dot("bhntv,bhnsv->bhnts", do, v, opts) * M
  k_out = decayed_rows_out(k, gates, masks)
  dv = dot("bhnts,bhntv->bhnsv", A, do, opts) + dot("bhnsk,bhnkv->bhnsv", k_out, dh, opts)
  dq_inter = dot("bhntv,bhnkv->bhntk", do, h, opts)
  dq_inter = masked(masks.row_in, dq_inter if gates is None else dq_inter * jnp.exp(gates.G))
  dk_inter = dot("bhnsv,bhnkv->bhnsk", v, dh, opts)
  dk_inter = masked(masks.row_out, dk_inter if gates is None else dk_inter * jnp.exp(gates.R))
  dq = dot("bhnts,bhnsk->bhntk", dA, k, opts) + dq_inter
  dk = dot("bhnts,bhntk->bhnsk", dA, q_scaled, opts) + dk_inter
  if gates is None or opts.gate != "scalar":
    return dq, dk, dv, None
  strict = jnp.tril(jnp.ones((C, C), bool), -1)
  terms = GateGradTerms(P=jnp.where(strict, dA * QK, 0.0),
                        q_inter=jnp.sum(q_scaled.astype(_f32) * dq_inter, axis=-1),
                        k_inter=jnp.sum(k.astype(_f32) * dk_inter, axis=-1))
  return dq, dk, dv, terms


def chunk_gate_grad(terms: GateGradTerms, gates: ChunkGates, h, dh, masks: DocMasks):
  """Stage 7: dg_r of the scalar gate, [B, H, N, C], float32 — GLA's stage 7 summed over K (and V).

  g_r enters (within its chunk) through
  * the intra pairs (t, s) with s < r ≤ t: Σ_{t ≥ r} Σ_{s < r} P_ts — a cumsum over s, a reverse cumsum
    over t, read on the diagonal; every term is a pair's own contribution (the s = t terms, e^0, are
    not there at all), so nothing of size O(1) cancels at strong decay; P is 0 across documents, so no
    restart is needed;
  * the read of h at rows t ≥ r (e^{G_t}): a reverse cumsum of q_inter;
  * the state update from rows s < r (e^{Γ − G_s} = e^{Σ_{r' > s} g_r'}): an exclusive cumsum of k_inter;
  * the carried state (e^Γ): e^Γ Σ_{k,v} h ⊙ dh, for every r of the chunk.
  """
  S = _exclusive_cumsum(terms.P, axis=-1)  # [t, r] = Σ_{s<r} P_ts
  through_pairs = jnp.diagonal(_reverse_cumsum(S, axis=-2), axis1=-2, axis2=-1)  # Σ_{t≥r} S[t, r]
  through_q = _reverse_cumsum(terms.q_inter, axis=-1)
  through_k = _exclusive_cumsum(terms.k_inter, axis=-1)
  decay = masked(masks.carry, jnp.exp(gates.Gamma))[..., 0, 0]  # [B, H, N]
  through_state = (decay * jnp.sum(h * dh, axis=(-2, -1)))[..., None]  # [B, H, N, 1]
  return through_pairs + through_q + through_k + through_state


# ------------------------------------------------------------------------------------------------
# the op: custom_vjp over the chunked layout
# ------------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_simple_gla(opts: ChunkOptions, q, k, v, g, h0, doc):
  o, ht, _ = _chunk_simple_gla_fwd(opts, q, k, v, g, h0, doc)
  return o, ht


def _chunk_simple_gla_fwd(opts, q, k, v, g, h0, doc):
  masks = doc_masks(doc)
  q_scaled = q.astype(_f32) * opts.scale
  gates = None if g is None else chunk_local_cumsum(g)  # 1
  h, ht = chunk_state_pass(k, v, gates, h0, masks, opts)  # 2
  A = chunk_intra_attention(q_scaled, k, gates, masks, opts)  # 3
  o = chunk_output(q_scaled, v, gates, h, A, masks, opts)  # 4
  return o, ht, (q, k, v, g, h0, doc)


def _chunk_simple_gla_fwd_rule(opts, q, k, v, g, h0, doc):
  o, ht, residuals = _chunk_simple_gla_fwd(opts, q, k, v, g, h0, doc)
  return (o, ht), residuals


def _chunk_simple_gla_bwd_rule(opts, residuals, cotangents):
  q, k, v, g, h0, doc = residuals
  do, dht = cotangents
  masks = doc_masks(doc)
  q_scaled = q.astype(_f32) * opts.scale
  gates = None if g is None else chunk_local_cumsum(g)  # 1 (recomputed)
  h, _ = chunk_state_pass(k, v, gates, h0, masks, opts)  # 2 (recomputed)
  dh, dh0 = chunk_state_grad_pass(q_scaled, do, gates, dht, masks, opts)  # 5
  dq_scaled, dk, dv, terms = chunk_grads(q_scaled, k, v, gates, h, dh, do, masks, opts)  # 6
  if g is None:
    dg = None
  elif terms is None:  # constant gate: g is built from stop_gradient(g_gamma)
    dg = jnp.zeros_like(g)
  else:
    dg = chunk_gate_grad(terms, gates, h, dh, masks)[..., None].astype(g.dtype)  # 7
  dq = dq_scaled * opts.scale
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dg, dh0.astype(h0.dtype), None)


_chunk_simple_gla.defvjp(_chunk_simple_gla_fwd_rule, _chunk_simple_gla_bwd_rule)


def chunk_simple_gla_jnp(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                         output_final_state=False, segment_ids=None, chunk_size=64):
  """Chunkwise simple GLA in jnp (the XLA implementation of `chunk_simple_gla`); checks its inputs.

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V]; any T (padded inside), any K, V.
    g: [B, T, H] log decay per token and head (≤ 0, −inf allowed), or None.
    g_gamma: [H] constant log decay per head (no gradient flows to it), or None. At most one of g, g_gamma.
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V] (any float dtype; used in float32).
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id.
    chunk_size: C, a multiple of 16.

  Returns:
    (o [B, T, H, V] in v's dtype, final_state [B, H, K, V] float32 or None). Gradients (a hand-written
    backward that recomputes h) flow to q, k, v, g and initial_state.

  Example:
    >>> B, T, H, K, V = 2, 100, 4, 64, 128
    >>> q = k = jnp.ones((B, T, H, K), jnp.bfloat16); v = jnp.ones((B, T, H, V), jnp.bfloat16)
    >>> g = jax.nn.log_sigmoid(jnp.zeros((B, T, H)))
    >>> o, ht = chunk_simple_gla_jnp(q, k, v, g, output_final_state=True)
  """
  info = check_simple_gla_inputs(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                                 segment_ids=segment_ids, chunk_size=chunk_size)
  return chunk_simple_gla_xla(info, q, k, v, g, g_gamma=g_gamma, scale=scale,
                              initial_state=initial_state, output_final_state=output_final_state,
                              segment_ids=segment_ids, chunk_size=chunk_size)


def chunk_simple_gla_xla(info, q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                         output_final_state=False, segment_ids=None, chunk_size=64):
  """`chunk_simple_gla_jnp` on an already-checked call (`info`: its `CallInfo`); the registered "xla"."""
  opts = ChunkOptions(scale=default_scale(scale, info.K), chunk_size=chunk_size, gate=info.gate,
                      compute_dtype=jnp.dtype(q.dtype).name)
  C = chunk_size
  h0 = (jnp.zeros((info.B, info.H, info.K, info.V), _f32) if initial_state is None
        else initial_state.astype(_f32))
  if info.gate == "constant":  # the same log decay for every token, padding excluded by to_chunks
    g = jnp.broadcast_to(jax.lax.stop_gradient(g_gamma).astype(_f32), (info.B, info.T, info.H))
  g_chunks = None if g is None else to_chunks(g[..., None], C)  # [B, H, N, C, 1]
  o, ht = _chunk_simple_gla(opts, to_chunks(q, C), to_chunks(k, C), to_chunks(v, C), g_chunks, h0,
                            chunked_doc_index(segment_ids, C))
  o = from_chunks(o, info.T).astype(v.dtype)
  return o, (ht if output_final_state else None)
