"""chunk_simple_gla with the Mosaic GPU forward kernel and the Triton backward: impls "mosaic_gpu_fwd"
(compiled, sm90) and "mosaic_gpu_fwd_interpret" (both kernels in interpret mode, any platform: the CPU
tests).

The Triton backward keeps only the op's inputs as residuals (it recomputes the per-chunk states;
`pallas_kernels/simple_gla/triton/ops.py`), so it can follow any forward: the output is the Mosaic
forward's, the gradients the Triton backward's on the same inputs (each is the op to bf16 accuracy; the
tests check both against the spec). On the H200 the Mosaic forward (TMA + wgmma, the state in registers)
is faster than the Triton forward at K, V ≤ 128 while the Mosaic backward (three more runs of the forward
kernel and XLA glue) is not (benchmarks/RESULTS.md, "Mosaic GPU: fourth run": forward 0.225 vs 0.267 ms at
8,2048,16,128,128; fwd+bwd 1.429 vs 1.030). The pair, measured beside the Triton op ("seventh run",
2026-12-04, gate g; g_gamma alike):

  8,2048,16,128,128   fwd 0.234 vs 0.272 ms, fwd+bwd 1.005 vs 1.038 (1.03×)
  2,8192,16,128,128   fwd 0.370 vs 0.445,   fwd+bwd 1.343 vs 1.421 (1.06×)
  4,4096,32,64,64     fwd 0.195 vs 0.294,   fwd+bwd 0.857 vs 0.950 (1.11×)
  8,2048,4,256,512    fwd 0.580 vs 0.445,   fwd+bwd 1.676 vs 1.524 (0.91×)
  8,2048,4,128,256    fwd 0.139 vs 0.140,   fwd+bwd 0.577 vs 0.571 (0.99×)

`impl="auto"` on sm90 takes this pair only at the (gate kind, dtype, K, V) of `MEASURED_FASTER`, the
entries of a recorded run in which the pair's fwd+bwd beat the Triton op's, and for at least the
measured B·H (the forward's programs are B·H·V/BV: fewer heads were not measured); else the next impl of
the order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, default_scale
from pallas_kernels.common.chunking import pad_axis
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.mosaic_gpu.layout import is_sm90, round_up
from pallas_kernels.simple_gla.mosaic_gpu import ops as mosaic
from pallas_kernels.simple_gla.triton import ops as triton

F32 = jnp.float32

# (gate kind, dtype, K padded to 64, V padded to 64) → (the smallest B·H measured, the run): the calls
# where the pair's fwd+bwd was measured faster than the Triton op's, both in one run
# (benchmarks/bench_mosaic.py --bwd --impls mosaic_gpu_fwd,triton; benchmarks/mosaic_table.py).
# The run of 2026-12-04 (H200, jax 0.11.2, benchmarks/RESULTS.md "Mosaic GPU: seventh run"; margin 1.05):
# K = V = 64 won at B·H 128 with either gate; K = V = 128 won 1.06x at B·H 32 (2,8192,16) but only 1.03x at
# B·H 128 (8,2048,16), so no entry; 128 / 256 level (0.99x), 256 / 512 slower (0.89-0.91x).
MEASURED_FASTER: dict[tuple[str, str, int, int], tuple[int, str]] = {
    ("scalar", "bfloat16", 64, 64): (128, "H200 2026-12-04, 4,4096,32,64,64: fwd+bwd 0.857 vs triton 0.950 ms"),
    ("constant", "bfloat16", 64, 64): (128, "H200 2026-12-04, 4,4096,32,64,64: fwd+bwd 0.721 vs triton 0.791 ms"),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_simple_gla(cfg: mosaic.Config, q, k, v, g, g_gamma, h0, seg):
  return mosaic._forward(cfg, q, k, v, g, g_gamma, h0, seg)


def _fwd_rule(cfg, q, k, v, g, g_gamma, h0, seg):
  return mosaic._forward(cfg, q, k, v, g, g_gamma, h0, seg), (q, k, v, g, g_gamma, h0, seg)


def _bwd_rule(cfg, residuals, cotangents):
  """The Triton backward (`triton.ops._bwd_rule`) on its padded operands; the cotangents padded with
  zeros (padded outputs are cropped, so they have none), the gradients cropped back. g_gamma is a
  constant of the op (no gradient, as in every impl)."""
  q, k, v, g, g_gamma, h0, seg = residuals
  do, dht = cotangents
  info = cfg.info
  opts, operands = triton.prepare(info, q, k, v, g, g_gamma=g_gamma, scale=cfg.scale,
                                  initial_state=h0, segment_ids=seg, interpret=cfg.interpret)
  Tp, Kp, Vp = opts.T, opts.K, opts.V
  do = pad_axis(pad_axis(do, 1, Tp), 3, Vp)
  if dht is None:
    dht = jnp.zeros((info.B, info.H, Kp, Vp), F32)
  else:
    dht = pad_axis(pad_axis(dht.astype(F32), 2, Kp), 3, Vp)
  dq, dk, dv, dg, dh0, _ = triton._bwd_rule(opts, (*operands, None), (do, dht))  # hs None: recomputed
  T, K, V = info.T, info.K, info.V
  dg = dg[:, :T].astype(g.dtype) if info.gate == "scalar" else (None if g is None else jnp.zeros_like(g))
  dh0 = None if h0 is None else dh0[:, :, :K, :V].astype(h0.dtype)
  return (dq[:, :T, :, :K].astype(q.dtype), dk[:, :T, :, :K].astype(k.dtype),
          dv[:, :T, :, :V].astype(v.dtype), dg, None, dh0, None)


_chunk_simple_gla.defvjp(_fwd_rule, _bwd_rule)


def _run(info: CallInfo, q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
         output_final_state=False, segment_ids=None, chunk_size=64, interpret: bool = False):
  del chunk_size  # both kernels use 64
  cfg = mosaic.Config(info=info, scale=default_scale(scale, info.K),
                      output_final_state=output_final_state, chunk_size=64,
                      block_v=mosaic.default_block_v(info), interpret=interpret)
  return _chunk_simple_gla(cfg, q, k, v, g, g_gamma, initial_state, segment_ids)


def check_call(info: CallInfo, interpret: bool = False) -> str | None:
  """Why the pair cannot serve a call (None if both kernels can)."""
  reason = mosaic.check_call(info, interpret=interpret)
  return reason if reason is not None else triton.check_call(info)


def auto_check(info: CallInfo) -> str | None:
  """Why impl="auto" passes over the pair for a call it can serve (None: measured faster here)."""
  if not is_sm90():
    return "Mosaic GPU kernels are Hopper (sm90) only"
  key = (info.gate, jnp.dtype(info.dtype).name, round_up(info.K, 64), round_up(info.V, 64))
  if key not in MEASURED_FASTER:
    return (f"the pair was not measured faster than triton at gate={key[0]}, {key[1]}, K={info.K}, "
            f"V={info.V} (MEASURED_FASTER in pallas_kernels/simple_gla/mosaic_gpu/fwd_triton_bwd.py)")
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
