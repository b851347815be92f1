"""Pallas Mosaic TPU kernels for chunkwise simple GLA, forward and backward (impl="tpu").

Gate kinds (static, one kernel each): "scalar" g [B, T, H], "constant" g_gamma [H], "none". Three
kernels, as GLA's (`pallas_kernels/gla/tpu/ops.py`), each a grid (B, H / heads_per_block, N) with the
chunk axis last and sequential ("arbitrary"), the carried transposed state hT [V, K] in a float32 VMEM
scratch initialised under `pl.when(first chunk)`:

  `simple_gla_chunk_fwd`         stages 1–4: o of every chunk and the final state
  `simple_gla_chunk_state_pass`  stages 1–2 again in the backward: the state entering every chunk
  `simple_gla_chunk_bwd`         stages 1, 5–7 over the chunks in reverse: dq, dk, dv, dg, d initial_state

Layout: q, k as [B, Tp, H·Kp], v, o as [B, Tp, H·Vp] (K, V zero-padded to 128 lanes, T to a multiple of
C; a free reshape when nothing is padded); the scalar gate as columns [B, H, Tp, 1] float32 (one (C, 1)
block per head and chunk: tokens on sublanes, as the rows of q it scales); g_gamma [H] float32 in SMEM,
one scalar per head. Padded gates are 0; for "constant" the last chunk's real length ends the decay.
The intra-chunk block is one C×C matmul (no sub-chunks), so a grid step does less than GLA's; VMEM is
budgeted with GLA's model (`gla/tpu/model.py`), which bounds it.

No gradient flows to g_gamma (a constant decay; fla gives none): its cotangent is zero.
Run on CPU with `interpret=True` (Pallas' TPU interpreter, race detection, NaN-filled uninitialised memory).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import compat
from pallas_kernels.common.checks import CallInfo, check_simple_gla_inputs, default_scale
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.tpu import state as cst
from pallas_kernels.common.tpu.layout import Dims as _Dims
from pallas_kernels.common.tpu.layout import LANES, doc_layout, pad_to, to_kernel_layout, unpack_refs
from pallas_kernels.common.tpu.tiles import ChunkMasks, chunk_masks
from pallas_kernels.gla.tpu import model as tpu_model
from pallas_kernels.simple_gla.tpu import stages as st

pl = compat.pl
pltpu = compat.pltpu
_f32 = jnp.float32
MAX_DIM = 512  # K, V up to this fit the VMEM budget (GLA's model, an upper bound here)
GATES = ("none", "constant", "scalar")


@dataclasses.dataclass(frozen=True)
class TpuOptions:
  """Static options of one call (hashable: the custom_vjp's non-differentiable argument)."""

  scale: float
  gate: str  # "none" | "constant" | "scalar"
  seq_len: int  # T before padding: where the "constant" kind's decay stops
  chunk_size: int = 64  # C, tokens per block along T (a multiple of 16)
  compute_dtype: str = "float32"  # MXU operand dtype (the inputs'); accumulation is always float32
  heads_per_block: int = 1  # heads handled by one grid step (independent work for the VLIW scheduler)
  has_initial_state: bool = False
  has_segments: bool = False
  interpret: bool = False  # run in Pallas' TPU interpreter (CPU tests)
  detect_races: bool = True  # interpreter only

  def __post_init__(self):
    if self.gate not in GATES:
      raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")


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
      g=pl.BlockSpec((None, d.hb, d.C, 1), lambda b, h, n: (b, h, chunk(n), 0)),
      gamma=pl.BlockSpec(memory_space=pltpu.SMEM),
      state=pl.BlockSpec((None, d.hb, d.Vp, d.Kp), lambda b, h, n: (b, h, 0, 0)),
      chunk_state=pl.BlockSpec((None, d.hb, None, d.Vp, d.Kp), lambda b, h, n: (b, h, chunk(n), 0, 0)),
      doc_col=pl.BlockSpec((None, d.C, 1), lambda b, h, n: (b, chunk(n), 0)),
      doc_row=pl.BlockSpec((None, None, 1, d.C), lambda b, h, n: (b, chunk(n), 0, 0)),
  )


def _call(kernel, opts: TpuOptions, d: _Dims, stage: str, name: str, in_specs, out_specs, out_shape):
  params = pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "arbitrary"),
      vmem_limit_bytes=tpu_model.vmem_limit_bytes(stage, d.C, d.Kp, d.Vp,
                                                  jnp.dtype(opts.compute_dtype).itemsize, d.hb))
  interpret = compat.tpu_interpret_params(opts.detect_races) if opts.interpret else False
  return pl.pallas_call(kernel, grid=(d.B, d.H // d.hb, d.N), in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, scratch_shapes=[pltpu.VMEM((d.hb, d.Vp, d.Kp), _f32)],
                        compiler_params=params, interpret=interpret, name=name)


def _gate_inputs(opts: TpuOptions, sp, g, gamma):
  """The gate's in_specs and arguments (none for kind "none")."""
  if opts.gate == "scalar":
    return [sp["g"]], [g]
  if opts.gate == "constant":
    return [sp["gamma"]], [gamma]
  return [], []


def _optional_inputs(opts: TpuOptions, sp, h0T, doc_col, doc_row, with_h0: bool = True):
  specs, args = [], []
  if with_h0 and opts.has_initial_state:
    specs.append(sp["state"]); args.append(h0T)
  if opts.has_segments:
    specs += [sp["doc_col"], sp["doc_row"]]; args += [doc_col, doc_row]
  return specs, args


def _gates(opts: TpuOptions, r, j: int, chunk, intra: bool = True) -> st.ScalarGates:
  """Stage 1 for head j of the block and the chunk with index `chunk` (traced); `intra=False`: only
  what the state update reads."""
  if opts.gate == "scalar":
    return st.scalar_gates(r["g"][j], intra)  # [C, 1]
  if opts.gate == "constant":
    gamma = r["gamma"][pl.program_id(1) * opts.heads_per_block + j]  # one SMEM scalar
    n_valid = jnp.minimum(opts.chunk_size, opts.seq_len - chunk * opts.chunk_size)
    return st.constant_gates(gamma, opts.chunk_size, n_valid, intra)
  return st.NO_GATES


def _masks(r) -> ChunkMasks:
  if r["doc_col"] is None:
    return ChunkMasks()
  return chunk_masks(r["doc_col"][...], r["doc_row"][...])


def _input_names(opts: TpuOptions):
  return [("g", opts.gate == "scalar"), ("gamma", opts.gate == "constant")]


# ------------------------------------------------------------------------------------------------
# forward: stages 1–4, and stages 1–2 alone (the backward's recomputation of h)
# ------------------------------------------------------------------------------------------------


def _fwd_kernel(*refs, opts: TpuOptions, states_only: bool):
  r = unpack_refs(refs, [("q", not states_only), ("k", True), ("v", True), *_input_names(opts),
                         ("h0", opts.has_initial_state), ("doc_col", opts.has_segments),
                         ("doc_row", opts.has_segments), ("o", not states_only),
                         ("ht", not states_only), ("h", states_only), ("h_scr", True)])
  n = pl.program_id(2)
  cdt = opts.compute_dtype

  @pl.when(n == 0)
  def _init():
    r["h_scr"][...] = (r["h0"][...] if r["h0"] is not None
                       else jnp.zeros(r["h_scr"].shape, _f32))

  masks = _masks(r)
  Kp, Vp = r["h_scr"].shape[2], r["h_scr"].shape[1]
  for j in range(opts.heads_per_block):  # independent heads: the scheduler interleaves them
    kc, vc = slice(j * Kp, (j + 1) * Kp), slice(j * Vp, (j + 1) * Vp)
    gates = _gates(opts, r, j, n, intra=not states_only)  # 1
    k, v = r["k"][:, kc], r["v"][:, vc]
    hT = r["h_scr"][j]
    if states_only:
      r["h"][j] = hT.astype(r["h"].dtype)
    else:
      q_scaled = r["q"][:, kc].astype(_f32) * opts.scale
      A = st.chunk_intra_attention(q_scaled, k, gates, masks, cdt)  # 3
      q_dec = cst.decayed_queries(q_scaled, gates, masks)
      r["o"][:, vc] = cst.chunk_output(q_dec, v, hT, A, cdt).astype(r["o"].dtype)  # 4
    r["h_scr"][j] = cst.chunk_state_update(hT, k, v, gates, masks, cdt)  # 2
  if not states_only:
    @pl.when(n == pl.num_programs(2) - 1)
    def _final():
      r["ht"][...] = r["h_scr"][...]


def chunk_fwd(opts: TpuOptions, d: _Dims, q, k, v, g, gamma, h0T, doc_col, doc_row):
  """o [B, Tp, H·Vp] (v's dtype) and the final transposed state [B, H, Vp, Kp] float32."""
  sp = _specs(d, reverse=False)
  gspecs, gargs = _gate_inputs(opts, sp, g, gamma)
  ospecs, oargs = _optional_inputs(opts, sp, h0T, doc_col, doc_row)
  out_shape = (jax.ShapeDtypeStruct((d.B, d.N * d.C, d.H * d.Vp), v.dtype),
               jax.ShapeDtypeStruct((d.B, d.H, d.Vp, d.Kp), _f32))
  kernel = functools.partial(_fwd_kernel, opts=opts, states_only=False)
  return _call(kernel, opts, d, "fwd", "simple_gla_chunk_fwd",
               [sp["k"], sp["k"], sp["v"], *gspecs, *ospecs], (sp["v"], sp["state"]),
               out_shape)(q, k, v, *gargs, *oargs)


def chunk_state_pass(opts: TpuOptions, d: _Dims, k, v, g, gamma, h0T, doc_col, doc_row):
  """The transposed state entering every chunk, [B, H, N, Vp, Kp] in the compute dtype."""
  sp = _specs(d, reverse=False)
  gspecs, gargs = _gate_inputs(opts, sp, g, gamma)
  ospecs, oargs = _optional_inputs(opts, sp, h0T, doc_col, doc_row)
  out_shape = jax.ShapeDtypeStruct((d.B, d.H, d.N, d.Vp, d.Kp), jnp.dtype(opts.compute_dtype))
  kernel = functools.partial(_fwd_kernel, opts=opts, states_only=True)
  return _call(kernel, opts, d, "state_pass", "simple_gla_chunk_state_pass",
               [sp["k"], sp["v"], *gspecs, *ospecs], sp["chunk_state"], out_shape)(k, v, *gargs, *oargs)


# ------------------------------------------------------------------------------------------------
# backward: stages 1, 5–7 over the chunks in reverse
# ------------------------------------------------------------------------------------------------


def _bwd_kernel(*refs, opts: TpuOptions):
  scalar = opts.gate == "scalar"
  r = unpack_refs(refs, [("q", True), ("k", True), ("v", True), *_input_names(opts), ("h", True),
                         ("do", True), ("dhtT", True), ("doc_col", opts.has_segments),
                         ("doc_row", opts.has_segments), ("dq", True), ("dk", True), ("dv", True),
                         ("dg", scalar), ("dh0", opts.has_initial_state), ("dh_scr", True)])
  i = pl.program_id(2)
  chunk = pl.num_programs(2) - 1 - i
  cdt = opts.compute_dtype

  @pl.when(i == 0)
  def _init():
    r["dh_scr"][...] = r["dhtT"][...]

  masks = _masks(r)
  Kp, Vp = r["dh_scr"].shape[2], r["dh_scr"].shape[1]
  for j in range(opts.heads_per_block):  # independent heads: the scheduler interleaves them
    kc, vc = slice(j * Kp, (j + 1) * Kp), slice(j * Vp, (j + 1) * Vp)
    gates = _gates(opts, r, j, chunk)  # 1
    q_scaled = r["q"][:, kc].astype(_f32) * opts.scale
    k, v, do = r["k"][:, kc], r["v"][:, vc], r["do"][:, vc]
    hT = r["h"][j]
    dhT = r["dh_scr"][j]  # w.r.t. the state leaving this chunk
    dq, dk, dv, terms = st.chunk_grads(q_scaled, k, v, do, gates, hT, dhT, masks, cdt,
                                       gate_grad=scalar)  # 6
    if scalar:
      r["dg"][j] = st.chunk_gate_grad(q_scaled, k, gates, hT, dhT, terms, masks)  # 7
    r["dq"][:, kc] = (dq * opts.scale).astype(r["dq"].dtype)
    r["dk"][:, kc] = dk.astype(r["dk"].dtype)
    r["dv"][:, vc] = dv.astype(r["dv"].dtype)
    q_dec = cst.decayed_queries(q_scaled, gates, masks)
    r["dh_scr"][j] = cst.chunk_state_grad_update(dhT, q_dec, do, gates, masks, cdt)  # 5
  if r["dh0"] is not None:
    @pl.when(i == pl.num_programs(2) - 1)
    def _final():
      r["dh0"][...] = r["dh_scr"][...]


def chunk_bwd(opts: TpuOptions, d: _Dims, q, k, v, g, gamma, hs, do, dhtT, doc_col, doc_row):
  """dq, dk (q's dtype), dv (v's dtype) in the kernel layout, dg [B, H, Tp, 1] float32 (kind "scalar",
  else None) and dh0ᵀ (or None)."""
  sp = _specs(d, reverse=True)
  gspecs, gargs = _gate_inputs(opts, sp, g, gamma)
  ospecs, oargs = _optional_inputs(opts, sp, None, doc_col, doc_row, with_h0=False)
  in_specs = [sp["k"], sp["k"], sp["v"], *gspecs, sp["chunk_state"], sp["v"], sp["state"], *ospecs]
  Tp = d.N * d.C
  out_specs = [sp["k"], sp["k"], sp["v"]]
  out_shape = [jax.ShapeDtypeStruct((d.B, Tp, d.H * d.Kp), q.dtype),
               jax.ShapeDtypeStruct((d.B, Tp, d.H * d.Kp), k.dtype),
               jax.ShapeDtypeStruct((d.B, Tp, d.H * d.Vp), v.dtype)]
  if opts.gate == "scalar":
    out_specs.append(sp["g"])
    out_shape.append(jax.ShapeDtypeStruct((d.B, d.H, Tp, 1), _f32))
  if opts.has_initial_state:
    out_specs.append(sp["state"])
    out_shape.append(jax.ShapeDtypeStruct((d.B, d.H, d.Vp, d.Kp), _f32))
  kernel = functools.partial(_bwd_kernel, opts=opts)
  outs = list(_call(kernel, opts, d, "bwd", "simple_gla_chunk_bwd", in_specs, tuple(out_specs),
                    tuple(out_shape))(q, k, v, *gargs, hs, do, dhtT, *oargs))
  dq, dk, dv = outs[:3]
  dg = outs.pop(3) if opts.gate == "scalar" else None
  dh0T = outs[3] if opts.has_initial_state else None
  return dq, dk, dv, dg, dh0T


# ------------------------------------------------------------------------------------------------
# the op: custom_vjp over the kernel layout
# ------------------------------------------------------------------------------------------------


def _dims(opts: TpuOptions, q, v, H: int) -> _Dims:
  B, Tp, HK = q.shape
  return _Dims(B=B, H=H, N=Tp // opts.chunk_size, C=opts.chunk_size, Kp=HK // H,
               Vp=v.shape[-1] // H, hb=opts.heads_per_block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunk_simple_gla_tpu(opts: TpuOptions, H: int, q, k, v, g, gamma, h0T, doc_col, doc_row):
  return chunk_fwd(opts, _dims(opts, q, v, H), q, k, v, g, gamma, h0T, doc_col, doc_row)


def _fwd_rule(opts, H, q, k, v, g, gamma, h0T, doc_col, doc_row):
  out = chunk_fwd(opts, _dims(opts, q, v, H), q, k, v, g, gamma, h0T, doc_col, doc_row)
  return out, (q, k, v, g, gamma, h0T, doc_col, doc_row)


def _bwd_rule(opts, H, residuals, cotangents):
  q, k, v, g, gamma, h0T, doc_col, doc_row = residuals
  do, dhtT = cotangents
  d = _dims(opts, q, v, H)
  hs = chunk_state_pass(opts, d, k, v, g, gamma, h0T, doc_col, doc_row)  # 1–2 recomputed
  dq, dk, dv, dg, dh0T = chunk_bwd(opts, d, q, k, v, g, gamma, hs, do.astype(v.dtype), dhtT, doc_col,
                                   doc_row)  # 1, 5–7
  zeros_like = lambda x: None if x is None else jnp.zeros_like(x)
  return (dq, dk, dv, dg, zeros_like(gamma), dh0T, zeros_like(doc_col), zeros_like(doc_row))


_chunk_simple_gla_tpu.defvjp(_fwd_rule, _bwd_rule)


def chunk_simple_gla_tpu(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                         output_final_state=False, segment_ids=None, chunk_size=64,
                         heads_per_block=None, interpret=False, detect_races=True):
  """Chunkwise simple GLA with the Pallas Mosaic TPU kernels (`chunk_simple_gla`'s contract).

      S_t = exp(g_t,h) S_{t-1} + k_tᵀ v_t ;   o_t = scale · q_t S_t

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V]; any T, K, V (padded inside; K, V ≤ 512 are budgeted).
    g: [B, T, H] log decay per token and head (≤ 0; −inf allowed), float32 or the inputs' dtype; or
    g_gamma: [H] constant log decay per head (no gradient); neither: no decay. Not both.
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V] (used in float32).
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id.
    chunk_size: C, the block length along T (a multiple of 16, ≤ 256).
    heads_per_block: heads one grid step works on (a divisor of H); None: GLA's VMEM model decides.
    interpret: run the kernels in Pallas' TPU interpreter (any backend; for tests on CPU).
    detect_races: the interpreter's race detector (interpret only).

  Returns:
    (o [B, T, H, V] in v's dtype, final_state [B, H, K, V] float32 or None); differentiable w.r.t. q, k,
    v, g and initial_state.

  Example:
    >>> B, T, H, K, V = 2, 100, 4, 64, 128
    >>> q = k = jnp.ones((B, T, H, K), jnp.bfloat16); v = jnp.ones((B, T, H, V), jnp.bfloat16)
    >>> g = jax.nn.log_sigmoid(jnp.zeros((B, T, H)))
    >>> o, ht = chunk_simple_gla_tpu(q, k, v, g, output_final_state=True, interpret=True)
  """
  info = check_simple_gla_inputs(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                                 segment_ids=segment_ids, chunk_size=chunk_size)
  reason = _check(info)
  if reason is not None:
    raise ValueError(f"chunk_simple_gla_tpu: {reason}")
  return _chunk_simple_gla_tpu_checked(
      info, q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
      output_final_state=output_final_state, segment_ids=segment_ids, chunk_size=chunk_size,
      heads_per_block=heads_per_block, interpret=interpret, detect_races=detect_races)


def _chunk_simple_gla_tpu_checked(info: CallInfo, q, k, v, g=None, *, g_gamma=None, scale=None,
                                  initial_state=None, output_final_state=False, segment_ids=None,
                                  chunk_size=64, heads_per_block=None, interpret=False,
                                  detect_races=True):
  B, T, H, K, V = info.B, info.T, info.H, info.K, info.V
  C = chunk_size
  Tp, Kp, Vp = pad_to(T, C), pad_to(K, LANES), pad_to(V, LANES)
  if heads_per_block is None:
    heads_per_block = tpu_model.heads_per_block(H, C, Kp, Vp, info.dtype.itemsize)
  if not isinstance(heads_per_block, int) or heads_per_block < 1 or H % heads_per_block:
    raise ValueError(f"heads_per_block must be a positive divisor of H={H}, got {heads_per_block!r}")
  opts = TpuOptions(scale=default_scale(scale, K), gate=info.gate, seq_len=T, chunk_size=C,
                    heads_per_block=heads_per_block, compute_dtype=info.dtype.name,
                    has_initial_state=initial_state is not None,
                    has_segments=segment_ids is not None, interpret=interpret,
                    detect_races=detect_races)
  g_cols = gamma = h0T = None
  if info.gate == "scalar":  # [B, T, H] → columns [B, H, Tp, 1] float32 (padded gates 0)
    g_cols = jnp.pad(jnp.swapaxes(g.astype(_f32), 1, 2), ((0, 0), (0, 0), (0, Tp - T)))[..., None]
  elif info.gate == "constant":
    gamma = g_gamma.astype(_f32)
  if initial_state is not None:
    h0 = jnp.pad(initial_state.astype(_f32), ((0, 0), (0, 0), (0, Kp - K), (0, Vp - V)))
    h0T = jnp.swapaxes(h0, -1, -2)
  doc_col, doc_row = doc_layout(segment_ids, C) if segment_ids is not None else (None, None)
  o, htT = _chunk_simple_gla_tpu(opts, H, to_kernel_layout(q, Tp, Kp), to_kernel_layout(k, Tp, Kp),
                                 to_kernel_layout(v, Tp, Vp), g_cols, gamma, h0T, doc_col, doc_row)
  o = o.reshape(B, Tp, H, Vp)[:, :T, :, :V]
  if not output_final_state:
    return o, None
  return o, jnp.swapaxes(htT, -1, -2)[:, :, :K, :V]


def _check(info: CallInfo) -> str | None:
  if info.gate not in GATES:
    return f"gate kind {info.gate!r}: the simple-GLA TPU kernels take {GATES}"
  if info.K > MAX_DIM or info.V > MAX_DIM:
    return f"K={info.K}, V={info.V}: the TPU kernels budget VMEM for K, V ≤ {MAX_DIM}"
  if info.chunk_size > 256:
    return f"chunk_size={info.chunk_size} > 256 (the VMEM budget of the TPU kernels)"
  return None


# explicit-only (`impl="tpu"`): not in `impl="auto"`'s TPU list until the kernels have run on a TPU
IMPLEMENTATION = Implementation("tpu", _chunk_simple_gla_tpu_checked, platforms=frozenset({"tpu"}),
                                check=_check)
