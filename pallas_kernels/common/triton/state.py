"""The state passes of every chunked op, one kernel per direction for every gate kind (gates.py).

  chunk_state_pass       h entering every chunk, [B·H, N, K, V] (and the final state):
                         h ← e^Γ ⊙ h + (k ⊙ e^{Γ−G})ᵀ v, keys of the chunk's last document
  chunk_state_grad_pass  dh leaving every chunk (reverse sweep) and d initial_state:
                         dh ← e^Γ ⊙ dh + (q·scale ⊙ e^{G})ᵀ do, queries of the chunk's first document

One program per ([BK, BV] state tile, b·h) walks the chunks in order; with `blocks.state_scan` the
two-phase scan of scan.py runs instead (long sequences, few b·h). GLA (gate "vector") and simple GLA
("scalar", "constant", "none") share these kernels.

Options read (duck-typed): B, H, T, K, V, N, scale, gate, t_valid (constant gate), has_h0, has_seg,
state_dtype, interpret, dot_dtype, dtype, prefix (kernel names), compiler_params(num_warps) and
blocks.{state_bk, state_bv, state_warps, state_scan} (+ scan.py's fields).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from pallas_kernels import compat
from pallas_kernels.common.triton import scan
from pallas_kernels.common.triton.gates import chunk_decay, gate_seq_spec
from pallas_kernels.common.triton.tiles import (C, F32, carry_mask, chunk_docs, doc_block, load, mm,
                                                pl, row_in, row_out, rows, seq_block, state_tiles)


def _pop_gate(opts, rest):
  return rest.pop(0) if opts.gate != "none" else None


def chunk_state_pass_kernel(*refs, opts):
  k_ref, v_ref, *rest = refs
  g_ref = _pop_gate(opts, rest)
  h0_ref = rest.pop(0) if opts.has_h0 else None
  doc_ref = rest.pop(0) if opts.has_seg else None
  hs_ref, *ht_ref = rest
  BK, BV = opts.blocks.state_bk, opts.blocks.state_bv
  h = load(h0_ref, 0, BK, 0, BV) if h0_ref is not None else jnp.zeros((BK, BV), F32)

  def body(n, h):
    t0 = n * C
    hs_ref[n] = h.astype(hs_ref.dtype)
    docs = chunk_docs(doc_ref, t0, C, opts.has_seg)
    k = load(k_ref, t0, C, 0, BK)
    v = load(v_ref, t0, C, 0, BV)
    dec = chunk_decay(opts, g_ref, t0, t0, 0, BK)
    kd = rows(row_out(docs, 0), dec.to_end(k))
    return carry_mask(docs, dec.state(h)) + mm(kd, v, opts, ta=True)

  h = lax.fori_loop(0, opts.N, body, h)
  if ht_ref:
    ht_ref[0][...] = h


def _operands(opts, x, y, g, BK: int, BV: int, kt, vt):
  in_specs = [seq_block(opts.T, BK, opts.H, kt), seq_block(opts.T, BV, opts.H, vt)]
  args = [x, y]
  if opts.gate != "none":
    in_specs.append(gate_seq_spec(opts, BK, kt))
    args.append(g)
  return in_specs, args


def chunk_state_pass(k, v, g, h0, doc, opts, final_state: bool = False):
  """k [B, T, H, K], v [B, T, H, V], g the gate operand (gates.py; None for "none"), h0 [B, H, K, V] f32
  or None, doc [B, T] int32 or None → hs [B·H, N, K, V] (opts.state_dtype): the state entering each
  chunk (and, if `final_state`, the state after the last chunk [B, H, K, V] f32)."""
  if opts.blocks.state_scan:
    return scan.chunk_state_pass(k, v, g, h0, doc, opts, final_state)
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BK, BV = opts.blocks.state_bk, opts.blocks.state_bv
  kt, vt = state_tiles(opts, BK, BV)
  in_specs, args = _operands(opts, k, v, g, BK, BV, kt, vt)
  state = pl.BlockSpec((None, None, BK, BV), lambda i, bh: (bh // H, bh % H, kt(i, bh), vt(i, bh)))
  if opts.has_h0:
    in_specs.append(state)
    args.append(h0)
  if opts.has_seg:
    in_specs.append(doc_block(T, H))
    args.append(doc)
  out_specs = [pl.BlockSpec((None, N, BK, BV), lambda i, bh: (bh, 0, kt(i, bh), vt(i, bh)))]
  out_shape = [compat.pallas_out_struct((B * H, N, K, V), jnp.dtype(opts.state_dtype), k)]
  if final_state:
    out_specs.append(state)
    out_shape.append(compat.pallas_out_struct((B, H, K, V), F32, k))
  out = pl.pallas_call(
      functools.partial(chunk_state_pass_kernel, opts=opts),
      grid=((K // BK) * (V // BV), B * H),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=opts.compiler_params(opts.blocks.state_warps),
      interpret=opts.interpret,
      name=f"{opts.prefix}_chunk_state_pass",
  )(*args)
  return out if final_state else out[0]


def chunk_state_grad_pass_kernel(*refs, opts):
  q_ref, do_ref, *rest = refs
  g_ref = _pop_gate(opts, rest)
  dht_ref, *rest = rest
  doc_ref = rest.pop(0) if opts.has_seg else None
  dhs_ref, dh0_ref = rest
  BK, BV = opts.blocks.state_bk, opts.blocks.state_bv

  def body(j, dh):  # dh: gradient w.r.t. the state leaving chunk n
    n = opts.N - 1 - j
    t0 = n * C
    dhs_ref[n] = dh.astype(dhs_ref.dtype)
    docs = chunk_docs(doc_ref, t0, C, opts.has_seg)
    q = load(q_ref, t0, C, 0, BK) * opts.scale
    do = load(do_ref, t0, C, 0, BV)
    dec = chunk_decay(opts, g_ref, t0, t0, 0, BK)
    qd = rows(row_in(docs, 0), dec.from_start(q))
    return carry_mask(docs, dec.state(dh)) + mm(qd, do, opts, ta=True)

  dh = lax.fori_loop(0, opts.N, body, load(dht_ref, 0, BK, 0, BV))
  dh0_ref[...] = dh


def chunk_state_grad_pass(q, do, g, dht, doc, opts):
  """→ (dhs [B·H, N, K, V]: gradient w.r.t. the state leaving each chunk, dh0 [B, H, K, V] f32)."""
  if opts.blocks.state_scan:
    return scan.chunk_state_grad_pass(q, do, g, dht, doc, opts)
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BK, BV = opts.blocks.state_bk, opts.blocks.state_bv
  kt, vt = state_tiles(opts, BK, BV)
  state = pl.BlockSpec((None, None, BK, BV), lambda i, bh: (bh // H, bh % H, kt(i, bh), vt(i, bh)))
  in_specs, args = _operands(opts, q, do, g, BK, BV, kt, vt)
  in_specs.append(state)
  args.append(dht)
  if opts.has_seg:
    in_specs.append(doc_block(T, H))
    args.append(doc)
  return pl.pallas_call(
      functools.partial(chunk_state_grad_pass_kernel, opts=opts),
      grid=((K // BK) * (V // BV), B * H),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, N, BK, BV), lambda i, bh: (bh, 0, kt(i, bh), vt(i, bh))), state],
      out_shape=[compat.pallas_out_struct((B * H, N, K, V), jnp.dtype(opts.state_dtype), q),
                 compat.pallas_out_struct((B, H, K, V), F32, q)],
      compiler_params=opts.compiler_params(opts.blocks.state_warps),
      interpret=opts.interpret,
      name=f"{opts.prefix}_chunk_state_grad_pass",
  )(*args)
