"""Forward kernels of the Pallas Triton GLA, and the state pass the backward reruns.

  chunk_fwd          stages 1–4 of `chunk.py` fused: one program per (V tile, batch·head) walks the chunks
                     in order, keeps h [K, BV] in registers and writes o (and the final state). No state
                     goes to HBM: the forward reads q, k, v, g once per V tile and writes o. Its chunk loop
                     has no branch (so Triton pipelines the loads): every chunk takes the dense form, and
                     the chunks whose decay span is too large for it are flagged and left to
  chunk_intra_fixup  stages 3–4 intra part, two-level, for the flagged chunks only (o += A v in place).
  chunk_state_pass   stage 2 alone (with stage 1): h entering every chunk, [B·H, N, K, V], for the
                     backward (and for the sequence-parallel forward, with the final state).
  chunk_output       stages 3–4 for all chunks in parallel from those states: the forward for long
                     sequences with few batch·heads, where chunk_fwd's sequential chain is too long.

Layout: the kernels read the public [B, T, H, D] arrays in place (a block is a strided [T, D] view of
one (b, h)), with T padded to a multiple of 64 and K, V padded by `triton.py`.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from pallas_kernels import compat
from pallas_kernels.common.triton import state as shared_state
from pallas_kernels.common.triton.tiles import doc_block, seq_block, state_tiles  # noqa: F401
from pallas_kernels.gla.triton import common as tc
from pallas_kernels.gla.triton.common import C, F32, KernelOptions, load, mm, rows

pl = tc.pl


# ------------------------------------------------------------------------------------------------
# chunk_fwd: stages 1–4, fused
# ------------------------------------------------------------------------------------------------


def _fwd_step(refs, opts: KernelOptions, t0, h, dense_ok, doc_t0=None, BV=None):
  """Stages 1–4 for the chunk at row t0 as one dense block: stores o, returns the next state (a tuple of
  [BK, BV] tiles in registers). Where `dense_ok` is False the intra part is left out (o = (q ⊙ e^G) h
  only) and `chunk_intra_fixup` adds it later; the state update and the inter part are always exact
  (all their exponents are ≤ 0). refs = (q, k, v, g, doc, o) refs with the chunk at row t0; the doc
  index is read at row doc_t0 (default t0)."""
  q_ref, k_ref, v_ref, g_ref, doc_ref, o_ref = refs
  BK, BV = opts.blocks.fwd_bk, BV or opts.blocks.fwd_bv
  docs = tc.chunk_docs(doc_ref, t0 if doc_t0 is None else doc_t0, C, opts.has_seg)
  v = load(v_ref, t0, C, 0, BV)
  o = jnp.zeros((C, BV), F32)
  A = jnp.zeros((C, C), F32)
  h_next = []
  for kt, h_kt in enumerate(h):
    c0 = kt * BK
    q = load(q_ref, t0, C, c0, BK) * opts.scale
    k = load(k_ref, t0, C, c0, BK)
    gt = tc.block_gates(g_ref, t0, C, c0, BK)  # stage 1
    # stage 4, inter part: (q ⊙ e^G) h on the rows still in the carried document
    o = o + mm(rows(tc.row_in(docs, 0), q * jnp.exp(gt.G)), h_kt, opts)
    # stage 3: A on this K tile, one matmul with row 0 as reference (factors ≤ e^span)
    A = A + tc.diag_block_fast(q, k, gt.G, gt.Gn, opts)
    # stage 2: h' = diag(e^Γ) h + (k ⊙ e^{Γ−G})ᵀ v over the keys of the chunk's last document
    kd = rows(tc.row_out(docs, 0), k * jnp.exp(gt.gam_row - gt.G))
    h_next.append(tc.carry_mask(docs, jnp.exp(gt.gam_col) * h_kt) + mm(kd, v, opts, ta=True))
  # stage 4, intra part: o += A v
  live = tc.block_mask(docs, 0, 0, C)
  if dense_ok is not True:
    live = live & dense_ok
  o = o + mm(jnp.where(live, A, 0.0), v, opts)
  o_ref[pl.ds(t0, C), :] = o.astype(o_ref.dtype)
  return tuple(h_next)


def chunk_fwd_kernel(*refs, opts: KernelOptions):
  q_ref, k_ref, v_ref, g_ref, *rest = refs
  h0_ref = rest.pop(0) if opts.has_h0 else None
  doc_ref = rest.pop(0) if opts.has_seg else None
  o_ref, ht_ref, *flag_ref = rest
  BK, BV = opts.blocks.fwd_bk, opts.blocks.fwd_bv
  nk = opts.K // BK
  if h0_ref is not None:
    h = tuple(load(h0_ref, kt * BK, BK, 0, BV) for kt in range(nk))
  else:
    h = tuple(jnp.zeros((BK, BV), F32) for _ in range(nk))
  step_refs = (q_ref, k_ref, v_ref, g_ref, doc_ref, o_ref)

  def body(n, h):  # no branches in this loop, so that Triton pipelines its loads
    t0 = n * C
    if opts.path == "dense":
      return _fwd_step(step_refs, opts, t0, h, True)
    if opts.path == "auto":
      dense_ok = tc.chunk_span(g_ref, t0, opts.K, BK) < opts.threshold
    else:
      dense_ok = jnp.zeros((), jnp.bool_)
    flag_ref[0][n] = jnp.where(dense_ok, 0, 1).astype(jnp.int32)
    return _fwd_step(step_refs, opts, t0, h, dense_ok)

  h = lax.fori_loop(0, opts.N, body, h)
  for kt in range(nk):
    ht_ref[pl.ds(kt * BK, BK), :] = h[kt]


def chunk_fwd(q, k, v, g, h0, doc, opts: KernelOptions):
  """q, k, g [B, T, H, K]; v [B, T, H, V]; h0 [B, H, K, V] f32 or None; doc [B, T] int32 or None.
  Returns o [B, T, H, V] (v.dtype) and the final state [B, H, K, V] f32.

  With few (batch·head, V tile) sequences (`blocks.fwd_parallel`) the sequential fused kernel cannot
  fill the GPU; the forward then runs `chunk_state_pass` (h entering every chunk) and the
  chunk-parallel `chunk_output` instead."""
  o, ht, _ = chunk_fwd_states(q, k, v, g, h0, doc, opts)
  return o, ht


def chunk_fwd_states(q, k, v, g, h0, doc, opts: KernelOptions):
  """`chunk_fwd`, and the per-chunk states h [B·H, N, K, V] (`opts.state_dtype`) where the forward
  materialises them (the sequence-parallel form; None from the fused kernel, which keeps h in
  registers): (o, final state, hs or None)."""
  if opts.blocks.fwd_parallel:
    hs, ht = chunk_state_pass(k, v, g, h0, doc, opts, final_state=True)
    o, *flags = chunk_output(q, k, v, g, hs, doc, opts)
    if flags:
      o = chunk_intra_fixup(q, k, v, g, doc, flags[0], o, opts)
    return o, ht, hs
  B, T, H, K, V = opts.B, opts.T, opts.H, opts.K, opts.V
  BV = opts.blocks.fwd_bv
  vt = lambda j, bh: j
  full = lambda j, bh: 0
  in_specs = [seq_block(T, K, H, full), seq_block(T, K, H, full), seq_block(T, BV, H, vt),
              seq_block(T, K, H, full)]
  args = [q, k, v, g]
  if opts.has_h0:
    in_specs.append(pl.BlockSpec((None, None, K, BV), lambda j, bh: (bh // H, bh % H, 0, j)))
    args.append(h0)
  if opts.has_seg:
    in_specs.append(doc_block(T, H))
    args.append(doc)
  out_specs = [seq_block(T, BV, H, vt),
               pl.BlockSpec((None, None, K, BV), lambda j, bh: (bh // H, bh % H, 0, j))]
  out_shape = [compat.pallas_out_struct((B, T, H, V), v.dtype, q),
               compat.pallas_out_struct((B, H, K, V), F32, q)]
  if opts.path != "dense":  # every V tile writes the same flags
    out_specs.append(pl.BlockSpec((None, opts.N), lambda j, bh: (bh, 0)))
    out_shape.append(compat.pallas_out_struct((B * H, opts.N), jnp.int32, q))
  o, ht, *flags = pl.pallas_call(
      functools.partial(chunk_fwd_kernel, opts=opts),
      grid=(V // BV, B * H),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=opts.compiler_params(opts.blocks.fwd_warps),
      interpret=opts.interpret,
      name="gla_chunk_fwd",
  )(*args)
  if flags:
    o = chunk_intra_fixup(q, k, v, g, doc, flags[0], o, opts)
  return o, ht, None


# ------------------------------------------------------------------------------------------------
# chunk_output: stages 3–4 for every chunk in parallel, from the states of chunk_state_pass
# ------------------------------------------------------------------------------------------------


def chunk_output_kernel(*refs, opts: KernelOptions):
  q_ref, k_ref, v_ref, g_ref, hs_ref, *rest = refs
  doc_ref = rest.pop(0) if opts.has_seg else None
  o_ref, *flag_ref = rest
  BK, BV = opts.blocks.fwd_bk, opts.blocks.out_bv
  n = pl.program_id(1)
  h = tuple(load(hs_ref, kt * BK, BK, 0, BV) for kt in range(opts.K // BK))
  if opts.path == "dense":
    dense_ok = True
  else:
    dense_ok = (tc.chunk_span(g_ref, 0, opts.K, BK) < opts.threshold if opts.path == "auto"
                else jnp.zeros((), jnp.bool_))
    flag_ref[0][n] = jnp.where(dense_ok, 0, 1).astype(jnp.int32)
  _fwd_step((q_ref, k_ref, v_ref, g_ref, doc_ref, o_ref), opts, 0, h, dense_ok, doc_t0=n * C, BV=BV)


def chunk_output(q, k, v, g, hs, doc, opts: KernelOptions):
  """o = (q ⊙ e^G) h + A v per chunk (intra part left out where the chunk needs the two-level form;
  see `chunk_intra_fixup`), and the per-chunk flags. One program per (V tile, chunk, b·h)."""
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BV = opts.blocks.out_bv
  chunk = lambda D, tile: pl.BlockSpec((None, C, None, D),
                                       lambda j, n, bh: (bh // H, n, bh % H, tile(j)))
  full, vt = (lambda j: 0), (lambda j: j)
  in_specs = [chunk(K, full), chunk(K, full), chunk(BV, vt), chunk(K, full),
              pl.BlockSpec((None, None, K, BV), lambda j, n, bh: (bh, n, 0, j))]
  args = [q, k, v, g, hs]
  if opts.has_seg:
    in_specs.append(pl.BlockSpec((None, T), lambda j, n, bh: (bh // H, 0)))
    args.append(doc)
  out_specs = [chunk(BV, vt)]
  out_shape = [compat.pallas_out_struct((B, T, H, V), v.dtype, q)]
  if opts.path != "dense":
    out_specs.append(pl.BlockSpec((None, N), lambda j, n, bh: (bh, 0)))
    out_shape.append(compat.pallas_out_struct((B * H, N), jnp.int32, q))
  return pl.pallas_call(
      functools.partial(chunk_output_kernel, opts=opts),
      grid=(V // BV, N, B * H),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=opts.compiler_params(opts.blocks.out_warps),
      interpret=opts.interpret,
      name="gla_chunk_output",
  )(*args)


# ------------------------------------------------------------------------------------------------
# chunk_intra_fixup: stages 3–4 (intra part) for the chunks the dense form cannot take
# ------------------------------------------------------------------------------------------------


def chunk_intra_fixup_kernel(*refs, opts: KernelOptions):
  """o += A v for one flagged chunk, two-level: for each query sub-chunk i, the diagonal block (exact
  where its span is large) and the reference-row blocks A_ij of earlier key sub-chunks j < i."""
  flag_ref, q_ref, k_ref, g_ref, v_ref, *rest = refs
  doc_ref = rest.pop(0) if opts.has_seg else None
  o_in_ref, o_ref = rest
  BK, BV = opts.blocks.fwd_bk, opts.blocks.fixup_bv
  S, nk = tc.S_FINE, opts.K // BK
  n = pl.program_id(1)
  t0 = n * C
  mode = tc.fine_mode(opts)
  sub_docs = lambda u: doc_ref[pl.ds(t0 + u * S, S)] if opts.has_seg else None

  def i_body(i, _):
    ri = i * S
    di = sub_docs(i)

    def diag_body(kt, A):
      c0 = kt * BK
      gt = tc.sub_gates(g_ref, i, c0, BK)
      q = load(q_ref, ri, S, c0, BK) * opts.scale
      k = load(k_ref, ri, S, c0, BK)
      return A + tc.diag_A(mode, q, k, gt, (q_ref, k_ref, g_ref), ri, c0, BK, opts)

    A = lax.fori_loop(0, nk, diag_body, jnp.zeros((S, S), F32))
    m = tc.causal(S) if di is None else (tc.causal(S) & (di[:, None] == di[None, :]))
    acc = mm(jnp.where(m, A, 0.0), load(v_ref, ri, S, 0, BV), opts)

    def j_body(j, acc):  # key sub-chunk j < i
      def k_body(kt, A):
        c0 = kt * BK
        gi, gj = tc.sub_gates(g_ref, i, c0, BK), tc.sub_gates(g_ref, j, c0, BK)
        q = load(q_ref, ri, S, c0, BK) * opts.scale
        return A + tc.off_block(q, load(k_ref, j * S, S, c0, BK), gi.G, gi.Gn, gj.G, opts)

      A = lax.fori_loop(0, nk, k_body, jnp.zeros((S, S), F32))
      if di is not None:
        A = jnp.where(di[:, None] == sub_docs(j)[None, :], A, 0.0)
      return acc + mm(A, load(v_ref, j * S, S, 0, BV), opts)

    acc = lax.fori_loop(0, i, j_body, acc)
    o = load(o_in_ref, ri, S, 0, BV) + acc
    o_ref[pl.ds(ri, S), :] = o.astype(o_ref.dtype)
    return 0

  @pl.when(flag_ref[n] != 0)
  def _():
    lax.fori_loop(0, C // S, i_body, 0)


def chunk_intra_fixup(q, k, v, g, doc, flags, o, opts: KernelOptions):
  """o (updated in place) for the chunks flagged by `chunk_fwd`; other chunks are left as they are."""
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BV = opts.blocks.fixup_bv
  chunk = lambda D, tile: pl.BlockSpec((None, C, None, D),
                                       lambda j, n, bh: (bh // H, n, bh % H, tile(j)))
  full, vt = (lambda j: 0), (lambda j: j)
  in_specs = [pl.BlockSpec((None, N), lambda j, n, bh: (bh, 0)),
              chunk(K, full), chunk(K, full), chunk(K, full), chunk(BV, vt)]
  args = [flags, q, k, g, v]
  if opts.has_seg:
    in_specs.append(pl.BlockSpec((None, T), lambda j, n, bh: (bh // H, 0)))
    args.append(doc)
  in_specs.append(chunk(BV, vt))
  args.append(o)
  return pl.pallas_call(
      functools.partial(chunk_intra_fixup_kernel, opts=opts),
      grid=(V // BV, N, B * H),
      in_specs=in_specs,
      out_specs=chunk(BV, vt),
      out_shape=compat.pallas_out_struct(o.shape, o.dtype, q),
      input_output_aliases={len(args) - 1: 0},
      compiler_params=opts.compiler_params(opts.blocks.fwd_warps),
      interpret=opts.interpret,
      name="gla_chunk_intra_fixup",
  )(*args)


# ------------------------------------------------------------------------------------------------
# chunk_state_pass: stage 2 for the backward (h entering every chunk), shared with the other ops
# ------------------------------------------------------------------------------------------------


def chunk_state_pass(k, v, g, h0, doc, opts: KernelOptions, final_state: bool = False):
  """→ hs [B·H, N, K, V] (opts.state_dtype): the state entering each chunk (and, if `final_state`,
  the state after the last chunk [B, H, K, V] f32). The shared kernel of
  pallas_kernels/common/triton/state.py with the per-key gate (sequential, or with
  `blocks.state_scan` the two-phase scan)."""
  return shared_state.chunk_state_pass(k, v, g, h0, doc, opts, final_state)
