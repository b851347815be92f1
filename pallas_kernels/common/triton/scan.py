"""Stage 2 and stage 5 as two-phase scans: chunk summaries in parallel, then an elementwise chain.

The sequential state passes (`chunk_state_pass`, `chunk_state_grad_pass`) do per chunk step a cumsum of
the gates, the decay factors, a [BK, 64] × [64, BV] matmul and the carry: several shared-memory round
trips on the critical path, ~6–11 µs per chunk on an H100. With few (batch·head) sequences and many
chunks (long T) that chain is the whole cost and the GPU idles. Split in two:

  chunk_summaries  every chunk in parallel: what the chunk adds to the state and how it decays it,
                     forward   U_n = (k ⊙ e^{Γ−G})ᵀ v   (keys of the chunk's last document)
                     backward  W_n = (q·scale ⊙ e^{G})ᵀ do   (queries of the chunk's first document)
                     and γ_n = e^{Γ_n}, zero where a document starts inside the chunk;
  state_scan       one program per ([BK, BV] tile, b·h) walks the chunks in order (or in reverse):
                     store h (the state entering / the gradient leaving chunk n), h ← γ_n ⊙ h + U_n.
                   No matmul, no reduction, no layout change: a load, a multiply-add and a store per
                   step, with the loads of the next steps issued before this step's arithmetic.

This is the same recurrence as the fused passes (state.py's `chunk_state_pass` and
`chunk_state_grad_pass`), summed in the same order; it moves U through HBM once more (written, read) in
exchange for a chain that is a few hundred ns per step. The summaries are stored in `u_dtype`: float32
where the pass returns the user-visible final state (the sequence-parallel forward), otherwise the dtype of
the per-chunk states (bf16 for bf16 inputs, whose states are rounded to bf16 anyway); when the two dtypes
match, the scan writes the states over the summaries in place (no second buffer). Every gate kind
(gates.py) uses the same two kernels; the options read are state.py's.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from pallas_kernels import compat
from pallas_kernels.common.triton.gates import chunk_decay, gate_chunk_spec
from pallas_kernels.common.triton.tiles import (C, F32, carry_mask, chunk_docs, load, mm, pl, row_in,
                                                row_out, rows)


# ------------------------------------------------------------------------------------------------
# chunk_summaries: (U_n or W_n, γ_n) for every chunk in parallel
# ------------------------------------------------------------------------------------------------


def chunk_summaries_kernel(*refs, opts, side: str):
  x_ref, y_ref, *rest = refs
  g_ref = rest.pop(0) if opts.gate != "none" else None
  doc_ref = rest.pop(0) if opts.has_seg else None
  u_ref, gam_ref = rest
  BK, BV = opts.blocks.scan_sum_bk, opts.blocks.scan_sum_bv
  n = pl.program_id(1)
  docs = chunk_docs(doc_ref, n * C, C, opts.has_seg)
  x = load(x_ref, 0, C, 0, BK)
  dec = chunk_decay(opts, g_ref, 0, n * C, 0, BK)  # stage 1
  if side == "k":  # keys of the last document, decayed to the chunk's end
    xd = rows(row_out(docs, 0), dec.to_end(x))
  else:  # queries of the first document, decayed from the chunk's start
    xd = rows(row_in(docs, 0), dec.from_start(x * opts.scale))
  gam_ref[...] = carry_mask(docs, dec.gam_vec(BK))
  for vt in range(opts.V // BV):
    y = load(y_ref, 0, C, vt * BV, BV)
    u_ref[:, pl.ds(vt * BV, BV)] = mm(xd, y, opts, ta=True).astype(u_ref.dtype)


def chunk_summaries(x, y, g, doc, opts, side: str, u_dtype):
  """x = k (side "k") or q (side "q") [B, T, H, K]; y = v or do [B, T, H, V]; g the gate operand
  (gates.py; None for gate "none").
  → (U [B·H, N, K, V] u_dtype, γ [B·H, K, N] f32). One program per (K tile, chunk, b·h)."""
  B, T, H, K, V, N = opts.B, opts.T, opts.H, opts.K, opts.V, opts.N
  BK = opts.blocks.scan_sum_bk
  chunk = lambda D, tile: pl.BlockSpec((None, C, None, D),
                                       lambda kt, n, bh: (bh // H, n, bh % H, tile(kt)))
  kt_, full = (lambda kt: kt), (lambda kt: 0)
  in_specs = [chunk(BK, kt_), chunk(V, full)]
  args = [x, y]
  if opts.gate != "none":
    in_specs.append(gate_chunk_spec(opts, BK, kt_))
    args.append(g)
  if opts.has_seg:
    in_specs.append(pl.BlockSpec((None, T), lambda kt, n, bh: (bh // H, 0)))
    args.append(doc)
  return pl.pallas_call(
      functools.partial(chunk_summaries_kernel, opts=opts, side=side),
      grid=(K // BK, N, B * H),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, None, BK, V), lambda kt, n, bh: (bh, n, kt, 0)),
                 pl.BlockSpec((None, BK, None), lambda kt, n, bh: (bh, kt, n))],
      out_shape=[compat.pallas_out_struct((B * H, N, K, V), jnp.dtype(u_dtype), x),
                 compat.pallas_out_struct((B * H, K, N), F32, x)],
      compiler_params=opts.compiler_params(opts.blocks.scan_sum_warps),
      interpret=opts.interpret,
      name=f"{opts.prefix}_chunk_summaries_{side}",
  )(*args)


# ------------------------------------------------------------------------------------------------
# state_scan: h ← γ_n ⊙ h + U_n, elementwise, over the chunks
# ------------------------------------------------------------------------------------------------


def state_scan_kernel(*refs, opts, reverse: bool, has_init: bool):
  u_ref, gam_ref, *rest = refs
  init_ref = rest.pop(0) if has_init else None
  hs_ref, last_ref = rest
  BK, BV, N = opts.blocks.scan_bk, opts.blocks.scan_bv, opts.N
  chunk_of = (lambda j: N - 1 - j) if reverse else (lambda j: j)

  def summary(j):  # loads for step j (clamped: steps past the last load a valid chunk, unused)
    n = chunk_of(jnp.minimum(j, N - 1))
    return u_ref[n].astype(F32), gam_ref[:, pl.ds(n, 1)]  # [BK, BV], [BK, 1]

  # the summaries of the next `depth` steps are in flight while a step's multiply-add waits for its own
  depth = opts.blocks.scan_prefetch

  def body(j, carry):
    h, ahead = carry[0], carry[1:]
    hs_ref[chunk_of(j)] = h.astype(hs_ref.dtype)
    u, gam = ahead[0], ahead[1]
    return (gam * h + u, *ahead[2:], *summary(j + depth))

  h = init_ref[...] if init_ref is not None else jnp.zeros((BK, BV), F32)
  first = tuple(x for j in range(depth) for x in summary(j))
  h, *_ = lax.fori_loop(0, N, body, (h, *first))
  last_ref[...] = h


def state_scan(u, gam, init, opts, reverse: bool):
  """u [B·H, N, K, V], gam [B·H, K, N] from `chunk_summaries`; init [B, H, K, V] f32 or None (zeros).
  → (hs [B·H, N, K, V] opts.state_dtype: the carried value at chunk n before its update — the state
  entering chunk n (forward) or the gradient w.r.t. the state leaving chunk n (reverse) —, the value
  after the whole walk [B, H, K, V] f32). Writes hs over u when their dtypes match."""
  B, H, K, V, N = opts.B, opts.H, opts.K, opts.V, opts.N
  BK, BV = opts.blocks.scan_bk, opts.blocks.scan_bv
  nv = V // BV
  kt, vt = (lambda i: i // nv), (lambda i: i % nv)
  seq = pl.BlockSpec((None, N, BK, BV), lambda i, bh: (bh, 0, kt(i), vt(i)))
  state = pl.BlockSpec((None, None, BK, BV), lambda i, bh: (bh // H, bh % H, kt(i), vt(i)))
  in_specs = [seq, pl.BlockSpec((None, BK, N), lambda i, bh: (bh, kt(i), 0))]
  args = [u, gam]
  if init is not None:
    in_specs.append(state)
    args.append(init)
  hs_dtype = jnp.dtype(opts.state_dtype)
  return pl.pallas_call(
      functools.partial(state_scan_kernel, opts=opts, reverse=reverse, has_init=init is not None),
      grid=((K // BK) * nv, B * H),
      in_specs=in_specs,
      out_specs=[seq, state],
      out_shape=[compat.pallas_out_struct((B * H, N, K, V), hs_dtype, u),
                 compat.pallas_out_struct((B, H, K, V), F32, u)],
      input_output_aliases={0: 0} if u.dtype == hs_dtype else {},
      compiler_params=opts.compiler_params(opts.blocks.scan_warps),
      interpret=opts.interpret,
      name=f"{opts.prefix}_state_scan" + ("_reverse" if reverse else ""),
  )(*args)


# ------------------------------------------------------------------------------------------------
# the two passes
# ------------------------------------------------------------------------------------------------


def chunk_state_pass(k, v, g, h0, doc, opts, final_state: bool = False):
  """`state.chunk_state_pass` as summaries + scan: → hs [B·H, N, K, V] (and the final state)."""
  u_dtype = F32 if final_state else jnp.dtype(opts.state_dtype)
  u, gam = chunk_summaries(k, v, g, doc, opts, "k", u_dtype)
  hs, ht = state_scan(u, gam, h0, opts, reverse=False)
  return (hs, ht) if final_state else hs


def chunk_state_grad_pass(q, do, g, dht, doc, opts):
  """`state.chunk_state_grad_pass` as summaries + reverse scan: → (dhs [B·H, N, K, V], dh0)."""
  w, gam = chunk_summaries(q, do, g, doc, opts, "q", jnp.dtype(opts.state_dtype))
  return state_scan(w, gam, dht, opts, reverse=True)
