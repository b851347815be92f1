"""Forward kernels of the Pallas Triton GLA: the fused forward and the state pass the backward reruns.

  chunk_fwd         stages 1–4 of `chunk.py` fused: one program per (V tile, batch·head) walks the chunks
                    in order, keeps h [K, BV] in registers and writes o (and the final state). No state ever
                    goes to HBM: the forward reads q, k, v, g once per V tile and writes o.
  chunk_state_pass  stage 2 alone (with stage 1): h entering every chunk, [B·H, N, K, V], for the backward.

Layout: the kernels read the public [B, T, H, D] arrays in place (a block is a strided [T, D] view of
one (b, h)), with T padded to a multiple of 64 and K, V padded by `triton.py`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.gla import triton_common as tc
from pallas_kernels.gla.triton_common import C, F32, KernelOptions, load, mm, rows

pl = tc.pl


# ------------------------------------------------------------------------------------------------
# chunk_fwd: stages 1–4, fused
# ------------------------------------------------------------------------------------------------


def _fwd_chunk_step(S: int, refs, opts: KernelOptions, t0, h):
  """One chunk of the forward with sub-chunks of S rows; stores o, returns the next state (tuple of
  [BK, BV] tiles). refs = (q, k, v, g, doc, o) refs with rows of the whole sequence."""
  q_ref, k_ref, v_ref, g_ref, doc_ref, o_ref = refs
  BK, BV = opts.blocks.fwd_bk, opts.blocks.fwd_bv
  ns = C // S
  mode = tc.diag_mode(opts, S)
  docs = tc.chunk_docs(doc_ref, t0, S, opts.has_seg)
  v = [load(v_ref, t0 + j * S, S, 0, BV) for j in range(ns)]
  o = [jnp.zeros((S, BV), F32) for _ in range(ns)]
  A = {}
  h_next = []
  for kt, h_kt in enumerate(h):
    c0 = kt * BK
    q = [load(q_ref, t0 + i * S, S, c0, BK) * opts.scale for i in range(ns)]
    k = [load(k_ref, t0 + i * S, S, c0, BK) for i in range(ns)]
    tg = tc.tile_gates(g_ref, t0, S, c0, BK)  # stage 1
    for i in range(ns):
      # stage 4, inter part: (q ⊙ e^G) h, rows still in the carried document
      o[i] = o[i] + mm(rows(tc.row_in(docs, i), q[i] * jnp.exp(tg.G[i])), h_kt, opts)
      # stage 3: the blocks of A on this K tile
      for j in range(i):
        A[i, j] = A.get((i, j), 0.0) + tc.off_block(q[i], k[j], tg.G[i], tg.Gn[i], tg.G[j], opts)
      A[i, i] = A.get((i, i), 0.0) + tc.diag_A(mode, i, q, k, tg, (q_ref, k_ref, g_ref), t0, c0,
                                               BK, opts)
    # stage 2: h' = diag(e^Γ) h + (k ⊙ e^{Γ−G})ᵀ v over the keys of the chunk's last document
    update = sum(mm(rows(tc.row_out(docs, j), k[j] * jnp.exp(tg.gam_row - tg.G[j])), v[j], opts,
                    ta=True) for j in range(ns))
    h_next.append(tc.carry_mask(docs, jnp.exp(tg.gam_col) * h_kt) + update)
  # stage 4, intra part: o_i += Σ_{j ≤ i} A_ij v_j
  for i in range(ns):
    for j in range(i + 1):
      a = tc.masked(tc.block_mask(docs, i, j, S), A[i, j])
      o[i] = o[i] + mm(a, v[j], opts)
    o_ref[pl.ds(t0 + i * S, S), :] = o[i].astype(o_ref.dtype)
  return tuple(h_next)


def chunk_fwd_kernel(*refs, opts: KernelOptions):
  q_ref, k_ref, v_ref, g_ref, *rest = refs
  h0_ref = rest.pop(0) if opts.has_h0 else None
  doc_ref = rest.pop(0) if opts.has_seg else None
  o_ref, ht_ref = rest
  BK, BV = opts.blocks.fwd_bk, opts.blocks.fwd_bv
  nk = opts.K // BK
  if h0_ref is not None:
    h = tuple(load(h0_ref, kt * BK, BK, 0, BV) for kt in range(nk))
  else:
    h = tuple(jnp.zeros((BK, BV), F32) for _ in range(nk))
  step_refs = (q_ref, k_ref, v_ref, g_ref, doc_ref, o_ref)

  def body(n, h):
    t0 = n * C
    span = tc.chunk_span(g_ref, t0, opts.K, BK) if opts.path == "auto" else None
    return tc.choose_path(opts, span,
                          functools.partial(_fwd_chunk_step, C, step_refs, opts, t0),
                          functools.partial(_fwd_chunk_step, tc.S_FINE, step_refs, opts, t0), h)

  h = lax.fori_loop(0, opts.N, body, h)
  for kt in range(nk):
    ht_ref[pl.ds(kt * BK, BK), :] = h[kt]


def seq_block(T: int, D: int, H: int, tile_of):
  """BlockSpec of the whole sequence of one (b, h) with a D tile chosen by `tile_of(grid ids)`;
  the grid's last axis is b·H + h."""
  return pl.BlockSpec((None, T, None, D),
                      lambda *ids: (ids[-1] // H, 0, ids[-1] % H, tile_of(*ids)))


def doc_block(T: int, H: int):
  return pl.BlockSpec((None, T), lambda *ids: (ids[-1] // H, 0))


def chunk_fwd(q, k, v, g, h0, doc, opts: KernelOptions):
  """q, k, g [B, T, H, K]; v [B, T, H, V]; h0 [B, H, K, V] f32 or None; doc [B, T] int32 or None.
  Returns o [B, T, H, V] (v.dtype) and the final state [B, H, K, V] f32."""
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
  return pl.pallas_call(
      functools.partial(chunk_fwd_kernel, opts=opts),
      grid=(V // BV, B * H),
      in_specs=in_specs,
      out_specs=[seq_block(T, BV, H, vt),
                 pl.BlockSpec((None, None, K, BV), lambda j, bh: (bh // H, bh % H, 0, j))],
      out_shape=[jax.ShapeDtypeStruct((B, T, H, V), v.dtype),
                 jax.ShapeDtypeStruct((B, H, K, V), F32)],
      compiler_params=opts.compiler_params(opts.blocks.fwd_warps),
      interpret=opts.interpret,
      name="gla_chunk_fwd",
  )(*args)


# ------------------------------------------------------------------------------------------------
# chunk_state_pass: stage 2 for the backward (h entering every chunk)
# ------------------------------------------------------------------------------------------------


def chunk_state_pass_kernel(*refs, opts: KernelOptions):
  k_ref, v_ref, g_ref, *rest = refs
  h0_ref = rest.pop(0) if opts.has_h0 else None
  doc_ref = rest.pop(0) if opts.has_seg else None
  (hs_ref,) = rest
  BK, BV = opts.blocks.state_bk, opts.blocks.state_bv
  h = load(h0_ref, 0, BK, 0, BV) if h0_ref is not None else jnp.zeros((BK, BV), F32)

  def body(n, h):
    t0 = n * C
    hs_ref[n] = h.astype(hs_ref.dtype)
    docs = tc.chunk_docs(doc_ref, t0, C, opts.has_seg)
    k = load(k_ref, t0, C, 0, BK)
    v = load(v_ref, t0, C, 0, BV)
    g = load(g_ref, t0, C, 0, BK)
    G = jnp.cumsum(g, axis=0)
    gam = jnp.sum(g, axis=0)
    kd = rows(tc.row_out(docs, 0), k * jnp.exp(gam[None, :] - G))
    return tc.carry_mask(docs, jnp.exp(gam)[:, None] * h) + mm(kd, v, opts, ta=True)

  lax.fori_loop(0, opts.N, body, h)


def state_tiles(opts: KernelOptions, bk: int, bv: int):
  """grid axis 0 = kt · (V / bv) + vt."""
  nv = opts.V // bv
  return (lambda i, bh: i // nv), (lambda i, bh: i % nv)


def chunk_state_pass(k, v, g, h0, doc, opts: KernelOptions):
  """→ hs [B·H, N, K, V] (opts.state_dtype): the state entering each chunk."""
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BK, BV = opts.blocks.state_bk, opts.blocks.state_bv
  kt, vt = state_tiles(opts, BK, BV)
  in_specs = [seq_block(T, BK, H, kt), seq_block(T, BV, H, vt), seq_block(T, BK, H, kt)]
  args = [k, v, g]
  if opts.has_h0:
    in_specs.append(pl.BlockSpec((None, None, BK, BV),
                                 lambda i, bh: (bh // H, bh % H, kt(i, bh), vt(i, bh))))
    args.append(h0)
  if opts.has_seg:
    in_specs.append(doc_block(T, H))
    args.append(doc)
  return pl.pallas_call(
      functools.partial(chunk_state_pass_kernel, opts=opts),
      grid=((K // BK) * (V // BV), B * H),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, N, BK, BV), lambda i, bh: (bh, 0, kt(i, bh), vt(i, bh))),
      out_shape=jax.ShapeDtypeStruct((B * H, N, K, V), jnp.dtype(opts.state_dtype)),
      compiler_params=opts.compiler_params(opts.blocks.state_warps),
      interpret=opts.interpret,
      name="gla_chunk_state_pass",
  )(*args)
