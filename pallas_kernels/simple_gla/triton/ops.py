"""Simple GLA on NVIDIA GPUs: Pallas kernels lowered through Pallas' Triton backend, forward and backward.

    o, final_state = chunk_simple_gla_triton(q, k, v, g=None, g_gamma=None, scale=None,
                                             initial_state=None, output_final_state=False,
                                             segment_ids=None, interpret=False)

`chunk_simple_gla`'s contract (docs/ops.md): S_t = e^{g_t,h} S_{t−1} + k_tᵀ v_t with g [B, T, H] a log
decay per token ("scalar"), g_gamma [H] a constant log decay per head ("constant"), or neither ("none");
o_t = scale q_t S_t. The gate kind is a static switch of the same kernels (common/triton/gates.py).

  forward   `chunk_fwd` (fwd.py): fused, sequential over chunks, state in registers; or, for long
            sequences with few batch·heads, the shared `chunk_state_pass` + `chunk_output`
  backward  `chunk_state_pass` (h entering each chunk, recomputed) and `chunk_state_grad_pass`
            (dh leaving each chunk, d initial_state) — the kernels GLA uses too
            (common/triton/state.py, two-phase scans from 64 chunks on: common/triton/scan.py) —
            then `chunk_grads` (bwd.py): dq, dk, dv and dg, one program per chunk.

With a scalar decay every chunk is one dense block (no sub-chunks, no span check): all exponents are
differences G_t − G_s ≤ 0 of float32 chunk cumsums. g = −inf is legal: entries below −60 act as −60
(e^{−60} is zero at float32 resolution) and get a zero gradient. g_gamma gets no gradient (as in fla):
it is treated as a constant. The fused forward saves only its inputs; the backward materialises h and
dh per chunk ([B·H, N, K, V] each, bf16 for bf16 inputs). The sequence-parallel forward writes h per
chunk anyway: with `keep_states` (default) the backward takes them as residuals instead of recomputing
them (H200, 2026-12-04: fwd+bwd 1.376 → 1.179 ms at 2,8192,16,128,128, 3.075 → 2.547 at 1,32768,16,...).

Inputs: any T (padded to a multiple of 64 inside), K and V in 1..512 (padded like GLA's kernels),
bf16/fp16/f32 q, k, v (bf16 uses bf16 tensor-core operands, fp16 and f32 use f32 operands), g float32
or the input dtype, float32 states. `chunk_size` is accepted for the contract; the kernels use 64.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, check_simple_gla_inputs, default_scale
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.segments import doc_index
from pallas_kernels.common.triton import state as shared_state
from pallas_kernels.common.triton.gates import G_FLOOR, gamma_operand
from pallas_kernels.common.chunking import pad_axis
from pallas_kernels.common.triton.tiles import C, F32, padded_dim
from pallas_kernels.simple_gla.triton.bwd import chunk_grads
from pallas_kernels.simple_gla.triton.common import BlockSizes, KernelOptions
from pallas_kernels.simple_gla.triton.fwd import chunk_fwd, chunk_fwd_states

MAX_DIM = 512


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_simple_gla(opts: KernelOptions, q, k, v, g, h0, doc):
  return chunk_fwd(q, k, v, g, h0, doc, opts)


def _fwd_rule(opts, q, k, v, g, h0, doc):
  o, ht, hs = chunk_fwd_states(q, k, v, g, h0, doc, opts)
  return (o, ht), (q, k, v, g, h0, doc, hs if opts.keep_states else None)


def _bwd_rule(opts, residuals, cotangents):
  """dq, dk, dv, dg, dh0; residuals (q, k, v, g, h0, doc, hs): hs the forward's per-chunk states, or
  None (the fused forward keeps them in registers, or `keep_states` is off) to recompute them."""
  q, k, v, g, h0, doc, hs = residuals
  do, dht = cotangents
  do = do.astype(v.dtype)
  if hs is None:
    hs = shared_state.chunk_state_pass(k, v, g, h0, doc, opts)  # recomputed
  dhs, dh0 = shared_state.chunk_state_grad_pass(q, do, g, dht.astype(F32), doc, opts)
  dq, dk, dv, *dg = chunk_grads(q, k, v, do, g, hs, dhs, doc, opts)
  if opts.gate == "scalar":  # clamped entries (g < G_FLOOR, −inf included): d/dg = e^g·(…) = 0
    dg = jnp.where(g.astype(F32) < G_FLOOR, 0.0, dg[0]).astype(g.dtype)
  else:
    dg = None if g is None else jnp.zeros_like(g)
  dh0 = None if h0 is None else dh0.astype(h0.dtype)
  return dq, dk, dv, dg, dh0, None


_chunk_simple_gla.defvjp(_fwd_rule, _bwd_rule)


def chunk_simple_gla_triton(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                            output_final_state=False, segment_ids=None, chunk_size=64,
                            interpret: bool = False, block_sizes: BlockSizes | None = None,
                            state_dtype: str | None = None, keep_states: bool = True):
  """Chunkwise simple GLA with Pallas Triton kernels (`chunk_simple_gla`'s contract; module docstring).

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V]; any T, K and V up to 512.
    g: [B, T, H] log decay per token and head (≤ 0; −inf allowed), or None.
    g_gamma: [H] constant log decay per head, or None (at most one of g, g_gamma; neither: no decay).
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V] or None.
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id.
    chunk_size: accepted for the op contract (a multiple of 16); the kernels use 64.
    interpret: run the same kernels in Pallas interpret mode (CPU tests).
    block_sizes: tile sizes / warps (default `BlockSizes.get_default`).
    state_dtype: dtype of the per-chunk states of the backward (default bf16 for bf16 inputs, else f32).
    keep_states: where the forward is sequence-parallel (`BlockSizes.fwd_parallel`) it writes h of
      every chunk to HBM; keep them as residuals for the backward (default) instead of recomputing
      them there — one state pass less, [B·H, N, K, V] in `state_dtype` alive until the backward.

  Returns:
    (o [B, T, H, V] in v.dtype, final_state [B, H, K, V] float32 or None); differentiable w.r.t. q, k,
    v, g and initial_state.

  Example:
    >>> B, T, H, K, V = 2, 100, 2, 32, 48
    >>> q = k = jnp.ones((B, T, H, K), jnp.float32); v = jnp.ones((B, T, H, V), jnp.float32)
    >>> g = jnp.full((B, T, H), -0.1)
    >>> o, ht = chunk_simple_gla_triton(q, k, v, g, output_final_state=True, interpret=True)
  """
  info = check_simple_gla_inputs(q, k, v, g, g_gamma=g_gamma, scale=scale,
                                 initial_state=initial_state, segment_ids=segment_ids,
                                 chunk_size=chunk_size)
  reason = check_call(info)
  if reason is not None:
    raise ValueError(reason)
  return _chunk_simple_gla_triton(info, q, k, v, g, g_gamma=g_gamma, scale=scale,
                                  initial_state=initial_state, output_final_state=output_final_state,
                                  segment_ids=segment_ids, interpret=interpret,
                                  block_sizes=block_sizes, state_dtype=state_dtype,
                                  keep_states=keep_states)


def _chunk_simple_gla_triton(info: CallInfo, q, k, v, g=None, *, g_gamma=None, scale=None,
                             initial_state=None, output_final_state=False, segment_ids=None,
                             chunk_size=64, interpret: bool = False,
                             block_sizes: BlockSizes | None = None, state_dtype: str | None = None,
                             keep_states: bool = True):
  del chunk_size
  opts, operands = prepare(info, q, k, v, g, g_gamma=g_gamma, scale=scale,
                           initial_state=initial_state, segment_ids=segment_ids,
                           interpret=interpret, block_sizes=block_sizes, state_dtype=state_dtype,
                           keep_states=keep_states)
  o, ht = _chunk_simple_gla(opts, *operands)
  o = o[:, :info.T, :, :info.V]
  return o, (ht[:, :, :info.K, :info.V] if output_final_state else None)


def prepare(info: CallInfo, q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
            segment_ids=None, interpret=False, block_sizes=None, state_dtype=None, keep_states=True):
  """→ (KernelOptions, the kernels' padded operands (q, k, v, gate operand, h0, doc)) of a checked call."""
  B, T, H, K, V = info.B, info.T, info.H, info.K, info.V
  Tp, Kp, Vp = -(-T // C) * C, padded_dim(K), padded_dim(V)
  blocks = block_sizes or BlockSizes.get_default(B, H, Kp, Vp, Tp)
  check_blocks(blocks, Kp, Vp)
  if state_dtype is None:  # bf16 inputs: bf16 states (their products are rounded to bf16 anyway)
    state_dtype = "bfloat16" if q.dtype == jnp.bfloat16 else "float32"
  opts = KernelOptions(scale=default_scale(scale, K), B=B, H=H, T=Tp, K=Kp, V=Vp,
                       dtype=jnp.dtype(q.dtype).name, gate=info.gate, t_valid=T,
                       has_h0=initial_state is not None, has_seg=segment_ids is not None,
                       blocks=blocks, interpret=interpret, state_dtype=state_dtype,
                       keep_states=_check_keep_states(keep_states))
  # zero padding is inert: k = v = 0 adds nothing to the state, g = 0 does not decay it
  pad_k = lambda x: pad_axis(pad_axis(x, 1, Tp), 3, Kp)
  gate = None
  if info.gate == "scalar":
    gate = pad_axis(g, 1, Tp)
  elif info.gate == "constant":  # a constant: no gradient (fla gives none)
    gate = gamma_operand(jax.lax.stop_gradient(g_gamma))
  h0 = None
  if initial_state is not None:
    h0 = pad_axis(pad_axis(initial_state.astype(F32), 2, Kp), 3, Vp)
  doc = None
  if segment_ids is not None:  # padding continues the last document
    doc = pad_axis(doc_index(segment_ids), 1, Tp, mode="edge")
  return opts, (pad_k(q), pad_k(k), pad_axis(pad_axis(v, 1, Tp), 3, Vp), gate, h0, doc)


def _check_keep_states(keep_states) -> bool:
  if not isinstance(keep_states, bool):
    raise ValueError(f"keep_states must be True or False, got {keep_states!r}")
  return keep_states


def check_blocks(blocks: BlockSizes, Kp: int, Vp: int) -> None:
  """ValueError unless every K tile divides the padded K and every V tile the padded V (the kernels run
  K // tile tiles: a tile that does not divide would leave columns unwritten)."""
  for f in dataclasses.fields(blocks):
    tile, dim = getattr(blocks, f.name), (Kp if f.name.endswith("_bk") else Vp)
    if f.name.endswith(("_bk", "_bv")) and (tile < 1 or dim % tile):
      raise ValueError(f"block_sizes.{f.name}={tile} must divide the padded "
                       f"{'K' if f.name.endswith('_bk') else 'V'}={dim}")


def check_call(info: CallInfo) -> str | None:
  """Why the Triton kernels cannot serve a call (None if they can)."""
  if info.gate not in ("scalar", "constant", "none"):
    return f"gate kind must be scalar, constant or none, got {info.gate!r}"
  if info.K > MAX_DIM or info.V > MAX_DIM:
    return f"K and V must be at most {MAX_DIM}, got K={info.K}, V={info.V}"
  return None


IMPLEMENTATION = Implementation("triton", _chunk_simple_gla_triton, platforms=frozenset({"gpu"}),
                                check=check_call)
