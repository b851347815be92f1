"""GLA on NVIDIA GPUs: Pallas kernels lowered through Pallas' Triton backend, forward and backward.

    o, final_state = chunk_gla_triton(q, k, v, g, scale=None, initial_state=None,
                                      output_final_state=False, segment_ids=None, interpret=False)

Registered as `chunk_gla(..., impl="triton")` and preferred by `impl="auto"` on GPUs. The stages mirror
`chunk.py` by name (chunk_local_cumsum, chunk_state_pass, chunk_intra_attention, chunk_output,
chunk_state_grad_pass, chunk_grads, chunk_gate_grad); the kernels:

  forward   `chunk_fwd` (fwd.py)        stages 1–4 fused, sequential over chunks, state in registers
            or, for long sequences with few batch·heads, `chunk_state_pass` + `chunk_output`
            (sequence-parallel: h of every chunk → HBM, then every chunk's output in parallel);
            `chunk_intra_fixup` adds the two-level intra part for the rare chunks that need it
  backward  `chunk_state_pass` (fwd.py)  stage 2 again: h entering each chunk → HBM
            `chunk_state_grad_pass`            stage 5: dh leaving each chunk → HBM, and d initial_state
            `chunk_grads` (bwd.py)      stages 6–7: dq, dk, dv, dg, one program per chunk
  From 64 chunks on, both state passes (and the sequence-parallel forward's) are two-phase scans
  (scan.py): per-chunk summaries in parallel, then an elementwise chain over the chunks.

Every chunk (64 tokens) takes one of two exact decompositions (common.py): "dense" (the whole
chunk as one block, tensor-core matmuls only) while the chunk's decay span is below 40 nats, which holds
for the usual gates (logsigmoid(x)/16 spans ~3); otherwise "two-level" (16-token sub-chunks, reference-row
matmuls off the diagonal, float32 log space on diagonal blocks whose own span is large). Strong decay
(g ≈ −20 per token) therefore stays exact, never overflows and keeps dg's cancellation-free structure.

What the backward stores vs recomputes: the fused forward saves nothing but its inputs (q, k, v, g,
initial_state, the document index); no states, no A. Its backward recomputes h per chunk
(`chunk_state_pass`, reading k, v, g once more) and materialises h and dh per chunk, [B·H, N, K, V]
each (bf16 for bf16 inputs, f32 otherwise), for the chunk-parallel `chunk_grads`; A and dA are
recomputed there. The sequence-parallel forward writes h of every chunk to HBM anyway (from float32
chunk summaries); with `keep_states` (default) those states are residuals and the backward skips its
state pass: one pass over k, v, g and one write of h less, for h [B·H, N, K, V] alive from the forward to
the backward (2,8192,16,128,128 bf16: 134 MB per call; 1,32768,16,128,128: 268 MB). Measured on the H200
(benchmarks/RESULTS.md, 2026-12-04): fwd+bwd 2.146 → 1.891 ms at 2,8192,16,128,128, 2.336 → 2.018 at T
16K, 4.531 → 3.908 at T 32K. At the GLA 1.3B layer shape (B=8, T=2048, H=4, K=256, V=512, bf16; the
fused forward) the residuals are the inputs (q, k, v bf16 + g f32: 8·2048·4·(256·2·2 + 512·2 + 256·4) B
= 192 MiB, alive for the layer anyway) and the backward's transient states are 2 × 8·4·32·256·512·2 B =
512 MiB (h and dh; 1 GiB in f32). Making the fused forward write h instead would keep 256 MiB per layer
alive until the backward (6 GiB for 24 layers) to save one state pass (~0.5 ms of ~4 ms at that shape on
an H100).

Inputs: any T (padded to a multiple of 64 inside), any K and V in 16..512 (padded to a power of two up to
64 and to a multiple of 64 above), bf16/fp16/f32 q, k, v (bf16 uses bf16 tensor-core operands, fp16 and
f32 use f32 operands, f32 multiplies exactly), g float32 or the input dtype, float32 initial and
final states.
`chunk_size` is accepted for the op contract; the kernels always use 64-token chunks (the result does not
depend on the chunk size).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, check_gla_inputs, default_scale
from pallas_kernels.common.chunking import pad_axis
from pallas_kernels.common.segments import doc_index
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.triton.gates import G_FLOOR
from pallas_kernels.gla.triton.bwd import chunk_grads, chunk_state_grad_pass
from pallas_kernels.gla.triton.common import C, F32, PATHS, BlockSizes, KernelOptions, padded_dim
from pallas_kernels.gla.triton.fwd import chunk_fwd, chunk_fwd_states, chunk_state_pass

MAX_DIM = 512


# ------------------------------------------------------------------------------------------------
# custom_vjp over padded inputs
# ------------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_gla(opts: KernelOptions, q, k, v, g, h0, doc):
  return chunk_fwd(q, k, v, g, h0, doc, opts)


def _chunk_gla_fwd_rule(opts, q, k, v, g, h0, doc):
  o, ht, hs = chunk_fwd_states(q, k, v, g, h0, doc, opts)
  return (o, ht), (q, k, v, g, h0, doc, hs if opts.keep_states else None)


def _chunk_gla_bwd_rule(opts, residuals, cotangents):
  """dq, dk, dv, dg, dh0; residuals (q, k, v, g, h0, doc, hs): hs the forward's per-chunk states, or
  None (the fused forward keeps them in registers, or `keep_states` is off) to recompute them."""
  q, k, v, g, h0, doc, hs = residuals
  do, dht = cotangents
  do = do.astype(v.dtype)
  if hs is None:
    hs = chunk_state_pass(k, v, g, h0, doc, opts)  # 2 (recomputed)
  dhs, dh0 = chunk_state_grad_pass(q, do, g, dht.astype(F32), doc, opts)  # 5
  dq, dk, dg, dv = chunk_grads(q, k, g, v, do, hs, dhs, doc, opts)  # 6, 7
  dh0 = None if h0 is None else dh0.astype(h0.dtype)
  return dq, dk, dv, dg, dh0, None


_chunk_gla.defvjp(_chunk_gla_fwd_rule, _chunk_gla_bwd_rule)


# ------------------------------------------------------------------------------------------------
# the op
# ------------------------------------------------------------------------------------------------


def chunk_gla_triton(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                     segment_ids=None, chunk_size=64, interpret: bool = False, path: str = "auto",
                     block_sizes: BlockSizes | None = None, state_dtype: str | None = None,
                     keep_states: bool = True):
  """Chunkwise GLA with Pallas Triton kernels (`chunk_gla`'s contract; see the module docstring).

  Args:
    q, k, g: [B, T, H, K]; v: [B, T, H, V]; any T, K and V in 16..512.
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V] or None.
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id.
    chunk_size: accepted for the op contract (a multiple of 16); the kernels use 64.
    interpret: run the same kernels in Pallas interpret mode (CPU tests).
    path: "auto" (per chunk: dense when safe, else two-level); "dense", "two_level", "exact" force one
      decomposition (tests; "dense" overflows under strong decay).
    block_sizes: tile sizes / warps (default `BlockSizes.get_default`).
    state_dtype: dtype of the per-chunk states the backward materialises (default: bf16 for bf16
      inputs, else f32).
    keep_states: where the forward is sequence-parallel (`BlockSizes.fwd_parallel`) it writes h of
      every chunk to HBM; keep them as residuals for the backward (default) instead of recomputing
      them there — one state pass less, [B·H, N, K, V] in `state_dtype` alive until the backward.

  Returns:
    (o [B, T, H, V] in v.dtype, final_state [B, H, K, V] float32 or None); differentiable w.r.t. q, k,
    v, g and initial_state.

  Example:
    >>> B, T, H, K, V = 2, 100, 2, 32, 48
    >>> q = k = jnp.ones((B, T, H, K), jnp.float32); v = jnp.ones((B, T, H, V), jnp.float32)
    >>> g = jnp.full((B, T, H, K), -0.1)
    >>> o, ht = chunk_gla_triton(q, k, v, g, output_final_state=True, interpret=True)
  """
  info = check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state,
                          segment_ids=segment_ids, chunk_size=chunk_size)
  return _chunk_gla_triton(info, q, k, v, g, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, segment_ids=segment_ids,
                           interpret=interpret, path=path, block_sizes=block_sizes,
                           state_dtype=state_dtype, keep_states=keep_states)


def _chunk_gla_triton(info: CallInfo, q, k, v, g, *, scale=None, initial_state=None,
                      output_final_state=False, segment_ids=None, chunk_size=64,
                      interpret: bool = False, path: str = "auto",
                      block_sizes: BlockSizes | None = None, state_dtype: str | None = None,
                      keep_states: bool = True):
  del chunk_size
  opts, (qp, kp, vp, gp, h0, doc) = prepare(q, k, v, g, info=info, scale=scale,
                                            initial_state=initial_state, segment_ids=segment_ids,
                                            interpret=interpret, path=path, block_sizes=block_sizes,
                                            state_dtype=state_dtype, keep_states=keep_states)
  o, ht = _chunk_gla(opts, qp, kp, vp, gp, h0, doc)
  T, K, V = q.shape[1], q.shape[3], v.shape[3]
  o = o[:, :T, :, :V]
  return o, (ht[:, :, :K, :V] if output_final_state else None)


def prepare(q, k, v, g, *, info: CallInfo | None = None, scale=None, initial_state=None,
            segment_ids=None, chunk_size=64, interpret=False, path="auto", block_sizes=None,
            state_dtype=None, keep_states=True):
  """Checks a call (unless `info` is given) and returns (KernelOptions, the kernels' padded operands
  (q, k, v, g, h0, doc))."""
  if info is None:
    info = check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state,
                            segment_ids=segment_ids, chunk_size=chunk_size)
  reason = check_call(info)
  if reason is not None:
    raise ValueError(reason)
  if path not in PATHS:
    raise ValueError(f"path must be one of {PATHS}, got {path!r}")
  B, T, H, K, V = info.B, info.T, info.H, info.K, info.V
  Tp, Kp, Vp = -(-T // C) * C, padded_dim(K), padded_dim(V)
  blocks = block_sizes or BlockSizes.get_default(B, H, Kp, Vp, Tp)
  if state_dtype is None:  # bf16 inputs: bf16 states (their products are rounded to bf16 anyway)
    state_dtype = "bfloat16" if q.dtype == jnp.bfloat16 else "float32"
  opts = KernelOptions(scale=default_scale(scale, K), B=B, H=H, T=Tp, K=Kp, V=Vp,
                       dtype=jnp.dtype(q.dtype).name, g_dtype=jnp.dtype(g.dtype).name,
                       has_h0=initial_state is not None, has_seg=segment_ids is not None,
                       blocks=blocks, path=path, interpret=interpret, state_dtype=state_dtype,
                       keep_states=_check_keep_states(keep_states))
  # zero padding is inert: k = v = 0 adds nothing to the state, g = 0 does not decay it
  pad_k = lambda x: pad_axis(pad_axis(x, 1, Tp), 3, Kp)
  h0 = None
  if initial_state is not None:
    h0 = pad_axis(pad_axis(initial_state.astype(F32), 2, Kp), 3, Vp)
  doc = None
  if segment_ids is not None:  # padding continues the last document
    doc = pad_axis(doc_index(segment_ids), 1, Tp, mode="edge")
  # −inf (legal) → G_FLOOR, as simple GLA's kernels do: the kernels take differences of chunk cumsums,
  # and −inf − (−inf) is NaN; e^{−60} is 0 at float32 resolution, and `where` gives those entries the
  # gradient 0 (the true e^g·(…) ≈ 0). Gates ≥ G_FLOOR are passed unchanged.
  g = jnp.where(g < G_FLOOR, jnp.asarray(G_FLOOR, g.dtype), g)
  return opts, (pad_k(q), pad_k(k), pad_axis(pad_axis(v, 1, Tp), 3, Vp), pad_k(g), h0, doc)


def _check_keep_states(keep_states) -> bool:
  if not isinstance(keep_states, bool):
    raise ValueError(f"keep_states must be True or False, got {keep_states!r}")
  return keep_states


def check_call(info: CallInfo) -> str | None:
  """Why the Triton kernels cannot serve a call (None if they can)."""
  if info.K > MAX_DIM or info.V > MAX_DIM:
    return f"K and V must be at most {MAX_DIM}, got K={info.K}, V={info.V}"
  return None


IMPLEMENTATION = Implementation("triton", _chunk_gla_triton, platforms=frozenset({"gpu"}),
                                check=check_call)
