"""Backward kernels of the Pallas Triton GLA (stages 5–7 of `chunk.py`).

  chunk_state_grad_pass  stage 5: dh leaving every chunk (reverse sweep, K and V tiled) and d initial_state
  chunk_grads            stages 6–7 for one chunk per program (chunk, b·h), all of K and V: A (a sum
                         over K) once, then dv = Aᵀ do + (k ⊙ e^{Γ−G}) dh per V tile; dA = do vᵀ (a sum
                         over V) once, then dq, dk and dg per K tile with the sums do hᵀ, v dhᵀ,
                         Σ_v h ⊙ dh. Every input is read once per chunk and A, dA are formed once.

dg keeps `chunk.py`'s three separately summed terms (no cancellation of large numbers):
* the local term dG = q ⊙ dq − k ⊙ dk_intra *without* the s = t self terms, reverse-cumsummed within the
  chunk and the document (a masked matmul at ~f32 accuracy);
* the inter dk term k ⊙ dk_inter as an *exclusive* forward cumsum (a strictly-lower masked matmul);
* the carried state e^Γ ⊙ Σ_v h ⊙ dh, the same for every row.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from pallas_kernels import compat
from pallas_kernels.common.triton import state as shared_state
from pallas_kernels.gla.triton import common as tc
from pallas_kernels.gla.triton.common import C, F32, KernelOptions, load, mm, mm_sum, rows

pl = tc.pl


# ------------------------------------------------------------------------------------------------
# stage 5: chunk_state_grad_pass
# ------------------------------------------------------------------------------------------------


def chunk_state_grad_pass(q, do, g, dht, doc, opts: KernelOptions):
  """→ (dhs [B·H, N, K, V]: gradient w.r.t. the state leaving each chunk, dh0 [B, H, K, V] f32).
  The shared kernel of pallas_kernels/common/triton/state.py with the per-key gate (sequential, or
  with `blocks.state_scan` the two-phase scan)."""
  return shared_state.chunk_state_grad_pass(q, do, g, dht, doc, opts)


# ------------------------------------------------------------------------------------------------
# stage 6: chunk_grads, dv
# ------------------------------------------------------------------------------------------------


def _sub_docs(doc_ref, t0, u, has_seg):
  return doc_ref[pl.ds(t0 + u * tc.S_FINE, tc.S_FINE)] if has_seg else None


def _dv_two_level(refs, opts: KernelOptions, t0, cv=0):
  """dv of one chunk with 16-row sub-chunks: for each key sub-chunk j, the state term, the diagonal
  block and the blocks A_ij (i > j) of later query sub-chunks, each summed over K. do, dh and dv are
  read / written at column cv (a dv_bv-wide V tile)."""
  q_ref, k_ref, g_ref, do_ref, dh_ref, doc_ref, dv_ref = refs
  BK, BV = opts.blocks.dv_bk, opts.blocks.dv_bv
  S, nk = tc.S_FINE, opts.K // BK
  docs = tc.chunk_docs(doc_ref, t0, C, opts.has_seg)  # for prev / last
  mode = tc.fine_mode(opts)

  def j_body(j, _):
    rj = j * S
    dj = _sub_docs(doc_ref, t0, j, opts.has_seg)
    out_j = None if docs is None else (dj == docs.last)[:, None]

    def k_body(kt, carry):
      dv, A = carry
      c0 = kt * BK
      gt = tc.sub_gates(g_ref, j, c0, BK)
      q = load(q_ref, rj, S, c0, BK) * opts.scale
      k = load(k_ref, rj, S, c0, BK)
      dv = dv + mm(rows(out_j, k * jnp.exp(gt.gam_row - gt.G)), load(dh_ref, c0, BK, cv, BV), opts)
      return dv, A + tc.diag_A(mode, q, k, gt, (q_ref, k_ref, g_ref), rj, c0, BK, opts)

    dv, A = lax.fori_loop(0, nk, k_body, (jnp.zeros((S, BV), F32), jnp.zeros((S, S), F32)))
    m = tc.causal(S) if docs is None else (tc.causal(S) & (dj[:, None] == dj[None, :]))
    dv = dv + mm(tc.masked(m, A), load(do_ref, rj, S, cv, BV), opts, ta=True)

    def i_body(i, dv):  # query sub-chunk i > j
      ri = i * S

      def k_body2(kt, A):
        c0 = kt * BK
        gi, gj = tc.sub_gates(g_ref, i, c0, BK), tc.sub_gates(g_ref, j, c0, BK)
        qi = load(q_ref, ri, S, c0, BK) * opts.scale
        return A + tc.off_block(qi, load(k_ref, rj, S, c0, BK), gi.G, gi.Gn, gj.G, opts)

      A = lax.fori_loop(0, nk, k_body2, jnp.zeros((S, S), F32))
      if docs is not None:
        A = jnp.where(_sub_docs(doc_ref, t0, i, True)[:, None] == dj[None, :], A, 0.0)
      return dv + mm(A, load(do_ref, ri, S, cv, BV), opts, ta=True)

    dv = lax.fori_loop(j + 1, C // S, i_body, dv)
    dv_ref[pl.ds(rj, S), pl.ds(cv, BV)] = dv.astype(dv_ref.dtype)
    return 0

  lax.fori_loop(0, C // S, j_body, 0)


# ------------------------------------------------------------------------------------------------
# stages 6–7: chunk_grads (dq, dk) and chunk_gate_grad (dg)
# ------------------------------------------------------------------------------------------------


def _diag_grads(mode, dA, q, k, gt, opts, tf32: bool = True):
  """Intra-block dq, dk (without the s = t terms) of one diagonal block from dA (strictly causal,
  same-document entries only). With `tf32` the one-matmul form takes float32 operands (TF32 on the GPU)
  instead of bf16: the rounding of dA and of the rescaled keys/queries reaches dg through its
  q ⊙ dq − k ⊙ dk difference. Two-level blocks always use it (H100, bf16, logsigmoid(randn) gates: dg
  error 1.0e-2 → 2.7e-3); dense chunks only with `blocks.dense_diag_tf32` (dg 4.2e-3 → 1.4e-3, +8–12 %
  time)."""
  dt = F32 if tf32 else None

  def fast():  # dA and the rescaled q, k as TF32 rather than bf16 operands: dg cancels q·dq − k·dk
    up, down = jnp.exp(gt.G - gt.Gn), jnp.exp(gt.Gn - gt.G)
    return mm(dA, k * down, opts, dtype=dt) * up, mm(dA, q * up, opts, ta=True, dtype=dt) * down

  def exact():
    S, W = q.shape
    tri = tc._tri3(S, W, strict=True)
    E = jnp.exp(jnp.where(tri, gt.G[:, None, :] - gt.G[None, :, :], -jnp.inf))  # [t, s, d]
    return (jnp.sum(dA[:, :, None] * k[None, :, :] * E, axis=1),
            jnp.sum(dA[:, :, None] * q[:, None, :] * E, axis=0))

  if mode == "fast":
    return fast()
  if mode == "exact":
    return exact()
  return lax.cond(jnp.max(gt.Gn - gt.Gl) < opts.threshold, fast, exact)


def _dqk_v_loop(refs, opts, r0, R: int, ck=0, BK: int | None = None, BV: int | None = None,
                with_dA: bool = True):
  """Σ over V tiles for the R rows from r0: dA = do vᵀ [R, R] (None unless `with_dA`), do hᵀ, v dhᵀ
  [R, BK], Σ_v h ⊙ dh [BK] (h, dh rows ck .. ck + BK − 1)."""
  v_ref, do_ref, h_ref, dh_ref = refs
  BK, BV = BK or opts.blocks.dqk_bk, BV or opts.blocks.dqk_bv

  def body(vt, carry):
    dA, dqi, dki, hdh = carry
    c0 = vt * BV
    do, v = load(do_ref, r0, R, c0, BV), load(v_ref, r0, R, c0, BV)
    h, dh = load(h_ref, ck, BK, c0, BV), load(dh_ref, ck, BK, c0, BV)
    if with_dA:
      dA = dA + mm(do, v, opts, tb=True)
    return (dA, dqi + mm(do, h, opts, tb=True), dki + mm(v, dh, opts, tb=True),
            hdh + jnp.sum(h * dh, axis=1))

  z = lambda *s: jnp.zeros(s, F32)
  init = (z(R, R) if with_dA else None, z(R, BK), z(R, BK), z(BK))
  return lax.fori_loop(0, opts.V // BV, body, init)


def _store_dqk(refs, r0, R, opts, dq, dk, dg, ck=0):
  dq_ref, dk_ref, dg_ref = refs
  W = dq.shape[1]
  dq_ref[pl.ds(r0, R), pl.ds(ck, W)] = (dq * opts.scale).astype(dq_ref.dtype)
  dk_ref[pl.ds(r0, R), pl.ds(ck, W)] = dk.astype(dk_ref.dtype)
  dg_ref[pl.ds(r0, R), pl.ds(ck, W)] = dg.astype(dg_ref.dtype)


def _self_terms(dA):
  """dA_tt as an [R, 1] column."""
  R = dA.shape[0]
  return jnp.sum(jnp.where(tc.iota2((R, R), 0) == tc.iota2((R, R), 1), dA, 0.0), axis=1)[:, None]


def _dqk_finish(docs, dA, q, k, gt, dq_inter, dk_inter, hdh, opts):
  """Stages 6–7 of one dense chunk and K tile once the V sums are done: dA = do vᵀ (unmasked) [C, C],
  q (scaled), k, gates and the inter sums [C, W]. Returns dq (w.r.t. the scaled q), dk, dg."""
  # stage 6: inter terms on the rows reading h / keys feeding h'; intra terms without s = t
  dq = rows(tc.row_in(docs, 0), dq_inter * jnp.exp(gt.G))
  dk = rows(tc.row_out(docs, 0), dk_inter * jnp.exp(gt.gam_row - gt.G))
  a = tc.masked(tc.block_mask(docs, 0, 0, C, strict=True), dA)
  dq_intra, dk_intra = _diag_grads("fast", a, q, k, gt, opts, tf32=opts.blocks.dense_diag_tf32)
  # stage 7: dg = revcumsum_doc(dG) + exclusive cumsum(k ⊙ dk_inter) + e^Γ ⊙ Σ_v h ⊙ dh
  dG = q * (dq + dq_intra) - k * dk_intra
  later = tc.iota2((C, C), 1) >= tc.iota2((C, C), 0)  # [r, t]: t ≥ r
  if docs is not None:
    later = later & docs.same(0, 0)
  dg = (tc.carry_mask(docs, jnp.exp(gt.gam) * hdh)[None, :] + mm_sum(later, dG, opts)
        + mm_sum(tc.causal(C, strict=True), k * dk, opts))
  self_ = _self_terms(dA)
  return dq + dq_intra + self_ * k, dk + dk_intra + self_ * q, dg


def _dqk_two_level(refs, opts: KernelOptions, t0, ck=0):
  """dq, dk, dg of one K tile (columns ck .. ck + dqk_bk − 1) of one chunk with 16-row sub-chunks, last
  sub-chunk first: dg's reverse cumsum over later sub-chunks is carried as a column sum restricted to
  the current document."""
  q_ref, k_ref, g_ref, v_ref, do_ref, h_ref, dh_ref, doc_ref, *out_refs = refs
  BK, BV = opts.blocks.dqk_bk, opts.blocks.dqk_bv
  S, ns, nv = tc.S_FINE, C // tc.S_FINE, opts.V // opts.blocks.dqk_bv
  mode = tc.fine_mode(opts)
  docs = tc.chunk_docs(doc_ref, t0, C, opts.has_seg)  # chunk-level prev / last
  vrefs = (v_ref, do_ref, h_ref, dh_ref)
  # chunk-wide terms that need no sub-chunking (all exponents ≤ 0): x = k ⊙ dk_inter, Σ_v h ⊙ dh
  _, _, dk_inter, hdh = _dqk_v_loop(vrefs, opts, 0, C, ck, with_dA=False)
  gc = tc.block_gates(g_ref, 0, C, ck, BK)
  x_chunk = load(k_ref, 0, C, ck, BK) * rows(tc.row_out(docs, 0),
                                            dk_inter * jnp.exp(gc.gam_row - gc.G))
  state_term = tc.carry_mask(docs, jnp.exp(gc.gam) * hdh)[None, :]
  earlier = tc.causal(S, strict=True)
  later = tc.iota2((S, S), 1) >= tc.iota2((S, S), 0)

  def dA_block(i, j):  # do_i v_jᵀ summed over V
    def body(vt, acc):
      c0 = vt * BV
      return acc + mm(load(do_ref, i * S, S, c0, BV), load(v_ref, j * S, S, c0, BV), opts, tb=True)
    return lax.fori_loop(0, nv, body, jnp.zeros((S, S), F32))

  def same(di, dj, a):
    return a if docs is None else jnp.where(di[:, None] == dj[None, :], a, 0.0)

  def i_body(u, carry):
    acc, dG_next, d_next, last_next = carry
    i = ns - 1 - u
    ri = i * S
    di = _sub_docs(doc_ref, t0, i, opts.has_seg)
    gt = tc.sub_gates(g_ref, i, ck, BK)
    q = load(q_ref, ri, S, ck, BK) * opts.scale
    k = load(k_ref, ri, S, ck, BK)
    dA, dq_inter, dk_inter, _ = _dqk_v_loop(vrefs, opts, ri, S, ck)
    dq = rows(None if docs is None else (di == docs.prev)[:, None], dq_inter * jnp.exp(gt.G))
    dk = rows(None if docs is None else (di == docs.last)[:, None],
              dk_inter * jnp.exp(gt.gam_row - gt.G))
    a = same(di, di, jnp.where(earlier, dA, 0.0))
    dq_intra, dk_intra = _diag_grads(mode, a, q, k, gt, opts)

    def dq_body(j, acc_q):  # key sub-chunk j < i
      gj = tc.sub_gates(g_ref, j, ck, BK)
      kf = load(k_ref, j * S, S, ck, BK) * jnp.exp(gt.Gn - gj.G)
      dj = _sub_docs(doc_ref, t0, j, opts.has_seg)
      return acc_q + mm(same(di, dj, dA_block(i, j)), kf, opts)

    dq_intra = dq_intra + lax.fori_loop(0, i, dq_body, jnp.zeros((S, BK), F32)) * jnp.exp(gt.G - gt.Gn)

    def dk_body(l, acc_k):  # query sub-chunk l > i
      gl = tc.sub_gates(g_ref, l, ck, BK)
      qf = load(q_ref, l * S, S, ck, BK) * opts.scale * jnp.exp(gl.G - gl.Gn)
      dl = _sub_docs(doc_ref, t0, l, opts.has_seg)
      return acc_k + mm(same(dl, di, dA_block(l, i)), qf, opts, ta=True) * jnp.exp(gl.Gn - gt.G)

    dk_intra = dk_intra + lax.fori_loop(i + 1, ns, dk_body, jnp.zeros((S, BK), F32))
    dG = q * (dq + dq_intra) - k * dk_intra
    # Σ of dG over later sub-chunks in the document of this sub-chunk's last row
    if docs is None:
      acc = acc + jnp.sum(dG_next, axis=0, keepdims=True)
      cross = acc
      last = None
    else:
      last = doc_ref[t0 + ri + S - 1]
      acc = (jnp.sum(jnp.where((d_next == last)[:, None], dG_next, 0.0), axis=0, keepdims=True)
             + jnp.where(last_next == last, acc, 0.0))
      cross = jnp.where((di == last)[:, None], acc, 0.0)
      m = later & (di[:, None] == di[None, :])
    before = jnp.sum(jnp.where(tc.iota2((C, BK), 0) < ri, x_chunk, 0.0), axis=0, keepdims=True)
    dg = (state_term + cross + before + mm_sum(later if docs is None else m, dG, opts)
          + mm_sum(earlier, k * dk, opts))
    self_ = _self_terms(dA)
    _store_dqk(out_refs, ri, S, opts, dq + dq_intra + self_ * k, dk + dk_intra + self_ * q, dg, ck)
    if docs is None:
      return acc, dG, d_next, last_next
    return acc, dG, di, last

  d0 = jnp.zeros((S,), jnp.int32) if docs is None else _sub_docs(doc_ref, t0, ns - 1, True)
  last0 = jnp.zeros((), jnp.int32)
  lax.fori_loop(0, ns, i_body, (jnp.zeros((1, BK), F32), jnp.zeros((S, BK), F32), d0, last0))


# ------------------------------------------------------------------------------------------------
# stages 6–7 in one kernel: chunk_grads (dv, dq, dk) and chunk_gate_grad (dg)
# ------------------------------------------------------------------------------------------------


def _grads_dense(refs, opts: KernelOptions, t0):
  """All gradients of one chunk as one dense block: A (over K) once, dv per V tile; then dA = do vᵀ
  (over V) once, dq, dk, dg per K tile. Only one of the [C, C] blocks is alive at a time."""
  q_ref, k_ref, g_ref, v_ref, do_ref, h_ref, dh_ref, doc_ref, dq_ref, dk_ref, dg_ref, dv_ref = refs
  BK, BV = opts.blocks.grads_bk, opts.blocks.grads_bv
  nk, nv = opts.K // BK, opts.V // BV
  docs = tc.chunk_docs(doc_ref, t0, C, opts.has_seg)

  def a_body(kt, A):  # stage 3 again
    c0 = kt * BK
    gt = tc.block_gates(g_ref, 0, C, c0, BK)
    return A + tc.diag_block_fast(load(q_ref, 0, C, c0, BK) * opts.scale, load(k_ref, 0, C, c0, BK),
                                  gt.G, gt.Gn, opts)

  A = tc.masked(tc.block_mask(docs, 0, 0, C), lax.fori_loop(0, nk, a_body, jnp.zeros((C, C), F32)))

  def dv_body(vt, _):  # dv = Aᵀ do + (k ⊙ e^{Γ−G}) dh
    cv = vt * BV

    def k_body(kt, acc):
      c0 = kt * BK
      gt = tc.block_gates(g_ref, 0, C, c0, BK)
      kd = rows(tc.row_out(docs, 0), load(k_ref, 0, C, c0, BK) * jnp.exp(gt.gam_row - gt.G))
      return acc + mm(kd, load(dh_ref, c0, BK, cv, BV), opts)

    acc = lax.fori_loop(0, nk, k_body, mm(A, load(do_ref, 0, C, cv, BV), opts, ta=True))
    dv_ref[:, pl.ds(cv, BV)] = acc.astype(dv_ref.dtype)
    return 0

  lax.fori_loop(0, nv, dv_body, 0)

  def da_body(vt, dA):
    c0 = vt * BV
    return dA + mm(load(do_ref, 0, C, c0, BV), load(v_ref, 0, C, c0, BV), opts, tb=True)

  dA = lax.fori_loop(0, nv, da_body, jnp.zeros((C, C), F32))

  BKq = opts.blocks.dqk_bk  # narrower K tiles here: many [C, BKq] temporaries are alive at once

  def dqk_body(kt, _):
    ck = kt * BKq
    _, dq_inter, dk_inter, hdh = _dqk_v_loop((v_ref, do_ref, h_ref, dh_ref), opts, 0, C, ck, BKq, BV,
                                              with_dA=False)
    q = load(q_ref, 0, C, ck, BKq) * opts.scale
    k = load(k_ref, 0, C, ck, BKq)
    gt = tc.block_gates(g_ref, 0, C, ck, BKq)
    _store_dqk((dq_ref, dk_ref, dg_ref), 0, C, opts,
               *_dqk_finish(docs, dA, q, k, gt, dq_inter, dk_inter, hdh, opts), ck)
    return 0

  lax.fori_loop(0, opts.K // BKq, dqk_body, 0)


def _grads_two_level(refs, opts: KernelOptions, t0):
  q_ref, k_ref, g_ref, v_ref, do_ref, h_ref, dh_ref, doc_ref, dq_ref, dk_ref, dg_ref, dv_ref = refs
  dv_refs = (q_ref, k_ref, g_ref, do_ref, dh_ref, doc_ref, dv_ref)
  lax.fori_loop(0, opts.V // opts.blocks.dv_bv,
                lambda vt, _: _dv_two_level(dv_refs, opts, t0, vt * opts.blocks.dv_bv) or 0, 0)
  lax.fori_loop(0, opts.K // opts.blocks.dqk_bk,
                lambda kt, _: _dqk_two_level(refs[:-1], opts, t0, kt * opts.blocks.dqk_bk) or 0, 0)


def chunk_grads_kernel(*refs, opts: KernelOptions):
  q_ref, k_ref, g_ref, v_ref, do_ref, h_ref, dh_ref, *rest = refs
  doc_ref = rest.pop(0) if opts.has_seg else None
  step_refs = (q_ref, k_ref, g_ref, v_ref, do_ref, h_ref, dh_ref, doc_ref, *rest)
  t0 = pl.program_id(0) * C
  span = tc.chunk_span(g_ref, 0, opts.K, opts.blocks.grads_bk) if opts.path == "auto" else None
  tc.choose_path(opts, span, functools.partial(_grads_dense, step_refs, opts, t0),
                 functools.partial(_grads_two_level, step_refs, opts, t0))


def chunk_grads(q, k, g, v, do, hs, dhs, doc, opts: KernelOptions):
  """→ dq, dk [B, T, H, K] (q.dtype), dg (g.dtype), dv [B, T, H, V]; one program per (chunk, b·h)."""
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  blk = lambda D: pl.BlockSpec((None, C, None, D), lambda n, bh: (bh // H, n, bh % H, 0))
  state = pl.BlockSpec((None, None, K, V), lambda n, bh: (bh, n, 0, 0))
  in_specs = [blk(K), blk(K), blk(K), blk(V), blk(V), state, state]
  args = [q, k, g, v, do, hs, dhs]
  if opts.has_seg:
    in_specs.append(pl.BlockSpec((None, T), lambda n, bh: (bh // H, 0)))
    args.append(doc)
  return pl.pallas_call(
      functools.partial(chunk_grads_kernel, opts=opts),
      grid=(N, B * H),
      in_specs=in_specs,
      out_specs=[blk(K), blk(K), blk(K), blk(V)],
      out_shape=[compat.pallas_out_struct((B, T, H, K), jnp.dtype(opts.dtype), q),
                 compat.pallas_out_struct((B, T, H, K), jnp.dtype(opts.dtype), q),
                 compat.pallas_out_struct((B, T, H, K), jnp.dtype(opts.g_dtype), q),
                 compat.pallas_out_struct((B, T, H, V), jnp.dtype(opts.dtype), q)],
      compiler_params=opts.compiler_params(opts.blocks.grads_warps),
      interpret=opts.interpret,
      name="gla_chunk_grads",
  )(*args)
