"""Backward kernels of the Pallas Triton GLA (stages 5–7 of `chunk.py`).

  chunk_state_grad_pass  stage 5: dh leaving every chunk (reverse sweep, K and V tiled) and d initial_state
  chunk_grads_dv         stage 6, dv = Aᵀ do + (k ⊙ e^{Γ−G}) dh; one program per (V tile, chunk, b·h),
                         looping over K (A and the state term both sum over K)
  chunk_grads_dqk        stages 6–7, dq, dk and dg of one K tile; one program per (K tile, chunk, b·h),
                         looping over V (dA = do vᵀ, do hᵀ, v dhᵀ and Σ_v h ⊙ dh all sum over V)

dg keeps `chunk.py`'s three separately summed terms (no cancellation of large numbers):
* the local term dG = q ⊙ dq − k ⊙ dk_intra *without* the s = t self terms, reverse-cumsummed within the
  chunk and the document (a masked matmul at ~f32 accuracy);
* the inter dk term k ⊙ dk_inter as an *exclusive* forward cumsum (a strictly-lower masked matmul);
* the carried state e^Γ ⊙ Σ_v h ⊙ dh, the same for every row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.gla import triton_common as tc
from pallas_kernels.gla.triton_common import C, F32, KernelOptions, load, mm, mm_sum, rows
from pallas_kernels.gla.triton_fwd import doc_block, seq_block, state_tiles

pl = tc.pl


# ------------------------------------------------------------------------------------------------
# stage 5: chunk_state_grad_pass
# ------------------------------------------------------------------------------------------------


def chunk_state_grad_pass_kernel(*refs, opts: KernelOptions):
  q_ref, do_ref, g_ref, dht_ref, *rest = refs
  doc_ref = rest.pop(0) if opts.has_seg else None
  dhs_ref, dh0_ref = rest
  BK, BV = opts.blocks.state_bk, opts.blocks.state_bv

  def body(j, dh):  # dh: gradient w.r.t. the state leaving chunk n
    n = opts.N - 1 - j
    t0 = n * C
    dhs_ref[n] = dh.astype(dhs_ref.dtype)
    docs = tc.chunk_docs(doc_ref, t0, C, opts.has_seg)
    q = load(q_ref, t0, C, 0, BK) * opts.scale
    do = load(do_ref, t0, C, 0, BV)
    g = load(g_ref, t0, C, 0, BK)
    qd = rows(tc.row_in(docs, 0), q * jnp.exp(jnp.cumsum(g, axis=0)))
    return tc.carry_mask(docs, jnp.exp(jnp.sum(g, axis=0))[:, None] * dh) + mm(qd, do, opts, ta=True)

  dh = lax.fori_loop(0, opts.N, body, load(dht_ref, 0, BK, 0, BV))
  dh0_ref[...] = dh


def chunk_state_grad_pass(q, do, g, dht, doc, opts: KernelOptions):
  """→ (dhs [B·H, N, K, V]: gradient w.r.t. the state leaving each chunk, dh0 [B, H, K, V] f32)."""
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BK, BV = opts.blocks.state_bk, opts.blocks.state_bv
  kt, vt = state_tiles(opts, BK, BV)
  state = pl.BlockSpec((None, None, BK, BV), lambda i, bh: (bh // H, bh % H, kt(i, bh), vt(i, bh)))
  in_specs = [seq_block(T, BK, H, kt), seq_block(T, BV, H, vt), seq_block(T, BK, H, kt), state]
  args = [q, do, g, dht]
  if opts.has_seg:
    in_specs.append(doc_block(T, H))
    args.append(doc)
  return pl.pallas_call(
      functools.partial(chunk_state_grad_pass_kernel, opts=opts),
      grid=((K // BK) * (V // BV), B * H),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, N, BK, BV), lambda i, bh: (bh, 0, kt(i, bh), vt(i, bh))), state],
      out_shape=[jax.ShapeDtypeStruct((B * H, N, K, V), jnp.dtype(opts.state_dtype)),
                 jax.ShapeDtypeStruct((B, H, K, V), F32)],
      compiler_params=opts.compiler_params(opts.blocks.state_warps),
      interpret=opts.interpret,
      name="gla_chunk_state_grad_pass",
  )(*args)


def _pairs(ns: int):
  return [(i, j) for i in range(ns) for j in range(i + 1)]


# ------------------------------------------------------------------------------------------------
# stage 6: chunk_grads, dv
# ------------------------------------------------------------------------------------------------


def _dv_chunk_step(S: int, refs, opts: KernelOptions, t0):
  q_ref, k_ref, g_ref, do_ref, dh_ref, doc_ref, dv_ref = refs
  BK, BV = opts.blocks.dv_bk, opts.blocks.dv_bv
  ns = C // S
  mode = tc.diag_mode(opts, S)
  pairs = _pairs(ns)
  docs = tc.chunk_docs(doc_ref, t0, S, opts.has_seg)

  def k_body(kt, carry):
    A, dv = carry[:len(pairs)], carry[len(pairs):]
    c0 = kt * BK
    q = [load(q_ref, i * S, S, c0, BK) * opts.scale for i in range(ns)]
    k = [load(k_ref, i * S, S, c0, BK) for i in range(ns)]
    tg = tc.tile_gates(g_ref, 0, S, c0, BK)
    A_next = []
    for p, (i, j) in enumerate(pairs):
      if i > j:
        blk = tc.off_block(q[i], k[j], tg.G[i], tg.Gn[i], tg.G[j], opts)
      else:
        blk = tc.diag_A(mode, i, q, k, tg, (q_ref, k_ref, g_ref), 0, c0, BK, opts)
      A_next.append(A[p] + blk)
    dh = load(dh_ref, c0, BK, 0, BV)
    dv_next = [dv[j] + mm(rows(tc.row_out(docs, j), k[j] * jnp.exp(tg.gam_row - tg.G[j])), dh, opts)
               for j in range(ns)]
    return tuple(A_next) + tuple(dv_next)

  init = tuple(jnp.zeros((S, S), F32) for _ in pairs) + tuple(jnp.zeros((S, BV), F32)
                                                               for _ in range(ns))
  carry = lax.fori_loop(0, opts.K // BK, k_body, init)
  A = dict(zip(pairs, carry[:len(pairs)]))
  dv = list(carry[len(pairs):])
  do = [load(do_ref, i * S, S, 0, BV) for i in range(ns)]
  for j in range(ns):
    for i in range(j, ns):
      a = tc.masked(tc.block_mask(docs, i, j, S), A[i, j])
      dv[j] = dv[j] + mm(a, do[i], opts, ta=True)
    dv_ref[pl.ds(j * S, S), :] = dv[j].astype(dv_ref.dtype)


def chunk_grads_dv_kernel(*refs, opts: KernelOptions):
  q_ref, k_ref, g_ref, do_ref, dh_ref, *rest = refs
  doc_ref = rest.pop(0) if opts.has_seg else None
  (dv_ref,) = rest
  t0 = pl.program_id(1) * C
  step_refs = (q_ref, k_ref, g_ref, do_ref, dh_ref, doc_ref, dv_ref)
  span = tc.chunk_span(g_ref, 0, opts.K, opts.blocks.dv_bk) if opts.path == "auto" else None
  tc.choose_path(opts, span, functools.partial(_dv_chunk_step, C, step_refs, opts, t0),
                 functools.partial(_dv_chunk_step, tc.S_FINE, step_refs, opts, t0))


def chunk_block(D: int, H: int, tile_of):
  """BlockSpec of one chunk of one (b, h) of a [B, T, H, D] array; grid = (tiles, N, B·H)."""
  return pl.BlockSpec((None, C, None, D), lambda j, n, bh: (bh // H, n, bh % H, tile_of(j)))


def chunk_doc_block(T: int, H: int):
  return pl.BlockSpec((None, T), lambda j, n, bh: (bh // H, 0))


def chunk_grads_dv(q, k, g, do, dhs, doc, opts: KernelOptions):
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BV = opts.blocks.dv_bv
  full, tile = (lambda j: 0), (lambda j: j)
  in_specs = [chunk_block(K, H, full), chunk_block(K, H, full), chunk_block(K, H, full),
              chunk_block(BV, H, tile),
              pl.BlockSpec((None, None, K, BV), lambda j, n, bh: (bh, n, 0, j))]
  args = [q, k, g, do, dhs]
  if opts.has_seg:
    in_specs.append(chunk_doc_block(T, H))
    args.append(doc)
  return pl.pallas_call(
      functools.partial(chunk_grads_dv_kernel, opts=opts),
      grid=(V // BV, N, B * H),
      in_specs=in_specs,
      out_specs=chunk_block(BV, H, tile),
      out_shape=jax.ShapeDtypeStruct((B, T, H, V), jnp.dtype(opts.dtype)),
      compiler_params=opts.compiler_params(opts.blocks.dv_warps),
      interpret=opts.interpret,
      name="gla_chunk_grads_dv",
  )(*args)


# ------------------------------------------------------------------------------------------------
# stages 6–7: chunk_grads (dq, dk) and chunk_gate_grad (dg)
# ------------------------------------------------------------------------------------------------


def _diag_grads(mode, dA, q, k, G, Gn, Gl, opts):
  """Intra-sub-chunk dq, dk of one diagonal block from dA (already strictly causal)."""

  def fast():
    up, down = jnp.exp(G - Gn), jnp.exp(Gn - G)
    return (mm(dA, k * down, opts) * up, mm(dA, q * up, opts, ta=True) * down)

  def exact():
    S, W = q.shape
    tri = tc._tri3(S, W, strict=True)
    E = jnp.exp(jnp.where(tri, G[:, None, :] - G[None, :, :], -jnp.inf))  # [t, s, d]
    dq = jnp.sum(dA[:, :, None] * k[None, :, :] * E, axis=1)
    dk = jnp.sum(dA[:, :, None] * q[:, None, :] * E, axis=0)
    return dq, dk

  if mode == "fast":
    return fast()
  if mode == "exact":
    return exact()
  return lax.cond(jnp.max(Gn - Gl) < opts.threshold, fast, exact)


def _dqk_chunk_step(S: int, refs, opts: KernelOptions, t0):
  q_ref, k_ref, g_ref, v_ref, do_ref, h_ref, dh_ref, doc_ref, dq_ref, dk_ref, dg_ref = refs
  BK, BV = opts.blocks.dqk_bk, opts.blocks.dqk_bv
  ns = C // S
  mode = tc.diag_mode(opts, S)
  pairs = _pairs(ns)
  P = len(pairs)
  docs = tc.chunk_docs(doc_ref, t0, S, opts.has_seg)

  def v_body(vt, carry):
    dA, dqi, dki, hdh = carry[:P], carry[P:P + ns], carry[P + ns:P + 2 * ns], carry[-1]
    c0 = vt * BV
    do = [load(do_ref, i * S, S, c0, BV) for i in range(ns)]
    v = [load(v_ref, i * S, S, c0, BV) for i in range(ns)]
    h = load(h_ref, 0, BK, c0, BV)
    dh = load(dh_ref, 0, BK, c0, BV)
    dA = [dA[p] + mm(do[i], v[j], opts, tb=True) for p, (i, j) in enumerate(pairs)]
    dqi = [dqi[i] + mm(do[i], h, opts, tb=True) for i in range(ns)]
    dki = [dki[i] + mm(v[i], dh, opts, tb=True) for i in range(ns)]
    return (*dA, *dqi, *dki, hdh + jnp.sum(h * dh, axis=1))

  zeros = lambda *s: jnp.zeros(s, F32)
  init = (*(zeros(S, S) for _ in pairs), *(zeros(S, BK) for _ in range(2 * ns)), zeros(BK))
  carry = lax.fori_loop(0, opts.V // BV, v_body, init)
  dA = dict(zip(pairs, carry[:P]))
  dq_inter, dk_inter, hdh = carry[P:P + ns], carry[P + ns:P + 2 * ns], carry[-1]

  q = [load(q_ref, i * S, S, 0, BK) * opts.scale for i in range(ns)]
  k = [load(k_ref, i * S, S, 0, BK) for i in range(ns)]
  tg = tc.tile_gates(g_ref, 0, S, 0, BK)
  eye = tc.iota2((S, S), 0) == tc.iota2((S, S), 1)
  # inter terms: dq = (do hᵀ) ⊙ e^G on rows reading h; dk = (v dhᵀ) ⊙ e^{Γ−G} on keys feeding h'
  dq = [rows(tc.row_in(docs, i), dq_inter[i] * jnp.exp(tg.G[i])) for i in range(ns)]
  dk_out = [rows(tc.row_out(docs, i), dk_inter[i] * jnp.exp(tg.gam_row - tg.G[i])) for i in range(ns)]
  # intra terms without the s = t self terms (two-level, like chunk_intra_attention)
  dq_intra = [zeros(S, BK) for _ in range(ns)]
  dk_intra = [zeros(S, BK) for _ in range(ns)]
  for i, j in pairs:
    a = tc.masked(tc.block_mask(docs, i, j, S, strict=True), dA[i, j])
    if i > j:
      up = jnp.exp(tg.G[i] - tg.Gn[i])
      dq_intra[i] = dq_intra[i] + mm(a, k[j] * jnp.exp(tg.Gn[i] - tg.G[j]), opts) * up
      dk_intra[j] = dk_intra[j] + mm(a, q[i] * up, opts, ta=True) * jnp.exp(tg.Gn[i] - tg.G[j])
    else:
      dqd, dkd = _diag_grads(mode, a, q[i], k[i], tg.G[i], tg.Gn[i], tg.Gl[i], opts)
      dq_intra[i] = dq_intra[i] + dqd
      dk_intra[i] = dk_intra[i] + dkd
  # stage 7: dg = revcumsum_doc(dG) + excl_cumsum(k ⊙ dk_inter) + e^Γ ⊙ Σ_v h ⊙ dh
  dG = [q[i] * (dq[i] + dq_intra[i]) - k[i] * dk_intra[i] for i in range(ns)]
  x = [k[i] * dk_out[i] for i in range(ns)]
  state_term = tc.carry_mask(docs, jnp.exp(tg.gam) * hdh)[None, :]
  later = tc.iota2((S, S), 1) >= tc.iota2((S, S), 0)  # [r, t]: t ≥ r
  earlier = tc.causal(S, strict=True)  # [r, s]: s < r
  for i in range(ns):
    m = later if docs is None else (later & docs.same(i, i))
    dg = state_term + mm_sum(m, dG[i], opts) + mm_sum(earlier, x[i], opts)
    for j in range(i + 1, ns):
      if docs is None:
        dg = dg + jnp.sum(dG[j], axis=0, keepdims=True)
      else:
        dg = dg + mm_sum(docs.same(i, j), dG[j], opts)
    for j in range(i):
      dg = dg + jnp.sum(x[j], axis=0, keepdims=True)
    self_i = jnp.sum(jnp.where(eye, dA[i, i], 0.0), axis=1)[:, None]  # dA_tt
    dq_i = (dq[i] + dq_intra[i] + self_i * k[i]) * opts.scale
    dk_i = dk_out[i] + dk_intra[i] + self_i * q[i]
    dq_ref[pl.ds(i * S, S), :] = dq_i.astype(dq_ref.dtype)
    dk_ref[pl.ds(i * S, S), :] = dk_i.astype(dk_ref.dtype)
    dg_ref[pl.ds(i * S, S), :] = dg.astype(dg_ref.dtype)


def chunk_grads_dqk_kernel(*refs, opts: KernelOptions):
  q_ref, k_ref, g_ref, v_ref, do_ref, h_ref, dh_ref, *rest = refs
  doc_ref = rest.pop(0) if opts.has_seg else None
  dq_ref, dk_ref, dg_ref = rest
  t0 = pl.program_id(1) * C
  step_refs = (q_ref, k_ref, g_ref, v_ref, do_ref, h_ref, dh_ref, doc_ref, dq_ref, dk_ref, dg_ref)
  BK = opts.blocks.dqk_bk
  span = tc.chunk_span(g_ref, 0, BK, BK) if opts.path == "auto" else None
  tc.choose_path(opts, span, functools.partial(_dqk_chunk_step, C, step_refs, opts, t0),
                 functools.partial(_dqk_chunk_step, tc.S_FINE, step_refs, opts, t0))


def chunk_grads_dqk(q, k, g, v, do, hs, dhs, doc, opts: KernelOptions):
  """→ dq, dk [B, T, H, K] (q.dtype), dg [B, T, H, K] (g.dtype)."""
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BK = opts.blocks.dqk_bk
  full, tile = (lambda j: 0), (lambda j: j)
  state = pl.BlockSpec((None, None, BK, V), lambda j, n, bh: (bh, n, j, 0))
  in_specs = [chunk_block(BK, H, tile), chunk_block(BK, H, tile), chunk_block(BK, H, tile),
              chunk_block(V, H, full), chunk_block(V, H, full), state, state]
  args = [q, k, g, v, do, hs, dhs]
  if opts.has_seg:
    in_specs.append(chunk_doc_block(T, H))
    args.append(doc)
  out = chunk_block(BK, H, tile)
  return pl.pallas_call(
      functools.partial(chunk_grads_dqk_kernel, opts=opts),
      grid=(K // BK, N, B * H),
      in_specs=in_specs,
      out_specs=[out, out, out],
      out_shape=[jax.ShapeDtypeStruct((B, T, H, K), jnp.dtype(opts.dtype)),
                 jax.ShapeDtypeStruct((B, T, H, K), jnp.dtype(opts.dtype)),
                 jax.ShapeDtypeStruct((B, T, H, K), jnp.dtype(opts.g_dtype))],
      compiler_params=opts.compiler_params(opts.blocks.dqk_warps),
      interpret=opts.interpret,
      name="gla_chunk_grads_dqk",
  )(*args)
