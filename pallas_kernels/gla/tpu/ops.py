"""Pallas Mosaic TPU kernels for chunkwise GLA, forward and backward (impl="tpu").

Three kernels, each a grid (B, H, N) with the chunk axis last and sequential ("arbitrary"), the carried
[V, K] state (transposed, see stages.py) in a float32 VMEM scratch initialised under
`pl.when(first chunk)`:

  `gla_chunk_fwd`         stages 1–4: o of every chunk and the final state
  `gla_chunk_state_pass`  stages 1–2 again in the backward: the state entering every chunk (h is not
                          kept by the forward, as in chunk.py and fla)
  `gla_chunk_bwd`         stages 1, 5–7 over the chunks in reverse: dq, dk, dv, dg and d initial_state

Layout: q, k, g are viewed as [B, T, H·K] and v, o as [B, T, H·V] (a free reshape of fla's [B, T, H, K]);
a block is one chunk of one head, (C, K). K and V are zero-padded to multiples of 128 (lanes) and T to a
multiple of C inside; none of it is visible to the caller. Padded gates are 0, so padded tokens and
channels leave the state alone. Block sizes and VMEM use: benchmarks/TPU.md and `model.py`.

Run on CPU with `interpret=True` (Pallas' TPU interpreter with race detection and NaN-filled
uninitialised memory).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import compat
from pallas_kernels.common.checks import CallInfo, check_gla_inputs, default_scale
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.tpu.layout import Dims as _Dims
from pallas_kernels.common.tpu.layout import LANES
from pallas_kernels.common.tpu.layout import doc_layout as _doc_layout
from pallas_kernels.common.tpu.layout import pad_to as _pad_to
from pallas_kernels.common.tpu.layout import to_kernel_layout as _to_kernel_layout
from pallas_kernels.common.tpu.layout import unpack_refs as _unpack
from pallas_kernels.gla.tpu import model as tpu_model
from pallas_kernels.gla.tpu import stages as st

pl = compat.pl
pltpu = compat.pltpu
_f32 = jnp.float32
MAX_DIM = 512  # K, V up to this fit the VMEM budget of tpu_model on v5e / v5p / v6e
G_FLOOR = -60.0  # gates below (−inf is legal) act as this: the Triton kernels' floor (see below)


@dataclasses.dataclass(frozen=True)
class TpuOptions:
  """Static options of one call (hashable: the custom_vjp's non-differentiable argument)."""

  scale: float
  chunk_size: int = 64  # C, tokens per block along T (a multiple of 16)
  sub_chunk: int = 8  # S, the exact log-space diagonal blocks (a power of two dividing C)
  compute_dtype: str = "float32"  # MXU operand dtype (the inputs'); accumulation is always float32
  heads_per_block: int = 1  # heads handled by one grid step (independent work for the VLIW scheduler)
  has_initial_state: bool = False
  has_segments: bool = False
  interpret: bool = False  # run in Pallas' TPU interpreter (CPU tests)
  detect_races: bool = True  # interpreter only


# ------------------------------------------------------------------------------------------------
# pallas_call plumbing
# ------------------------------------------------------------------------------------------------


def _specs(d: _Dims, reverse: bool):
  """BlockSpecs of a (B, H / hb, N) grid; `reverse` walks the chunks from the last one."""
  last = d.N - 1
  chunk = (lambda n: last - n) if reverse else (lambda n: n)
  tokens = lambda D: pl.BlockSpec((None, d.C, d.hb * D), lambda b, h, n: (b, chunk(n), h))
  return dict(
      k=tokens(d.Kp),
      v=tokens(d.Vp),
      state=pl.BlockSpec((None, d.hb, d.Vp, d.Kp), lambda b, h, n: (b, h, 0, 0)),
      chunk_state=pl.BlockSpec((None, d.hb, None, d.Vp, d.Kp), lambda b, h, n: (b, h, chunk(n), 0, 0)),
      doc_col=pl.BlockSpec((None, d.C, 1), lambda b, h, n: (b, chunk(n), 0)),
      doc_row=pl.BlockSpec((None, None, 1, d.C), lambda b, h, n: (b, chunk(n), 0, 0)),
  )


def _call(kernel, opts: TpuOptions, d: _Dims, stage: str, name: str, in_specs, out_specs, out_shape,
          scratch_shapes):
  params = pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "arbitrary"),
      vmem_limit_bytes=tpu_model.vmem_limit_bytes(stage, d.C, d.Kp, d.Vp,
                                                  jnp.dtype(opts.compute_dtype).itemsize, d.hb))
  interpret = compat.tpu_interpret_params(opts.detect_races) if opts.interpret else False
  return pl.pallas_call(kernel, grid=(d.B, d.H // d.hb, d.N), in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, scratch_shapes=scratch_shapes, compiler_params=params,
                        interpret=interpret, name=name)


def _masks(doc_col_ref, doc_row_ref):
  if doc_col_ref is None:
    return st.ChunkMasks()
  return st.chunk_masks(doc_col_ref[...], doc_row_ref[...])


# ------------------------------------------------------------------------------------------------
# forward: stages 1–4, and stages 1–2 alone (the backward's recomputation of h)
# ------------------------------------------------------------------------------------------------


def _fwd_kernel(*refs, opts: TpuOptions, states_only: bool):
  r = _unpack(refs, [("q", not states_only), ("k", True), ("v", True), ("g", True),
                     ("h0", opts.has_initial_state), ("doc_col", opts.has_segments),
                     ("doc_row", opts.has_segments), ("o", not states_only), ("ht", not states_only),
                     ("h", states_only), ("h_scr", True)])
  n = pl.program_id(2)
  cdt = opts.compute_dtype

  @pl.when(n == 0)
  def _init():
    r["h_scr"][...] = (r["h0"][...] if r["h0"] is not None
                       else jnp.zeros(r["h_scr"].shape, _f32))

  masks = _masks(r["doc_col"], r["doc_row"])
  Kp, Vp = r["h_scr"].shape[2], r["h_scr"].shape[1]
  for j in range(opts.heads_per_block):  # independent heads: the scheduler interleaves them
    kc, vc = slice(j * Kp, (j + 1) * Kp), slice(j * Vp, (j + 1) * Vp)
    gates = st.chunk_local_cumsum(r["g"][:, kc], opts.sub_chunk)  # 1
    k, v = r["k"][:, kc], r["v"][:, vc]
    hT = r["h_scr"][j]
    if states_only:
      r["h"][j] = hT.astype(r["h"].dtype)
    else:
      q_scaled = r["q"][:, kc].astype(_f32) * opts.scale
      A = st.chunk_intra_attention(q_scaled, k, gates, masks, opts.sub_chunk, cdt)  # 3
      q_dec = st.decayed_queries(q_scaled, gates, masks)
      r["o"][:, vc] = st.chunk_output(q_dec, v, hT, A, cdt).astype(r["o"].dtype)  # 4
    hT = st.chunk_state_update(hT, k, v, gates, masks, cdt)  # 2
    r["h_scr"][j] = hT
  if not states_only:
    @pl.when(n == pl.num_programs(2) - 1)
    def _final():
      r["ht"][...] = r["h_scr"][...]


def chunk_fwd(opts: TpuOptions, d: _Dims, q, k, v, g, h0T, doc_col, doc_row):
  """o [B, Tp, H·Vp] (v's dtype) and the final transposed state [B, H, Vp, Kp] float32."""
  sp = _specs(d, reverse=False)
  in_specs = [sp["k"], sp["k"], sp["v"], sp["k"]]
  args = [q, k, v, g]
  if opts.has_initial_state:
    in_specs.append(sp["state"]); args.append(h0T)
  if opts.has_segments:
    in_specs += [sp["doc_col"], sp["doc_row"]]; args += [doc_col, doc_row]
  out_shape = (jax.ShapeDtypeStruct((d.B, d.N * d.C, d.H * d.Vp), v.dtype),
               jax.ShapeDtypeStruct((d.B, d.H, d.Vp, d.Kp), _f32))
  kernel = functools.partial(_fwd_kernel, opts=opts, states_only=False)
  return _call(kernel, opts, d, "fwd", "gla_chunk_fwd", in_specs, (sp["v"], sp["state"]), out_shape,
               [pltpu.VMEM((d.hb, d.Vp, d.Kp), _f32)])(*args)


def chunk_state_pass(opts: TpuOptions, d: _Dims, k, v, g, h0T, doc_col, doc_row):
  """The transposed state entering every chunk, [B, H, N, Vp, Kp] in the compute dtype."""
  sp = _specs(d, reverse=False)
  in_specs = [sp["k"], sp["v"], sp["k"]]
  args = [k, v, g]
  if opts.has_initial_state:
    in_specs.append(sp["state"]); args.append(h0T)
  if opts.has_segments:
    in_specs += [sp["doc_col"], sp["doc_row"]]; args += [doc_col, doc_row]
  out_shape = jax.ShapeDtypeStruct((d.B, d.H, d.N, d.Vp, d.Kp), jnp.dtype(opts.compute_dtype))
  kernel = functools.partial(_fwd_kernel, opts=opts, states_only=True)
  return _call(kernel, opts, d, "state_pass", "gla_chunk_state_pass", in_specs, sp["chunk_state"],
               out_shape, [pltpu.VMEM((d.hb, d.Vp, d.Kp), _f32)])(*args)


# ------------------------------------------------------------------------------------------------
# backward: stages 1, 5–7 over the chunks in reverse
# ------------------------------------------------------------------------------------------------


def _bwd_kernel(*refs, opts: TpuOptions):
  r = _unpack(refs, [("q", True), ("k", True), ("v", True), ("g", True), ("h", True), ("do", True),
                     ("dhtT", True), ("doc_col", opts.has_segments), ("doc_row", opts.has_segments),
                     ("dq", True), ("dk", True), ("dv", True), ("dg", True),
                     ("dh0", opts.has_initial_state), ("dh_scr", True)])
  i = pl.program_id(2)  # the chunk is N − 1 − i
  cdt = opts.compute_dtype

  @pl.when(i == 0)
  def _init():
    r["dh_scr"][...] = r["dhtT"][...]

  masks = _masks(r["doc_col"], r["doc_row"])
  doc_col = None if r["doc_col"] is None else r["doc_col"][...]
  Kp, Vp = r["dh_scr"].shape[2], r["dh_scr"].shape[1]
  for j in range(opts.heads_per_block):  # independent heads: the scheduler interleaves them
    kc, vc = slice(j * Kp, (j + 1) * Kp), slice(j * Vp, (j + 1) * Vp)
    gates = st.chunk_local_cumsum(r["g"][:, kc], opts.sub_chunk)  # 1
    q_scaled = r["q"][:, kc].astype(_f32) * opts.scale
    k, v, do = r["k"][:, kc], r["v"][:, vc], r["do"][:, vc]
    hT = r["h"][j]
    dhT = r["dh_scr"][j]  # w.r.t. the state leaving this chunk
    dq, dk, dv, dG, dk_inter = st.chunk_grads(q_scaled, k, v, do, gates, hT, dhT, masks,
                                              opts.sub_chunk, cdt)  # 6
    r["dg"][:, kc] = st.chunk_gate_grad(k, gates, hT, dhT, dG, dk_inter, masks, doc_col)  # 7
    r["dq"][:, kc] = (dq * opts.scale).astype(r["dq"].dtype)
    r["dk"][:, kc] = dk.astype(r["dk"].dtype)
    r["dv"][:, vc] = dv.astype(r["dv"].dtype)
    q_dec = st.decayed_queries(q_scaled, gates, masks)
    r["dh_scr"][j] = st.chunk_state_grad_update(dhT, q_dec, do, gates, masks, cdt)  # 5
  if r["dh0"] is not None:
    @pl.when(i == pl.num_programs(2) - 1)
    def _final():
      r["dh0"][...] = r["dh_scr"][...]


def chunk_bwd(opts: TpuOptions, d: _Dims, q, k, v, g, hs, do, dhtT, doc_col, doc_row):
  """dq, dk (q's dtype), dv (v's dtype), dg (float32) in the kernel layout, and dh0ᵀ (or None)."""
  sp = _specs(d, reverse=True)
  in_specs = [sp["k"], sp["k"], sp["v"], sp["k"], sp["chunk_state"], sp["v"], sp["state"]]
  args = [q, k, v, g, hs, do, dhtT]
  if opts.has_segments:
    in_specs += [sp["doc_col"], sp["doc_row"]]; args += [doc_col, doc_row]
  Tp = d.N * d.C
  out_specs = [sp["k"], sp["k"], sp["v"], sp["k"]]
  out_shape = [jax.ShapeDtypeStruct((d.B, Tp, d.H * d.Kp), q.dtype),
               jax.ShapeDtypeStruct((d.B, Tp, d.H * d.Kp), k.dtype),
               jax.ShapeDtypeStruct((d.B, Tp, d.H * d.Vp), v.dtype),
               jax.ShapeDtypeStruct((d.B, Tp, d.H * d.Kp), _f32)]
  if opts.has_initial_state:
    out_specs.append(sp["state"])
    out_shape.append(jax.ShapeDtypeStruct((d.B, d.H, d.Vp, d.Kp), _f32))
  kernel = functools.partial(_bwd_kernel, opts=opts)
  outs = _call(kernel, opts, d, "bwd", "gla_chunk_bwd", in_specs, tuple(out_specs), tuple(out_shape),
               [pltpu.VMEM((d.hb, d.Vp, d.Kp), _f32)])(*args)
  return (*outs[:4], outs[4] if opts.has_initial_state else None)


# ------------------------------------------------------------------------------------------------
# the op: custom_vjp over the kernel layout
# ------------------------------------------------------------------------------------------------


def _dims(opts: TpuOptions, q, v, H: int) -> _Dims:
  B, Tp, HK = q.shape
  return _Dims(B=B, H=H, N=Tp // opts.chunk_size, C=opts.chunk_size, Kp=HK // H,
               Vp=v.shape[-1] // H, hb=opts.heads_per_block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunk_gla_tpu(opts: TpuOptions, H: int, q, k, v, g, h0T, doc_col, doc_row):
  return chunk_fwd(opts, _dims(opts, q, v, H), q, k, v, g, h0T, doc_col, doc_row)


def _fwd_rule(opts, H, q, k, v, g, h0T, doc_col, doc_row):
  out = chunk_fwd(opts, _dims(opts, q, v, H), q, k, v, g, h0T, doc_col, doc_row)
  return out, (q, k, v, g, h0T, doc_col, doc_row)


def _bwd_rule(opts, H, residuals, cotangents):
  q, k, v, g, h0T, doc_col, doc_row = residuals
  do, dhtT = cotangents
  d = _dims(opts, q, v, H)
  hs = chunk_state_pass(opts, d, k, v, g, h0T, doc_col, doc_row)  # 1–2 recomputed
  dq, dk, dv, dg, dh0T = chunk_bwd(opts, d, q, k, v, g, hs, do.astype(v.dtype), dhtT, doc_col,
                                   doc_row)  # 1, 5–7
  zeros_like = lambda x: None if x is None else jnp.zeros_like(x)
  return (dq, dk, dv, dg.astype(g.dtype), dh0T, zeros_like(doc_col), zeros_like(doc_row))


_chunk_gla_tpu.defvjp(_fwd_rule, _bwd_rule)


def chunk_gla_tpu(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                  segment_ids=None, chunk_size=64, sub_chunk=8, heads_per_block=None,
                  interpret=False, detect_races=True):
  """Chunkwise GLA with the Pallas Mosaic TPU kernels (`chunk_gla`'s contract).

  Args:
    q, k, g: [B, T, H, K]; v: [B, T, H, V]; any T, K, V (padded inside; K, V ≤ 512 are budgeted).
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V] (used in float32).
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id.
    chunk_size: C, the block length along T (a multiple of 16).
    sub_chunk: S, the exact log-space diagonal blocks (a power of two, 8 or more, dividing C).
    heads_per_block: heads one grid step works on (a divisor of H); None: `tpu_model.heads_per_block`.
    interpret: run the kernels in Pallas' TPU interpreter (any backend; for tests on CPU).
    detect_races: the interpreter's race detector (interpret only).

  Returns:
    (o [B, T, H, V] in v's dtype, final_state [B, H, K, V] float32 or None); differentiable w.r.t. q, k,
    v, g and initial_state.

  Example:
    >>> B, T, H, K, V = 2, 100, 4, 64, 128
    >>> q = k = jnp.ones((B, T, H, K), jnp.bfloat16); v = jnp.ones((B, T, H, V), jnp.bfloat16)
    >>> g = jax.nn.log_sigmoid(jnp.zeros((B, T, H, K))) / 16
    >>> o, ht = chunk_gla_tpu(q, k, v, g, output_final_state=True, interpret=True)
  """
  info = check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state,
                          segment_ids=segment_ids, chunk_size=chunk_size)
  return _chunk_gla_tpu_checked(info, q, k, v, g, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state, segment_ids=segment_ids,
                                chunk_size=chunk_size, sub_chunk=sub_chunk,
                                heads_per_block=heads_per_block, interpret=interpret,
                                detect_races=detect_races)


def _chunk_gla_tpu_checked(info: CallInfo, q, k, v, g, *, scale=None, initial_state=None,
                           output_final_state=False, segment_ids=None, chunk_size=64, sub_chunk=8,
                           heads_per_block=None, interpret=False, detect_races=True):
  B, T, H, K, V = info.B, info.T, info.H, info.K, info.V
  C = chunk_size
  Tp, Kp, Vp = _pad_to(T, C), _pad_to(K, LANES), _pad_to(V, LANES)
  if sub_chunk not in (8, 16, 32, 64) or C % sub_chunk:
    raise ValueError(f"sub_chunk must be 8, 16, 32 or 64 and divide chunk_size={C}, got {sub_chunk!r}")
  if heads_per_block is None:
    heads_per_block = tpu_model.heads_per_block(H, C, Kp, Vp, info.dtype.itemsize)
  if not isinstance(heads_per_block, int) or heads_per_block < 1 or H % heads_per_block:
    raise ValueError(f"heads_per_block must be a positive divisor of H={H}, got {heads_per_block!r}")
  opts = TpuOptions(scale=default_scale(scale, K), chunk_size=C, sub_chunk=sub_chunk,
                    heads_per_block=heads_per_block, compute_dtype=info.dtype.name,
                    has_initial_state=initial_state is not None,
                    has_segments=segment_ids is not None, interpret=interpret,
                    detect_races=detect_races)
  h0T = None
  if initial_state is not None:
    h0 = jnp.pad(initial_state.astype(_f32), ((0, 0), (0, 0), (0, Kp - K), (0, Vp - V)))
    h0T = jnp.swapaxes(h0, -1, -2)
  doc_col, doc_row = _doc_layout(segment_ids, C) if segment_ids is not None else (None, None)
  # −inf − (−inf) of chunk cumsums would be NaN: floored entries give e^{−60} ≈ 0 at float32 resolution
  # and, through `where`, the gradient 0 (the true e^g·(…) ≈ 0); gates ≥ G_FLOOR pass unchanged
  g = jnp.where(g < G_FLOOR, jnp.asarray(G_FLOOR, g.dtype), g)
  o, htT = _chunk_gla_tpu(opts, H, _to_kernel_layout(q, Tp, Kp), _to_kernel_layout(k, Tp, Kp),
                          _to_kernel_layout(v, Tp, Vp), _to_kernel_layout(g, Tp, Kp), h0T, doc_col,
                          doc_row)
  o = o.reshape(B, Tp, H, Vp)[:, :T, :, :V]
  if not output_final_state:
    return o, None
  return o, jnp.swapaxes(htT, -1, -2)[:, :, :K, :V]


def _check(info: CallInfo) -> str | None:
  if info.K > MAX_DIM or info.V > MAX_DIM:
    return f"K={info.K}, V={info.V}: the TPU kernels budget VMEM for K, V ≤ {MAX_DIM}"
  if info.chunk_size > 256:
    return f"chunk_size={info.chunk_size} > 256 (the VMEM budget of the TPU kernels)"
  return None


# explicit-only (`impl="tpu"`): not in `impl="auto"`'s TPU list until the kernels have run on a TPU
IMPLEMENTATION = Implementation("tpu", _chunk_gla_tpu_checked, platforms=frozenset({"tpu"}),
                                check=_check)
