"""chunk_simple_gla with its forward in Mosaic GPU (Hopper: TMA + wgmma, `kernel.py`); impls
"mosaic_gpu" (compiled, sm90 GPUs) and "mosaic_gpu_interpret" (Mosaic GPU interpret mode, any platform).
"mosaic_gpu" is in the GPU auto order behind its table of measured wins (`MEASURED_FASTER`, empty: its
fwd+bwd has not measured faster than "triton"); its forward with the Triton backward is
"mosaic_gpu_fwd" (`fwd_triton_bwd.py`).

The backward runs the same Mosaic kernel three more times (`_bwd_rule`), on rearranged operands — the
chunk algorithm is its own adjoint up to a transpose and a time reversal:

  dq  = fwd(q=do, k=v, v=k, g, h0ᵀ)                       the state of the pass is Sᵀ [V, K]
  dv  = rev(fwd(q=rev k, k=rev q, v=rev do, g⃖, dht / s))    its final state · s · e^{g_0} = dh0
  dk  = rev(fwd(q=rev v, k=rev do, v=rev q, g⃖, dhtᵀ / s))

with rev the flip of the time axis of the sequence padded to a multiple of 64 (the padding first, so
the reversed chunks are the original ones in reverse order; segment ids flipped with it),
g⃖_τ = g_{T−τ} (g⃖_0 = 0: a pair (t, s) decays by e^{G_t − G_s} = Π_{s<r≤t} e^{g_r} in either
direction) and s the scale (the kernel scales what it reads from its state, so the cotangent states
enter divided by s). A pass whose K (the contraction of q·kᵀ and the state's rows) is over 256 — the
forward and dv at K > 256, dq and dk at V > 256 — runs in parts of ≤ 256 columns, summed (`_forward`);
the strict dq and dk passes of the scalar gate (below) in parts of ≤ 128, with V tiles of 64.
 Each pass keeps its state in registers; nothing per chunk is written. Gradients:
q, k, v, g, initial_state (g_gamma is a constant of the op, as in every impl).

dg of the scalar gate, from the dq and dk passes alone. With c_ts = s·e^{G_t − G_s}(q_t·k_s)(do_t·v_s)
the contribution of the pair (t, s), dg_r = Σ_{s < r ≤ t} c_ts (plus the pairs of h0 and of the final
state's cotangent), and in algebra dg = revcumsum_t(Σ_K q ⊙ dq − Σ_K k ⊙ dk) + ⟨ht, dht⟩: the pairs with
both ends ≥ r cancel between the two sums. Each token's own pair c_tt is in both sums at full size
(e^0), so formed like that the result — ~1e-7 at −20 per token — is the difference of O(1) numbers
(float32 error ~4e-6 in interpret mode). So for the scalar gate the dq and dk passes run `strict`
(kernel.py: the scores keep only s < t; o in float32): dq' = dq − s(do_t·v_t)k_t and dk' = dk −
s(do_t·v_t)q_t, and dg = revcumsum(Σ_K q ⊙ dq' − Σ_K k ⊙ dk') + ⟨ht, dht⟩, where what cancels is only
pairs of the size of the result; dq and dk add the diagonal term back (XLA, elementwise). The strict
passes also compensate their 16-bit copies of the state and of the decayed keys (kernel.py): the pairs
that cancel do so only up to the roundings each pass makes on its own state, which otherwise add up over
T. The cost: the two passes' outputs in float32 instead of 16 bits, two more matmuls per chunk in each,
and O(B·T·H·(K + V)) elementwise work.

What `prepare` does outside the kernel (XLA, O(B·T·H·(K + V)) elementwise work): pads T to a multiple of
64, K to a multiple of 64 and V to a multiple of the V tile (zeros: inert — k = v = 0 adds nothing, a
padded gate of 0 decays nothing), transposes k to [B, H, Kp, Tp], and turns the gate (g [B, T, H],
g_gamma [H] or none) and segment_ids into the per-token rows of `kernel.VEC_ROWS`: G (chunk-local
cumsum of the log decay, entries raised to −60 like the Triton kernels', so −inf is a clean reset;
compensated: G_hi and G_lo),
the query factor s·e^{G}, the key factor e^{Γ−G}, the state factor e^{Γ}, each times its document
mask (packed documents restart the state exactly as the Triton kernels do: queries read the carried
state only in the chunk's first document, keys feed it only from its last, and it decays into the next
chunk only if no document starts inside), and the document index.

Inputs: any T; K, V in 1..512 (padded as above); "mosaic_gpu" takes bf16 / fp16 q, k, v (the wgmma
operand dtype; S, the scores and the decayed keys are rounded to it for their matmuls, as the Triton
kernel rounds them to bf16), any K and V to 512 (a launch's K is ≤ 256: its f32 state tile [K, BV]
in registers, its tiles in SMEM; wider K runs in parts);
"mosaic_gpu_interpret" also takes float32 (exact float32 matmuls: the tests' tight checks).
`chunk_size` is accepted for the op contract; the kernel uses 64.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, check_simple_gla_inputs, default_scale
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.mosaic_gpu.gate_grad import gate_grad
from pallas_kernels.common.mosaic_gpu.ksplit import in_k_parts
from pallas_kernels.common.mosaic_gpu.layout import (
    COMPILED_DTYPES, G_FLOOR, SMEM_LIMIT, is_sm90, round_up)
from pallas_kernels.common.segments import doc_index
from pallas_kernels.common.chunking import compensated_cumsum, pad_axis
from pallas_kernels.simple_gla.mosaic_gpu.kernel import C, F32, FwdOptions, chunk_fwd

MAX_DIM = 512


@dataclasses.dataclass(frozen=True)
class Config:
  """Static facts of one call (the custom_vjp's non-differentiable argument)."""

  info: CallInfo
  scale: float
  output_final_state: bool
  chunk_size: int
  block_v: int
  interpret: bool


def default_block_v(info: CallInfo) -> int:
  """V tile: 128 where the padded V allows it, K ≤ 128 (the f32 state tile [Kp, BV] lives in
  registers) and there are still ≥ 132 programs (one per SM); else 64."""
  Kp, V64 = round_up(info.K, 64), round_up(info.V, 64)
  if V64 % 128 == 0 and Kp <= 128 and info.B * info.H * (V64 // 128) >= 132:
    return 128
  return 64


def fwd_options(info: CallInfo, scale: float, block_v: int, want_ht: bool, interpret: bool,
                strict: bool = False, f32_out: bool = False):
  """The launch's options; double-buffered input tiles where they fit the SMEM (the same choice in
  interpret mode, so both forms are tested). A strict launch (K ≤ STRICT_PART) takes V tiles of STRICT_BV."""
  if strict:
    block_v = STRICT_BV
  opts = FwdOptions(B=info.B, H=info.H, T=round_up(info.T, C), K=round_up(info.K, 64),
                    V=round_up(info.V, block_v), BV=block_v, dtype=jnp.dtype(info.dtype).name,
                    scale=scale, has_h0=info.has_initial_state, has_seg=info.has_segment_ids,
                    want_ht=want_ht, interpret=interpret, strict=strict, f32_out=f32_out)
  return opts if opts.smem_bytes() <= SMEM_LIMIT else dataclasses.replace(opts, buffers=1)


def gate_rows(info: CallInfo, g, g_gamma, segment_ids, scale: float, Tp: int):
  """The kernel's [B, H, R, Tp] float32 gate operand (rows `kernel.VEC_ROWS`)."""
  B, T, H = info.B, info.T, info.H
  if info.gate == "scalar":
    ge = jnp.swapaxes(jnp.maximum(g.astype(F32), G_FLOOR), 1, 2)  # [B, H, T]
  elif info.gate == "constant":  # a constant of the op: no gradient
    gamma = jnp.maximum(jax.lax.stop_gradient(g_gamma).astype(F32), G_FLOOR)
    ge = jnp.broadcast_to(gamma[None, :, None], (B, H, T))
  else:
    ge = jnp.zeros((B, H, T), F32)
  N = Tp // C
  # padded rows (g = 0) do not decay; G = G_hi + G_lo to ~2× float32's digits (kernel.py)
  G, G_lo = compensated_cumsum(pad_axis(ge, 2, Tp).reshape(B, H, N, C), axis=-1)
  gam, gam_lo = G[..., -1:], G_lo[..., -1:]
  if segment_ids is not None:  # padding continues the last document
    d = pad_axis(doc_index(segment_ids), 1, Tp, mode="edge").reshape(B, 1, N, C)
    prev = jnp.concatenate([jnp.zeros_like(d[:, :, :1, -1:]), d[:, :, :-1, -1:]], axis=2)
    last = d[..., -1:]
    cin, tail, carry = d == prev, d == last, last == prev
  else:
    cin = tail = carry = jnp.ones((1, 1, 1, 1), bool)
  rows = [G, G_lo, jnp.where(cin, jnp.exp(G + G_lo) * scale, 0.0),
          jnp.where(tail, jnp.exp((gam - G) + (gam_lo - G_lo)), 0.0),
          jnp.broadcast_to(jnp.where(carry, jnp.exp(gam + gam_lo), 0.0), G.shape)]
  if segment_ids is not None:
    rows.append(jnp.broadcast_to(d.astype(F32), G.shape))
  return jnp.stack([r.reshape(B, H, Tp) for r in rows], axis=2)


def prepare(cfg: Config, q, k, v, g, g_gamma, h0, segment_ids, strict: bool = False, f32_out: bool = False):
  """→ (FwdOptions, the kernel's operands (q, kᵀ, v, gate rows, h0)) of one launch (K ≤ PART)."""
  info = cfg.info
  opts = fwd_options(info, cfg.scale, cfg.block_v, cfg.output_final_state, cfg.interpret, strict, f32_out)
  Tp, Kp, Vp = opts.T, opts.K, opts.V
  pad_k = lambda x: pad_axis(pad_axis(x, 1, Tp), 3, Kp)
  kt = jnp.transpose(pad_k(k), (0, 2, 3, 1))  # [B, H, Kp, Tp]
  vec = gate_rows(info, g, g_gamma, segment_ids, cfg.scale, Tp)
  if h0 is not None:
    h0 = pad_axis(pad_axis(h0.astype(F32), 2, Kp), 3, Vp)
  return opts, (pad_k(q), kt, pad_axis(pad_axis(v, 1, Tp), 3, Vp), vec, h0)


PART = 256  # the widest K one launch takes (its f32 state tile [K, BV] in registers, its tiles in SMEM)
STRICT_PART, STRICT_BV = 128, 64  # a strict launch's widest K and its V tile: its lo tiles (kernel.py) in SMEM


def _launch(cfg: Config, q, k, v, g, g_gamma, h0, seg, strict: bool, f32_out: bool):
  """One run of the kernel (cfg.info.K ≤ PART): (o, final state or None)."""
  opts, operands = prepare(cfg, q, k, v, g, g_gamma, h0, seg, strict, f32_out)
  o, ht = chunk_fwd(*operands, opts)
  info = cfg.info
  return o[:, :info.T, :, :info.V], (ht[:, :, :info.K, :info.V] if ht is not None else None)


def _forward(cfg: Config, q, k, v, g, g_gamma, h0, seg, strict: bool = False):
  """(o, final state or None); `strict`: the kernel's strict form (o without each token's own pair,
  float32). K > PART runs in parts of ≤ PART columns of q and k: the scalar gate decays every row of the
  state alike, so each part is the op on its columns (its own rows of the state; h0's rows split with
  them), o is the float32 sum of the parts' and the final state their rows stacked. Strict launches
  take ≤ STRICT_PART columns (their compensated tiles double S's and the decayed keys' SMEM)."""
  info = cfg.info

  def launch(K, q, k, _, h0, f32_out):
    part = cfg if K == info.K else dataclasses.replace(cfg, info=dataclasses.replace(info, K=K))
    return _launch(part, q, k, v, g, g_gamma, h0, seg, strict, f32_out)

  return in_k_parts(launch, info.K, STRICT_PART if strict else PART, q, k, h0, f32_out=strict,
                    out_dtype=v.dtype, want_ht=cfg.output_final_state)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_simple_gla_mosaic(cfg: Config, q, k, v, g, g_gamma, h0, seg):
  return _forward(cfg, q, k, v, g, g_gamma, h0, seg)


def _fwd_rule(cfg, q, k, v, g, g_gamma, h0, seg):
  o, ht = _forward(cfg, q, k, v, g, g_gamma, h0, seg)
  return (o, ht), (q, k, v, g, g_gamma, h0, seg)


def _pass(cfg: Config, q, k, v, g, h0, seg, want_ht: bool, strict: bool = False):
  """One run of the forward kernel on (q, k, v) with the per-token log decay g [B, T, H] (or None),
  h0 and segment ids, at the op's scale: (o, final state or None)."""
  info = check_simple_gla_inputs(q, k, v, g, initial_state=h0, segment_ids=seg,
                                 output_final_state=want_ht)
  sub = Config(info=info, scale=cfg.scale, output_final_state=want_ht, chunk_size=C,
               block_v=default_block_v(info), interpret=cfg.interpret)
  return _forward(sub, q, k, v, g, None, h0, seg, strict)


def _bwd_rule(cfg, residuals, cotangents):
  """dq, dk, dv, dg, dh0 from three more runs of the forward kernel (module docstring)."""
  q, k, v, g, g_gamma, h0, seg = residuals
  do, dht = cotangents
  info, s = cfg.info, cfg.scale
  B, T, H = info.B, info.T, info.H
  Tp = round_up(T, C)
  do = do.astype(v.dtype)
  if info.gate == "scalar":
    gt = jnp.maximum(g.astype(F32), G_FLOOR)  # [B, T, H], as the forward's gate rows floor it
  elif info.gate == "constant":
    gt = jnp.broadcast_to(jnp.maximum(jax.lax.stop_gradient(g_gamma).astype(F32), G_FLOOR), (B, T, H))
  else:
    gt = None
  strict = info.gate == "scalar"  # dg: the dq and dk passes without each token's own pair
  # time reversal of the sequence padded to Tp (the padding first): the reversed chunks are the
  # original ones in reverse order, so the states of both directions meet at the same boundaries
  rev = lambda x, mode="constant": jnp.flip(pad_axis(x, 1, Tp, mode), 1)
  unrev = lambda x: jnp.flip(x, 1)[:, :T]
  g_rev = None
  if gt is not None:
    shifted = jnp.concatenate([jnp.zeros_like(gt[:, :1]), jnp.flip(gt, 1)[:, :T - 1]], axis=1)
    g_rev = jnp.pad(shifted, ((0, 0), (Tp - T, 0), (0, 0)))  # g⃖_τ = g_{T−τ}, g⃖ = 0 on the padding
  seg_rev = None if seg is None else rev(seg, "edge")
  if dht is not None:
    dht = dht.astype(F32)
  h0_t = None if h0 is None else jnp.swapaxes(h0.astype(F32), 2, 3)  # [B, H, V, K]

  dq, _ = _pass(cfg, do, v, k, gt, h0_t, seg, want_ht=False, strict=strict)
  dv, hT = _pass(cfg, rev(k), rev(q), rev(do), g_rev, None if dht is None else dht / s, seg_rev,
                 want_ht=h0 is not None)
  dv = unrev(dv)
  # strict: the final state's cotangent enters dk in XLA (`gate_grad`), not as this pass's state
  dht_in = None if dht is None or strict else jnp.swapaxes(dht, 2, 3) / s
  dk, _ = _pass(cfg, rev(v), rev(do), rev(q), g_rev, dht_in, seg_rev, want_ht=False, strict=strict)
  dk = unrev(dk)
  dh0 = None
  if h0 is not None:
    g0 = jnp.zeros((B, H), F32) if gt is None else gt[:, 0]
    dh0 = (hT * s * jnp.exp(g0)[:, :, None, None]).astype(h0.dtype)
  dg = None
  if strict:
    dg, dq, dk = gate_grad(s, q, k, v, gt[..., None], do, h0, dht, seg, dq, dk)
    dg = dg[..., 0].astype(g.dtype)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dg, None, dh0, None)


_chunk_simple_gla_mosaic.defvjp(_fwd_rule, _bwd_rule)


def chunk_simple_gla_mosaic(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                            output_final_state=False, segment_ids=None, chunk_size=64,
                            interpret: bool = False, block_v: int | None = None):
  """Chunkwise simple GLA, forward in Mosaic GPU (`chunk_simple_gla`'s contract; module docstring).

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V]; any T, K and V up to 512 (compiled: bf16 / fp16; K > 256 in parts).
    g: [B, T, H] log decay per token and head (≤ 0; −inf allowed), or None.
    g_gamma: [H] constant log decay per head, or None (at most one of g, g_gamma; neither: no decay).
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V] or None.
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id.
    chunk_size: accepted for the op contract (a multiple of 16); the kernel uses 64.
    interpret: run the kernel in Mosaic GPU interpret mode (CPU; float32 inputs allowed).
    block_v: V tile, 64 or 128 (default `default_block_v`).

  Returns:
    (o [B, T, H, V] in v.dtype, final_state [B, H, K, V] float32 or None); differentiable w.r.t. q, k,
    v, g and initial_state (the backward: three more runs of the Mosaic kernel, module docstring).

  Example:
    >>> B, T, H, K, V = 1, 100, 2, 48, 96
    >>> q = k = jnp.ones((B, T, H, K), jnp.bfloat16); v = jnp.ones((B, T, H, V), jnp.bfloat16)
    >>> g = jnp.full((B, T, H), -0.1)
    >>> o, ht = chunk_simple_gla_mosaic(q, k, v, g, output_final_state=True, interpret=True)
  """
  info = check_simple_gla_inputs(q, k, v, g, g_gamma=g_gamma, scale=scale,
                                 initial_state=initial_state, segment_ids=segment_ids,
                                 chunk_size=chunk_size, output_final_state=output_final_state)
  reason = check_call(info, interpret=interpret, block_v=block_v)
  if reason is not None:
    raise ValueError(f"chunk_simple_gla_mosaic: {reason}")
  return _run(info, q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
              output_final_state=output_final_state, segment_ids=segment_ids,
              chunk_size=chunk_size, interpret=interpret, block_v=block_v)


def _run(info: CallInfo, q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
         output_final_state=False, segment_ids=None, chunk_size=64, interpret=False, block_v=None):
  cfg = Config(info=info, scale=default_scale(scale, info.K), output_final_state=output_final_state,
               chunk_size=chunk_size, block_v=block_v or default_block_v(info), interpret=interpret)
  return _chunk_simple_gla_mosaic(cfg, q, k, v, g, g_gamma, initial_state, segment_ids)


def check_call(info: CallInfo, interpret: bool = False, block_v: int | None = None) -> str | None:
  """Why the Mosaic GPU forward cannot serve a call (None if it can)."""
  if info.gate not in ("scalar", "constant", "none"):
    return f"gate kind must be scalar, constant or none, got {info.gate!r}"
  if info.K > MAX_DIM or info.V > MAX_DIM:
    return f"K and V must be at most {MAX_DIM}, got K={info.K}, V={info.V}"
  if block_v is not None and block_v not in (64, 128):
    return f"block_v must be 64 or 128, got {block_v!r}"
  if interpret:
    return None
  if jnp.dtype(info.dtype) not in COMPILED_DTYPES:
    return (f"the compiled kernel takes bfloat16 or float16 q, k, v (wgmma operands), got "
            f"{info.dtype}; cast them, or use impl='xla'")
  part = dataclasses.replace(info, K=min(info.K, PART))  # K > PART runs in parts (`_forward`)
  opts = fwd_options(part, 1.0, block_v or default_block_v(info), True, False, f32_out=info.K > PART)
  if opts.smem_bytes() > SMEM_LIMIT:
    return (f"the kernel's tiles need {opts.smem_bytes()} bytes of shared memory at K={part.K} (a launch's "
            f"K), V tile {opts.BV} (> {SMEM_LIMIT}); the default V tile (64 at K > 128) fits")
  return None


# impl="auto" picks "mosaic_gpu" only where its fwd+bwd was measured faster than "triton" in one run on an
# sm90 GPU: keys (gate kind, dtype, K padded to 64, V padded to 64) from benchmarks/bench_mosaic.py --bwd,
# each with the run it comes from. The run of 2026-12-02 (H200, jax 0.11.2, benchmarks/RESULTS.md "Mosaic GPU:
# simple-GLA backward ...") measured fwd+bwd at 0.45-0.48x triton (gate g) and 0.87x (g_gamma), K = V = 128:
# no entry, so auto keeps "triton".
MEASURED_FASTER: dict[tuple[str, str, int, int], str] = {}


def auto_check(info: CallInfo) -> str | None:
  """Why impl="auto" passes over "mosaic_gpu" for a call it can serve (None: measured faster here)."""
  if not is_sm90():
    return "Mosaic GPU kernels are Hopper (sm90) only"
  key = (info.gate, jnp.dtype(info.dtype).name, round_up(info.K, 64), round_up(info.V, 64))
  if key not in MEASURED_FASTER:
    return (f"not measured faster than triton at gate={key[0]}, {key[1]}, K={info.K}, V={info.V} "
            "(MEASURED_FASTER in pallas_kernels/simple_gla/mosaic_gpu/ops.py)")
  return None


IMPLEMENTATION = Implementation(
    "mosaic_gpu", functools.partial(_run, interpret=False), platforms=frozenset({"gpu"}),
    check=functools.partial(check_call, interpret=False), auto_check=auto_check)
INTERPRET_IMPLEMENTATION = Implementation(
    "mosaic_gpu_interpret", functools.partial(_run, interpret=True),
    check=functools.partial(check_call, interpret=True))
