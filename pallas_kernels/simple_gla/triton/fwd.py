"""Forward kernels of the Pallas Triton simple GLA (scalar, constant or no decay; docs/ops.md).

With a scalar decay per row the chunk needs no sub-chunks: G = inclusive cumsum of g in the chunk,
Γ = G at the chunk's last row, and

  o   = scale · ( e^{G} ⊙ (q h)  +  ((q kᵀ) ⊙ M) v ),    M_ts = e^{G_t − G_s} for s ≤ t (same document)
  h'  = e^{Γ} h + (k ⊙ e^{Γ − G})ᵀ v

every exponent ≤ 0 (stable for any decay). Gate "none" forms no exponentials; "constant" builds G from
one γ per head in the kernel (common/triton/gates.py).

  chunk_fwd     one program per (V tile, b·h) walks the chunks in order with h [K, BV] in registers
                and writes o and the final state; nothing else goes to HBM.
  chunk_output  the output of every chunk in parallel from the states of the shared
                `chunk_state_pass` (the sequence-parallel forward: long sequences, few b·h).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from pallas_kernels import compat
from pallas_kernels.common.triton import state as shared_state
from pallas_kernels.common.triton.gates import chunk_decay, gate_chunk_spec, gate_seq_spec
from pallas_kernels.common.triton.tiles import (C, F32, block_mask, carry_mask, chunk_docs, doc_block,
                                                load, mm, pl, row_in, row_out, rows, seq_block)
from pallas_kernels.simple_gla.triton.common import KernelOptions


def intra_decay(dec, live):
  """[C, C] M_ts = e^{G_t − G_s} on the live (causal, same-document) entries, 0 elsewhere (float32);
  exponents of dead entries are −inf before the exp, so no inf is ever formed."""
  if dec.kind == "none":
    return live.astype(F32)
  return jnp.exp(jnp.where(live, dec.diff(), -jnp.inf))


def _fwd_step(refs, opts: KernelOptions, t0, h, t_abs=None, BV=None):
  """One chunk (rows t0 .. t0 + 63 of the refs, absolute row t_abs): stores o, returns the next state
  (a tuple of [BK, BV] tiles)."""
  q_ref, k_ref, v_ref, g_ref, doc_ref, o_ref = refs
  t_abs = t0 if t_abs is None else t_abs
  BK, BV = opts.blocks.fwd_bk, BV or opts.blocks.fwd_bv
  dt = jnp.dtype(opts.dot_dtype)
  docs = chunk_docs(doc_ref, t_abs, C, opts.has_seg)
  dec = chunk_decay(opts, g_ref, t0, t_abs)
  v = load(v_ref, t0, C, 0, BV, dt)
  qk = jnp.zeros((C, C), F32)
  qh = jnp.zeros((C, BV), F32)
  h_next = []
  for kt, h_kt in enumerate(h):
    q = load(q_ref, t0, C, kt * BK, BK, dt)
    k = load(k_ref, t0, C, kt * BK, BK)
    qk = qk + mm(q, k, opts, tb=True)
    qh = qh + mm(q, h_kt, opts)
    kd = rows(row_out(docs, 0), dec.to_end(k))  # keys of the last document, decayed to the end
    h_next.append(carry_mask(docs, dec.state(h_kt)) + mm(kd, v, opts, ta=True))
  A = qk * intra_decay(dec, block_mask(docs, 0, 0, C))
  o = rows(row_in(docs, 0), dec.from_start(qh)) + mm(A, v, opts)
  o_ref[pl.ds(t0, C), :] = (o * opts.scale).astype(o_ref.dtype)
  return tuple(h_next)


def chunk_fwd_kernel(*refs, opts: KernelOptions):
  q_ref, k_ref, v_ref, *rest = refs
  g_ref = rest.pop(0) if opts.gate != "none" else None
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
  h = lax.fori_loop(0, opts.N, lambda n, h: _fwd_step(step_refs, opts, n * C, h), h)
  for kt in range(nk):
    ht_ref[pl.ds(kt * BK, BK), :] = h[kt]


def chunk_fwd(q, k, v, g, h0, doc, opts: KernelOptions):
  """q, k [B, T, H, K]; v [B, T, H, V]; g the gate operand (gates.py; None for "none"); h0
  [B, H, K, V] f32 or None; doc [B, T] int32 or None → o [B, T, H, V] (v.dtype), final state
  [B, H, K, V] f32. Sequence-parallel (`blocks.fwd_parallel`): state pass + `chunk_output`."""
  o, ht, _ = chunk_fwd_states(q, k, v, g, h0, doc, opts)
  return o, ht


def chunk_fwd_states(q, k, v, g, h0, doc, opts: KernelOptions):
  """`chunk_fwd`, and the per-chunk states h [B·H, N, K, V] (`opts.state_dtype`) where the forward
  materialises them (the sequence-parallel form; None from the fused kernel, which keeps h in
  registers): (o, final state, hs or None)."""
  if opts.blocks.fwd_parallel:
    hs, ht = shared_state.chunk_state_pass(k, v, g, h0, doc, opts, final_state=True)
    return chunk_output(q, k, v, g, hs, doc, opts), ht, hs
  B, T, H, K, V = opts.B, opts.T, opts.H, opts.K, opts.V
  BV = opts.blocks.fwd_bv
  vt, full = (lambda j, bh: j), (lambda j, bh: 0)
  in_specs = [seq_block(T, K, H, full), seq_block(T, K, H, full), seq_block(T, BV, H, vt)]
  args = [q, k, v]
  if opts.gate != "none":
    in_specs.append(gate_seq_spec(opts, K, full))
    args.append(g)
  state = pl.BlockSpec((None, None, K, BV), lambda j, bh: (bh // H, bh % H, 0, j))
  if opts.has_h0:
    in_specs.append(state)
    args.append(h0)
  if opts.has_seg:
    in_specs.append(doc_block(T, H))
    args.append(doc)
  o, ht = pl.pallas_call(
      functools.partial(chunk_fwd_kernel, opts=opts),
      grid=(V // BV, B * H),
      in_specs=in_specs,
      out_specs=[seq_block(T, BV, H, vt), state],
      out_shape=[compat.pallas_out_struct((B, T, H, V), v.dtype, q),
                 compat.pallas_out_struct((B, H, K, V), F32, q)],
      compiler_params=opts.compiler_params(opts.blocks.fwd_warps),
      interpret=opts.interpret,
      name="simple_gla_chunk_fwd",
  )(*args)
  return o, ht, None


def chunk_output_kernel(*refs, opts: KernelOptions):
  q_ref, k_ref, v_ref, *rest = refs
  g_ref = rest.pop(0) if opts.gate != "none" else None
  hs_ref, *rest = rest
  doc_ref = rest.pop(0) if opts.has_seg else None
  (o_ref,) = rest
  BK, BV = opts.blocks.fwd_bk, opts.blocks.out_bv
  n = pl.program_id(1)
  h = tuple(load(hs_ref, kt * BK, BK, 0, BV) for kt in range(opts.K // BK))
  _fwd_step((q_ref, k_ref, v_ref, g_ref, doc_ref, o_ref), opts, 0, h, t_abs=n * C, BV=BV)


def chunk_output(q, k, v, g, hs, doc, opts: KernelOptions):
  """o of every chunk from the states entering it (hs [B·H, N, K, V]); one program per
  (V tile, chunk, b·h)."""
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BV = opts.blocks.out_bv
  chunk = lambda D, tile: pl.BlockSpec((None, C, None, D),
                                       lambda j, n, bh: (bh // H, n, bh % H, tile(j)))
  full, vt = (lambda j: 0), (lambda j: j)
  in_specs = [chunk(K, full), chunk(K, full), chunk(BV, vt)]
  args = [q, k, v]
  if opts.gate != "none":
    in_specs.append(gate_chunk_spec(opts, K, full))
    args.append(g)
  in_specs.append(pl.BlockSpec((None, None, K, BV), lambda j, n, bh: (bh, n, 0, j)))
  args.append(hs)
  if opts.has_seg:
    in_specs.append(pl.BlockSpec((None, T), lambda j, n, bh: (bh // H, 0)))
    args.append(doc)
  return pl.pallas_call(
      functools.partial(chunk_output_kernel, opts=opts),
      grid=(V // BV, N, B * H),
      in_specs=in_specs,
      out_specs=chunk(BV, vt),
      out_shape=compat.pallas_out_struct((B, T, H, V), v.dtype, q),
      compiler_params=opts.compiler_params(opts.blocks.out_warps),
      interpret=opts.interpret,
      name="simple_gla_chunk_output",
  )(*args)
