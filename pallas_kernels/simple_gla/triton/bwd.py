"""Backward of the Pallas Triton simple GLA: `chunk_grads`, one program per (chunk, b·h), all of K and V.

The state passes (h entering and dh leaving every chunk) are the shared kernels of
common/triton/state.py. Per chunk, with s = scale, M the masked decay matrix (fwd.py) and
dP = s · (do vᵀ) ⊙ M (the gradient w.r.t. q_t·k_s):

  dv = (s · (q kᵀ) ⊙ M)ᵀ do + (k ⊙ e^{Γ−G}) dh                 (V loop, with do vᵀ summed alongside)
  dq = dP k + s · e^{G} ⊙ (do hᵀ)                               (K loop; rows of the first document)
  dk = dPᵀ q + e^{Γ−G} ⊙ (v dhᵀ)                                (keys of the last document)
  dg_r = Σ_{t ≥ r, same doc} D_t + Σ_{t < r} X_t + e^{Γ} Σ h ⊙ dh     (gate "scalar" only)

the K- and V-summed form of GLA's dg (gla/triton/bwd.py), with the same cancellation-free split:
D_t = q_t·dq_inter_t + Σ_{s<t} P_ts − Σ_{s>t} P_st with P = (q kᵀ) ⊙ dP (the s = t terms cancel exactly
and are left out), X_t = k_t·dk_inter_t (an exclusive forward sum instead of a reverse sum minus a
total), the state term only where no document starts in the chunk. Every sum is a float32 [C, C]
masked row reduction (exact order, no matmul). dg is float32 [B, T, H].
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from pallas_kernels import compat
from pallas_kernels.common.triton.gates import chunk_decay, gate_chunk_spec
from pallas_kernels.common.triton.tiles import (C, F32, block_mask, carry_mask, causal, chunk_docs,
                                                iota2, load, mm, pl, row_in, row_out, rows)
from pallas_kernels.simple_gla.triton.common import KernelOptions
from pallas_kernels.simple_gla.triton.fwd import intra_decay


def chunk_grads_kernel(*refs, opts: KernelOptions):
  q_ref, k_ref, v_ref, do_ref, *rest = refs
  g_ref = rest.pop(0) if opts.gate != "none" else None
  h_ref, dh_ref, *rest = rest
  doc_ref = rest.pop(0) if opts.has_seg else None
  dq_ref, dk_ref, dv_ref, *dg_ref = rest
  BK, BV = opts.blocks.grads_bk, opts.blocks.grads_bv
  nk, nv = opts.K // BK, opts.V // BV
  dt = jnp.dtype(opts.dot_dtype)
  s = opts.scale
  t_abs = pl.program_id(0) * C
  docs = chunk_docs(doc_ref, t_abs, C, opts.has_seg)
  dec = chunk_decay(opts, g_ref, 0, t_abs)
  M = intra_decay(dec, block_mask(docs, 0, 0, C))  # [C, C]
  out_rows, in_rows = row_out(docs, 0), row_in(docs, 0)

  def qk_body(kt, qk):
    c0 = kt * BK
    return qk + mm(load(q_ref, 0, C, c0, BK, dt), load(k_ref, 0, C, c0, BK, dt), opts, tb=True)

  A = lax.fori_loop(0, nk, qk_body, jnp.zeros((C, C), F32)) * M * s

  def v_body(vt, dA):  # dv of one V tile; do vᵀ summed alongside
    cv = vt * BV
    do = load(do_ref, 0, C, cv, BV, dt)

    def k_body(kt, acc):  # the state term (k ⊙ e^{Γ−G}) dh
      c0 = kt * BK
      kd = rows(out_rows, dec.to_end(load(k_ref, 0, C, c0, BK)))
      return acc + mm(kd, load(dh_ref, c0, BK, cv, BV, dt), opts)

    dv = lax.fori_loop(0, nk, k_body, mm(A, do, opts, ta=True))
    dv_ref[:, pl.ds(cv, BV)] = dv.astype(dv_ref.dtype)
    return dA + mm(do, load(v_ref, 0, C, cv, BV, dt), opts, tb=True)

  dA = lax.fori_loop(0, nv, v_body, jnp.zeros((C, C), F32))
  dP = dA * M * s
  want_dg = opts.gate == "scalar"
  if want_dg:  # P = (q kᵀ) ⊙ dP = A ⊙ (do vᵀ), s < t: the intra terms of dg
    P = jnp.where(causal(C, strict=True), A * dA, 0.0)  # [t, s]
    intra = jnp.sum(P, axis=1) - jnp.sum(P, axis=0)  # [C]

  def k_body(kt, carry):  # dq, dk of one K tile
    qdq, kdk, hdh = carry
    c0 = kt * BK

    def inner(vt, acc):  # do hᵀ, v dhᵀ, Σ h ⊙ dh over V
      dq_i, dk_i, hdh_i = acc
      cv = vt * BV
      h, dh = load(h_ref, c0, BK, cv, BV), load(dh_ref, c0, BK, cv, BV)
      dq_i = dq_i + mm(load(do_ref, 0, C, cv, BV, dt), h, opts, tb=True)
      dk_i = dk_i + mm(load(v_ref, 0, C, cv, BV, dt), dh, opts, tb=True)
      if want_dg:
        hdh_i = hdh_i + jnp.sum(h * dh)
      return dq_i, dk_i, hdh_i

    z = jnp.zeros((C, BK), F32)
    dq_i, dk_i, hdh = lax.fori_loop(0, nv, inner, (z, z, hdh))
    q, k = load(q_ref, 0, C, c0, BK), load(k_ref, 0, C, c0, BK)
    dq_i = rows(in_rows, dec.from_start(dq_i)) * s
    dk_i = rows(out_rows, dec.to_end(dk_i))
    dq = mm(dP, k, opts) + dq_i
    dk = mm(dP, q, opts, ta=True) + dk_i
    dq_ref[:, pl.ds(c0, BK)] = dq.astype(dq_ref.dtype)
    dk_ref[:, pl.ds(c0, BK)] = dk.astype(dk_ref.dtype)
    if want_dg:
      qdq = qdq + jnp.sum(q * dq_i, axis=1)
      kdk = kdk + jnp.sum(k * dk_i, axis=1)
    return qdq, kdk, hdh

  zc = jnp.zeros((C,), F32)
  qdq, kdk, hdh = lax.fori_loop(0, nk, k_body, (zc, zc, jnp.zeros((), F32)))
  if not want_dg:
    return
  D = qdq + intra  # [C]
  r, t = iota2((C, C), 0), iota2((C, C), 1)
  later = t >= r
  if docs is not None:
    later = later & docs.same(0, 0)
  state_term = carry_mask(docs, jnp.exp(dec.gam) * hdh)
  dg = (jnp.sum(jnp.where(later, D[None, :], 0.0), axis=1)
        + jnp.sum(jnp.where(t < r, kdk[None, :], 0.0), axis=1) + state_term)
  dg_ref[0][...] = dg


def chunk_grads(q, k, v, do, g, hs, dhs, doc, opts: KernelOptions):
  """→ dq, dk [B, T, H, K] (q.dtype), dv [B, T, H, V] and, for gate "scalar", dg [B, T, H] f32."""
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  blk = lambda D: pl.BlockSpec((None, C, None, D), lambda n, bh: (bh // H, n, bh % H, 0))
  state = pl.BlockSpec((None, None, K, V), lambda n, bh: (bh, n, 0, 0))
  in_specs = [blk(K), blk(K), blk(V), blk(V)]
  args = [q, k, v, do]
  if opts.gate != "none":
    in_specs.append(gate_chunk_spec(opts, K, lambda a: 0))
    args.append(g)
  in_specs += [state, state]
  args += [hs, dhs]
  if opts.has_seg:
    in_specs.append(pl.BlockSpec((None, T), lambda n, bh: (bh // H, 0)))
    args.append(doc)
  dt = jnp.dtype(opts.dtype)
  out_specs = [blk(K), blk(K), blk(V)]
  out_shape = [compat.pallas_out_struct((B, T, H, K), dt, q),
               compat.pallas_out_struct((B, T, H, K), dt, q),
               compat.pallas_out_struct((B, T, H, V), dt, q)]
  if opts.gate == "scalar":
    out_specs.append(pl.BlockSpec((None, C, None), lambda n, bh: (bh // H, n, bh % H)))
    out_shape.append(compat.pallas_out_struct((B, T, H), F32, q))
  return pl.pallas_call(
      functools.partial(chunk_grads_kernel, opts=opts),
      grid=(N, B * H),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=opts.compiler_params(opts.blocks.grads_warps),
      interpret=opts.interpret,
      name="simple_gla_chunk_grads",
  )(*args)
