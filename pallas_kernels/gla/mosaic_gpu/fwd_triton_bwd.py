"""chunk_gla with the Mosaic GPU forward kernel and the Triton backward: impls "mosaic_gpu_fwd" (compiled,
sm90) and "mosaic_gpu_fwd_interpret" (both kernels in interpret mode, any platform: the CPU tests).

Both backwards take only the op's inputs as residuals (the Triton backward recomputes its per-chunk
states; docs/kernels.md), so the forward and the backward can come from different kernels: the output
is the Mosaic forward's, the gradients the Triton backward's on the same inputs (each is the op to
bf16 accuracy, so they are the gradients of the output to that accuracy; the tests check both against
the spec). On the H200 (benchmarks/RESULTS.md, "Mosaic GPU: sixth run", 2026-12-04) the Mosaic forward
is faster than the Triton forward at the 1.3B layer's head dims while its backward is not:

  8,2048,4,256,512: forward 1.399 vs 1.594 ms (Triton fwd+bwd 4.092); this pair, in a second run the
                    same day: fwd 1.413 vs 1.609, fwd+bwd 3.913 vs 4.086 ms (1.04×)
  8,2048,4,128,256: forward 0.400 vs 0.510 ms in the first run, but 0.415 vs 0.402 in the second (the
                    Triton forward's 0.510 an outlier: 0.399 the day before), so no entry

`impl="auto"` on sm90 takes this pair only at the (dtype, K, V) of `MEASURED_FASTER`, the entries of
that run (and for at least the measured B·H, since the forward's programs are B·H·V/128: fewer heads
were not measured), else "triton".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, default_scale
from pallas_kernels.common.chunking import pad_axis
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.mosaic_gpu.layout import G_FLOOR, is_sm90, round_up
from pallas_kernels.gla.mosaic_gpu import ops as mosaic
from pallas_kernels.gla.triton import ops as triton

F32 = jnp.float32

# (dtype, K padded to 64, V padded to 64) → (the smallest B·H measured, the run): the calls where the
# Mosaic forward was measured faster than the Triton forward, both in one run (bench_mosaic.py --bwd).
MEASURED_FASTER: dict[tuple[str, int, int], tuple[int, str]] = {
    ("bfloat16", 256, 512): (32, "H200 2026-12-04, 8,2048,4,256,512: fwd 1.413 vs triton 1.609 ms, "
                                 "fwd+bwd 3.913 vs 4.086"),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_gla(cfg: mosaic.Config, q, k, v, g, h0, seg):
  return mosaic._forward(cfg, q, k, v, g, h0, seg)


def _fwd_rule(cfg, q, k, v, g, h0, seg):
  return mosaic._forward(cfg, q, k, v, g, h0, seg), (q, k, v, g, h0, seg)


def _bwd_rule(cfg, residuals, cotangents):
  """The Triton backward (`triton.ops._chunk_gla_bwd_rule`) on its padded operands; the cotangents
  padded with zeros (padded outputs are cropped, so they have none), the gradients cropped back."""
  q, k, v, g, h0, seg = residuals
  do, dht = cotangents
  info = cfg.info
  opts, (qp, kp, vp, gp, h0p, doc) = triton.prepare(q, k, v, g, info=info, scale=cfg.scale,
                                                    initial_state=h0, segment_ids=seg,
                                                    interpret=cfg.interpret)
  Tp, Kp, Vp = opts.T, opts.K, opts.V
  do = pad_axis(pad_axis(do, 1, Tp), 3, Vp)
  if dht is None:
    dht = jnp.zeros((info.B, info.H, Kp, Vp), F32)
  else:
    dht = pad_axis(pad_axis(dht.astype(F32), 2, Kp), 3, Vp)
  dq, dk, dv, dg, dh0, _ = triton._chunk_gla_bwd_rule(opts, (qp, kp, vp, gp, h0p, doc, None),
                                                        (do, dht))
  T, K, V = info.T, info.K, info.V
  dg = jnp.where(g < G_FLOOR, 0.0, dg[:, :T, :, :K].astype(F32)).astype(g.dtype)  # the floor's gradient
  dh0 = None if h0 is None else dh0[:, :, :K, :V].astype(h0.dtype)
  return (dq[:, :T, :, :K].astype(q.dtype), dk[:, :T, :, :K].astype(k.dtype),
          dv[:, :T, :, :V].astype(v.dtype), dg, dh0, None)


_chunk_gla.defvjp(_fwd_rule, _bwd_rule)


def _run(info: CallInfo, q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
         segment_ids=None, chunk_size=64, interpret: bool = False):
  del chunk_size  # both kernels use 64
  cfg = mosaic.Config(info=info, scale=default_scale(scale, info.K),
                      output_final_state=output_final_state, chunk_size=64,
                      block_v=mosaic.default_block_v(info), interpret=interpret, path="auto")
  return _chunk_gla(cfg, q, k, v, g, initial_state, segment_ids)


def check_call(info: CallInfo, interpret: bool = False) -> str | None:
  """Why the pair cannot serve a call (None if both kernels can)."""
  reason = mosaic.check_call(info, interpret=interpret)
  return reason if reason is not None else triton.check_call(info)


def auto_check(info: CallInfo) -> str | None:
  """Why impl="auto" passes over the pair for a call it can serve (None: measured faster here)."""
  if not is_sm90():
    return "Mosaic GPU kernels are Hopper (sm90) only"
  key = (jnp.dtype(info.dtype).name, round_up(info.K, 64), round_up(info.V, 64))
  if key not in MEASURED_FASTER:
    return (f"the Mosaic forward was not measured faster than triton's at {key[0]}, K={info.K}, "
            f"V={info.V} (MEASURED_FASTER in pallas_kernels/gla/mosaic_gpu/fwd_triton_bwd.py)")
  min_bh = MEASURED_FASTER[key][0]
  if info.B * info.H < min_bh:
    return f"measured at B·H ≥ {min_bh} only, got B·H = {info.B * info.H}"
  return None


IMPLEMENTATION = Implementation(
    "mosaic_gpu_fwd", functools.partial(_run, interpret=False), platforms=frozenset({"gpu"}),
    check=functools.partial(check_call, interpret=False), auto_check=auto_check)
INTERPRET_IMPLEMENTATION = Implementation(
    "mosaic_gpu_fwd_interpret", functools.partial(_run, interpret=True),
    check=functools.partial(check_call, interpret=True))
