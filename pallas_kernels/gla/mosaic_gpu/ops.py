"""chunk_gla in Mosaic GPU (Hopper: TMA + wgmma; forward `kernel.py`, backward also `grad_kernel.py`); impls "mosaic_gpu"
(compiled, sm90 GPUs) and "mosaic_gpu_interpret" (Mosaic GPU interpret mode, any platform). Neither is
in an `auto` order: they are explicit-only until qualified on the GPU.

The backward (`_bwd_rule`) is three Mosaic passes, none of which writes anything per chunk (each keeps
its state in registers):

  dv, dh0 = rev(fwd(q = rev k, k = rev q, v = rev do, g⃖)) from the state dht / s   the forward kernel
  dq'     = grad(x = do, y = v, z = k, g) from the state h0ᵀ                       grad_kernel.py
  dk'     = rev(grad(x = rev v, y = rev do, z = rev q, g⃖))

with rev the flip of the time axis of the sequence padded to a multiple of 64 (the padding first, so
the reversed chunks are the original ones in reverse order), g⃖_τ = g_{T−τ} (g⃖_0 = 0: a pair decays
by e^{G_t − G_s} = Π_{s<r≤t} e^{g_r} in either direction), s the scale, and dh0 = s·e^{g_0} ⊙ the dv
pass's final state. The gated-output pass ("grad") computes out_t = s Σ_{s<t} (x_t·y_s) z_s ⊙
e^{G_t − G_s}: the gate acts on its output's columns, so it is not the forward on rearranged operands
(as simple GLA's backward is) but a kernel of its own. It is strict (each token's own pair left out,
added back exactly in XLA: s(do_t·v_t) k_t and … q_t) and compensated (its state, its decayed keys and
its chunk cumsum G as hi + lo), so that dg per key dim,

  dg = revcumsum(q ⊙ dq' − k ⊙ dk') + Σ_{s<r} k_s ⊙ e_s + [h0 reaches ht] e^{Σ g} ⊙ Σ_v h0 ⊙ dht,

e_s the final state's cotangent's share of dk (formed in XLA, common/mosaic_gpu/gate_grad.py), has no O(1) terms that
cancel and no roundings that add up over T. dg is 0 where g < −60 (the floor). Bytes (8,2048,4,256,512,
bf16; B·T·H·(K+V) = 50M elements): each pass streams its three 16-bit operands once per output tile
(dv: V/128 = 4 tiles of the forward; dq, dk: K/64 = 4 tiles of grad), so ~4 × 3 × 2 B × 25-50M ≈ 0.6–1.2
GB per pass, plus the float32 dq', dk' and G, G_lo (~0.4 GB) and XLA's reversals; nothing O(T·K·V) is
stored (the Triton backward writes the per-chunk states, 1.1 GB at this shape, and reads them twice).
What holds the passes back is latency, not bytes (measured: benchmarks/RESULTS.md): one warpgroup per
program, every wgmma waited for, and 140–210 KB of SMEM, so one program per SM.

What `prepare` does outside the kernel (XLA, O(B·T·H·(K + V)) elementwise work): pads T to a multiple of
64, K to a multiple of 64 and V to a multiple of the V tile (zeros: inert — k = v = 0 adds nothing, a
padded gate of 0 decays nothing), transposes k to [B, H, Kp, Tp], raises g to −60 (so −inf is a clean
reset, as in the Triton kernels) and takes its chunk-local cumsum G (float32, [B, Tp, H, Kp] and
transposed [B, H, Kp, Tp]); per chunk it decides the form of the intra-chunk scores (`kernel.py`):
"dense" where the chunk's exponent span around row 31 is at most `DENSE_MAX_EXP` (bf16 / f32: 40, so
the factors stay within e^{±40}; fp16, whose range is e^{±11}: 8), else "exact" (every exponent ≤ 0).
With segment_ids it adds the document masks (packed documents restart the state exactly as the
Triton kernels do) and the document index, as the simple-GLA Mosaic kernel does.

Inputs: any T; K, V in 1..512 (padded as above); "mosaic_gpu" takes bf16 / fp16 q, k, v (the wgmma
operand dtype; S, the scores and the decayed q / k are rounded to it for their matmuls, as the Triton
kernel rounds them to bf16), any K and V to 512 (a launch's K is ≤ 128: its float32 state [Kp, V tile]
lives in registers; wider K runs in launches summed, `_forward`); "mosaic_gpu_interpret" also takes
float32 (exact float32 matmuls: the tests' tight checks).
`chunk_size` is accepted for the op contract; the kernel uses 64.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, check_gla_inputs, default_scale
from pallas_kernels.common.chunking import compensated_cumsum, pad_axis
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.mosaic_gpu.gate_grad import gate_grad
from pallas_kernels.common.mosaic_gpu.ksplit import in_k_parts
from pallas_kernels.common.mosaic_gpu.layout import (
    COMPILED_DTYPES, G_FLOOR, SMEM_LIMIT, round_up)
from pallas_kernels.common.segments import doc_index
from pallas_kernels.gla.mosaic_gpu.grad_kernel import BV as GRAD_BV, GradOptions, chunk_grad
from pallas_kernels.gla.mosaic_gpu.kernel import BK, C, F32, REF, FwdOptions, chunk_fwd

MAX_DIM = 512
GRAD_PART = 256  # the widest contraction (V) of one gated-output launch: its state Sᵀ [V, 64] in registers
MAX_K_COMPILED = 128  # a launch's K: its float32 state [Kp, BV] is in registers (64 per thread at K = 128, BV = 128);
# wider K runs in launches summed. On the H200 (2026-12-04, 8,2048,4,256,512) 128 beats 256: forward 1.632 →
# 1.347 ms at BV 128 (ptxas spills less); GRAD_PART stays 256 (128 there: 1.304 → 1.452 ms)
DENSE_MAX_EXP = {"float16": 8.0}  # the dense form's largest |exponent|; 40 for the other dtypes
PATHS = ("auto", "dense", "exact")  # the intra-chunk form per chunk: by span, or forced (tests)


@dataclasses.dataclass(frozen=True)
class Config:
  """Static facts of one call (the custom_vjp's non-differentiable argument)."""

  info: CallInfo
  scale: float
  output_final_state: bool
  chunk_size: int
  block_v: int
  interpret: bool
  path: str = "auto"


def default_block_v(info: CallInfo) -> int:
  """V tile of the forward kernel: 128 where the padded V is a multiple of 128 and that still leaves
  ≥ 128 programs (B·H·V/128), else 64. Measured on the H200 (2026-12-03): 128 is faster at
  8,2048,16,128,128 (forward 1.337 → 1.105 ms, 128 programs) and 8,2048,4,256,512 (2.990 → 2.836 ms,
  128 programs) — the K-side work (gates, scores) is done once per V tile — and slower at
  2,8192,16,128,128 (2.386 → 3.115 ms), where it leaves 32 programs for 132 SMs. After the register-budget
  change (2026-12-04): 0.890 → 0.886 ms at s1, 1.464 → 1.347 ms at s4 (K launches of 128)."""
  Vp = round_up(info.V, 64)
  return 128 if Vp % 128 == 0 and info.B * info.H * (Vp // 128) >= 128 else 64


def fwd_options(info: CallInfo, scale: float, block_v: int, want_ht: bool, interpret: bool,
                f32_out: bool = False):
  """The launch's options; double-buffered input tiles where they fit the SMEM (the same choice in
  interpret mode, so both forms are tested)."""
  opts = FwdOptions(B=info.B, H=info.H, T=round_up(info.T, C), K=round_up(info.K, BK),
                    V=round_up(info.V, block_v), BV=block_v, dtype=jnp.dtype(info.dtype).name,
                    scale=scale, has_h0=info.has_initial_state, has_seg=info.has_segment_ids,
                    want_ht=want_ht, interpret=interpret, f32_out=f32_out)
  return opts if opts.smem_bytes() <= SMEM_LIMIT else dataclasses.replace(opts, buffers=1)


def dense_max_exp(dtype) -> float:
  return DENSE_MAX_EXP.get(jnp.dtype(dtype).name, 40.0)


def gate_operands(info: CallInfo, g, segment_ids, Tp: int, Kp: int, path: str = "auto"):
  """G [B, Tp, H, Kp], Gᵀ [B, H, Kp, Tp] and the [B, H, R, Tp] rows of `kernel.vec_rows`."""
  G = jnp.cumsum(_chunked_gate(info, g, Tp, Kp), axis=2)
  vec = _gate_rows(info, G, segment_ids, Tp, path)
  G = G.reshape(info.B, Tp, info.H, Kp)
  return G, jnp.transpose(G, (0, 2, 3, 1)), vec


def grad_gate_operands(info: CallInfo, g, segment_ids, Tp: int, Kp: int, path: str = "auto"):
  """The gated-output pass's G and G_lo [B, Tp, H, Kp] (G + G_lo: the compensated chunk-local cumsum,
  exponent differences exact to float32 at any |G|) and its rows (`gate_operands`)."""
  G, G_lo = compensated_cumsum(_chunked_gate(info, g, Tp, Kp), axis=2)
  vec = _gate_rows(info, G, segment_ids, Tp, path)
  shape = (info.B, Tp, info.H, Kp)
  return G.reshape(shape), G_lo.reshape(shape), vec


def _chunked_gate(info: CallInfo, g, Tp: int, Kp: int):
  """g floored, padded (g = 0 decays nothing) and split into chunks: [B, N, C, H, Kp] float32."""
  ge = pad_axis(pad_axis(jnp.maximum(g.astype(F32), G_FLOOR), 1, Tp), 3, Kp)
  return ge.reshape(info.B, Tp // C, C, info.H, Kp)


def _gate_rows(info: CallInfo, G, segment_ids, Tp: int, path: str):
  """The [B, H, R, Tp] rows of `kernel.vec_rows` from the chunked cumsum G [B, N, C, H, Kp]."""
  B, H = info.B, info.H
  N = Tp // C
  if path == "auto":  # the dense form's factors e^{G_t − G_REF} and e^{G_REF − G_s} for every t, s
    span = jnp.max(jnp.maximum(G[:, :, 0] - G[:, :, REF], G[:, :, REF] - G[:, :, -1]), axis=-1)
    dense = (span <= dense_max_exp(info.dtype)).astype(F32)  # [B, N, H]
  else:
    dense = jnp.full((B, N, H), 1.0 if path == "dense" else 0.0, F32)
  rows = [jnp.broadcast_to(jnp.transpose(dense, (0, 2, 1))[:, :, :, None], (B, H, N, C))]
  if segment_ids is not None:  # padding continues the last document
    d = pad_axis(doc_index(segment_ids), 1, Tp, mode="edge").reshape(B, 1, N, C)
    prev = jnp.concatenate([jnp.zeros_like(d[:, :, :1, -1:]), d[:, :, :-1, -1:]], axis=2)
    last = d[..., -1:]
    rows += [d == prev, d == last, jnp.broadcast_to(last == prev, d.shape), d]
  return jnp.stack([jnp.broadcast_to(r.astype(F32), (B, H, N, C)).reshape(B, H, Tp) for r in rows],
                   axis=2)


def prepare(cfg: Config, q, k, v, g, h0, segment_ids, f32_out: bool = False):
  """→ (FwdOptions, the kernel's operands (q, kᵀ, G, Gᵀ, k, v, gate rows, h0)) of one launch."""
  info = cfg.info
  opts = fwd_options(info, cfg.scale, cfg.block_v, cfg.output_final_state, cfg.interpret, f32_out)
  Tp, Kp, Vp = opts.T, opts.K, opts.V
  pad_k = lambda x: pad_axis(pad_axis(x, 1, Tp), 3, Kp)
  kp = pad_k(k)
  G, Gt, vec = gate_operands(info, g, segment_ids, Tp, Kp, cfg.path)
  if h0 is not None:
    h0 = pad_axis(pad_axis(h0.astype(F32), 2, Kp), 3, Vp)
  return opts, (pad_k(q), jnp.transpose(kp, (0, 2, 3, 1)), G, Gt, kp, pad_axis(pad_axis(v, 1, Tp), 3, Vp),
                vec, h0)


def _launch(cfg: Config, q, k, v, g, h0, seg, f32_out: bool):
  """One run of the kernel (cfg.info.K ≤ MAX_K_COMPILED): (o, final state or None)."""
  opts, operands = prepare(cfg, q, k, v, g, h0, seg, f32_out)
  o, ht = chunk_fwd(*operands, opts)
  info = cfg.info
  o = o[:, :info.T, :, :info.V]
  return o, (ht[:, :, :info.K, :info.V] if ht is not None else None)


def _forward(cfg: Config, q, k, v, g, h0, seg):
  """(o, final state or None). K > MAX_K_COMPILED runs in launches of ≤ MAX_K_COMPILED columns of q, k
  and g: each key column decays only its own row of the state, so each part is the op on its columns
  (h0's rows split with them); o is the float32 sum of the parts' (the scores q·kᵀ summed over K), the
  final state their rows stacked. Interpret mode splits the same way (the tests run the compiled path's
  arithmetic)."""
  info = cfg.info

  def launch(K, q, k, g, h0, f32_out):
    part = cfg if K == info.K else dataclasses.replace(cfg, info=dataclasses.replace(info, K=K))
    return _launch(part, q, k, v, g, h0, seg, f32_out=f32_out)

  return in_k_parts(launch, info.K, MAX_K_COMPILED, q, k, h0, g, f32_out=False, out_dtype=v.dtype,
                    want_ht=cfg.output_final_state)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_gla_mosaic(cfg: Config, q, k, v, g, h0, seg):
  return _forward(cfg, q, k, v, g, h0, seg)


def _fwd_rule(cfg, q, k, v, g, h0, seg):
  return _forward(cfg, q, k, v, g, h0, seg), (q, k, v, g, h0, seg)


def _grad_pass(cfg: Config, x, y, z, g, h0t, seg):
  """The gated-output pass (grad_kernel.py) at the op's scale: out [B, T, H, K] float32 with
  out_t = s Σ_{s<t} (x_t·y_s) z_s ⊙ e^{G_t − G_s} + s e^{G_t} ⊙ (h0tᵀ x_t); x, y [B, T, H, V], z and the
  log gate g [B, T, H, K], h0t [B, H, V, K] or None. V > GRAD_PART runs in parts of ≤ GRAD_PART
  columns of x and y (rows of h0t), summed: the pass is linear in the contraction."""
  info = cfg.info

  def launch(V, x, y, _, h0t, f32_out):
    return _grad_launch(cfg, x, y, z, g, h0t, seg, V), None

  out, _ = in_k_parts(launch, x.shape[-1], GRAD_PART, x, y, h0t, f32_out=True, out_dtype=F32,
                      want_ht=False)
  return out[:, :info.T, :, :z.shape[-1]]


def _grad_launch(cfg: Config, x, y, z, g, h0t, seg, V: int):
  info = cfg.info
  Tp, Kp, Vp = round_up(info.T, C), round_up(z.shape[-1], BK), round_up(V, GRAD_BV)
  opts = GradOptions(B=info.B, H=info.H, T=Tp, V=Vp, K=Kp, dtype=jnp.dtype(x.dtype).name,
                     scale=cfg.scale, has_h0=h0t is not None, has_seg=seg is not None,
                     interpret=cfg.interpret)
  if opts.smem_bytes() > SMEM_LIMIT:
    opts = dataclasses.replace(opts, buffers=1)
  G, G_lo, vec = grad_gate_operands(info, g, seg, Tp, Kp, cfg.path)
  pad = lambda a, width: pad_axis(pad_axis(a, 1, Tp), 3, width)
  yt = jnp.transpose(pad(y, Vp), (0, 2, 3, 1))  # [B, H, Vp, Tp]
  if h0t is not None:
    h0t = pad_axis(pad_axis(h0t.astype(F32), 2, Vp), 3, Kp)
  return chunk_grad(pad(x, Vp), yt, pad(z, Kp), G, G_lo, vec, h0t, opts)


def _bwd_rule(cfg, residuals, cotangents):
  """dq, dk, dv, dg, dh0 from three Mosaic passes (module docstring): dv and dh0 from the forward kernel
  on time-reversed operands, dq and dk from the gated-output kernel (strict), dg from those two."""
  q, k, v, g, h0, seg = residuals
  do, dht = cotangents
  info, s = cfg.info, cfg.scale
  T, Tp = info.T, round_up(info.T, C)
  do = do.astype(v.dtype)
  gt = jnp.maximum(g.astype(F32), G_FLOOR)  # [B, T, H, K], as the forward floors it
  # time reversal of the sequence padded to Tp (the padding first): the reversed chunks are the
  # original ones in reverse order
  rev = lambda x, mode="constant": jnp.flip(pad_axis(x, 1, Tp, mode), 1)
  unrev = lambda x: jnp.flip(x, 1)[:, :T]
  shifted = jnp.concatenate([jnp.zeros_like(gt[:, :1]), jnp.flip(gt, 1)[:, :T - 1]], axis=1)
  g_rev = jnp.pad(shifted, ((0, 0), (Tp - T, 0), (0, 0), (0, 0)))  # g⃖_τ = g_{T−τ}, 0 on the padding
  seg_rev = None if seg is None else rev(seg, "edge")
  if dht is not None:
    dht = dht.astype(F32)

  # dv (and dh0): the forward on (q = rev k, k = rev q, v = rev do, g⃖) from the state dht / s
  rinfo = check_gla_inputs(rev(k), rev(q), rev(do), g_rev, initial_state=dht, segment_ids=seg_rev,
                           output_final_state=h0 is not None)
  rcfg = dataclasses.replace(cfg, info=rinfo, output_final_state=h0 is not None,
                             block_v=default_block_v(rinfo))
  dv, hT = _forward(rcfg, rev(k), rev(q), rev(do), g_rev, None if dht is None else dht / s, seg_rev)
  dv = unrev(dv)
  # dq' and dk' without each token's own pair; dk' without the final state's cotangent (below)
  h0t = None if h0 is None else jnp.swapaxes(h0.astype(F32), 2, 3)  # [B, H, V, K]
  dq = _grad_pass(cfg, do, v, k, gt, h0t, seg)
  dk = unrev(_grad_pass(dataclasses.replace(cfg, info=rinfo), rev(v), rev(do), rev(q), g_rev, None,
                        seg_rev))
  dh0 = None
  if h0 is not None:
    dh0 = (hT * s * jnp.exp(gt[:, 0])[..., None]).astype(h0.dtype)
  dg, dq, dk = gate_grad(s, q, k, v, gt, do, h0, dht, seg, dq, dk)
  dg = jnp.where(g < G_FLOOR, 0.0, dg).astype(g.dtype)  # the floor's gradient (−inf included)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dg, dh0, None


_chunk_gla_mosaic.defvjp(_fwd_rule, _bwd_rule)


def chunk_gla_mosaic(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                     segment_ids=None, chunk_size=64, interpret: bool = False,
                     block_v: int | None = None, path: str = "auto"):
  """Chunkwise GLA in Mosaic GPU (`chunk_gla`'s contract; module docstring).

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V]; any T, K and V up to 512 (compiled: bf16 / fp16; K > 128 in parts).
    g: [B, T, H, K] log forget gates (≤ 0; −inf allowed).
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V] or None.
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id.
    chunk_size: accepted for the op contract (a multiple of 16); the kernel uses 64.
    interpret: run the kernel in Mosaic GPU interpret mode (CPU; float32 inputs allowed).
    block_v: V tile, 64 or 128 (default `default_block_v`; 128 single-buffers the input tiles).
    path: the intra-chunk form, "auto" (per chunk, by its decay span), or "dense" / "exact" for every
      chunk (tests; "dense" is exact only where the spans are small).

  Returns:
    (o [B, T, H, V] in v.dtype, final_state [B, H, K, V] float32 or None); differentiable w.r.t. q, k,
    v, g and initial_state (the backward: three Mosaic passes, module docstring).

  Example:
    >>> B, T, H, K, V = 1, 100, 2, 48, 96
    >>> q = k = jnp.ones((B, T, H, K), jnp.bfloat16); v = jnp.ones((B, T, H, V), jnp.bfloat16)
    >>> g = jnp.full((B, T, H, K), -0.1)
    >>> o, ht = chunk_gla_mosaic(q, k, v, g, output_final_state=True, interpret=True)
  """
  info = check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state,
                          segment_ids=segment_ids, chunk_size=chunk_size,
                          output_final_state=output_final_state)
  reason = check_call(info, interpret=interpret, block_v=block_v)
  if reason is None and path not in PATHS:
    reason = f"path must be one of {PATHS}, got {path!r}"
  if reason is not None:
    raise ValueError(f"chunk_gla_mosaic: {reason}")
  return _run(info, q, k, v, g, scale=scale, initial_state=initial_state,
              output_final_state=output_final_state, segment_ids=segment_ids,
              chunk_size=chunk_size, interpret=interpret, block_v=block_v, path=path)


def _run(info: CallInfo, q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
         segment_ids=None, chunk_size=64, interpret=False, block_v=None, path="auto"):
  cfg = Config(info=info, scale=default_scale(scale, info.K), output_final_state=output_final_state,
               chunk_size=chunk_size, block_v=block_v or default_block_v(info), interpret=interpret,
               path=path)
  return _chunk_gla_mosaic(cfg, q, k, v, g, initial_state, segment_ids)


def check_call(info: CallInfo, interpret: bool = False, block_v: int | None = None) -> str | None:
  """Why the Mosaic GPU forward cannot serve a call (None if it can)."""
  if info.gate != "vector":
    return f"gate kind must be vector, got {info.gate!r}"
  if info.K > MAX_DIM or info.V > MAX_DIM:
    return f"K and V must be at most {MAX_DIM}, got K={info.K}, V={info.V}"
  if block_v is not None and block_v not in (64, 128):
    return f"block_v must be 64 or 128, got {block_v!r}"
  if interpret:
    return None
  if jnp.dtype(info.dtype) not in COMPILED_DTYPES:
    return (f"the compiled kernel takes bfloat16 or float16 q, k, v (wgmma operands), got "
            f"{info.dtype}; cast them, or use impl='xla'")
  part = dataclasses.replace(info, K=min(info.K, MAX_K_COMPILED))  # wider K: launches summed (`_forward`)
  opts = fwd_options(part, 1.0, block_v or default_block_v(info), True, False,
                     f32_out=info.K > MAX_K_COMPILED)
  if opts.smem_bytes() > SMEM_LIMIT:
    return (f"the kernel's tiles need {opts.smem_bytes()} bytes of shared memory at V tile {opts.BV} "
            f"(> {SMEM_LIMIT})")
  return None


IMPLEMENTATION = Implementation(
    "mosaic_gpu", functools.partial(_run, interpret=False), platforms=frozenset({"gpu"}),
    check=functools.partial(check_call, interpret=False))
INTERPRET_IMPLEMENTATION = Implementation(
    "mosaic_gpu_interpret", functools.partial(_run, interpret=True),
    check=functools.partial(check_call, interpret=True))
