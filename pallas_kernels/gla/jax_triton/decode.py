"""GLA decode step (T = 1) written in the Triton language and called through `jax_triton.triton_call`.

    o, h = gla_decode_step_jax_triton(q, k, v, g, h0=None, reset=None, scale=None)

The same algorithm, grid and tiles as the Pallas kernel (`pallas_kernels/common/triton/decode.py`, tiles
from `DecodeOptions.make`): one program per (b·h, V tile) loads its float32 state tile [Kp, BV] once,
applies S ← diag(e^g) S + kᵀ v (S ← kᵀ v on reset rows) and o = scale · q S, and stores o and S over the
input state (aliased). Written by hand to compare the two lowerings on the GPU
(benchmarks/bench_generate.py); registered as `fused_recurrent_gla(..., impl="jax_triton")` for T = 1
calls. Gradients are the XLA step's vjp, as for the Pallas kernel.

Present only where `jax_triton` and `triton` import (the `gpu` extra on a CUDA machine): otherwise
`IMPLEMENTATION` is None and the op does not list "jax_triton".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import default_scale
from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.common.triton.decode import DecodeOptions
from pallas_kernels.gla.triton.decode import _check, check_call, decode_with_xla_grads, op_impl

try:  # the whole backend is optional
  import jax_triton as jt
  import triton
  import triton.language as tl
except ImportError as e:  # ModuleNotFoundError, or jax_triton on a jaxlib without GPU support
  jt = triton = tl = None
  IMPORT_ERROR: str | None = f"{type(e).__name__}: {e}"
else:
  IMPORT_ERROR = None

F32 = jnp.float32


@functools.cache
def _triton_kernel():
  """The @triton.jit kernel (defined on first use: this module imports without triton)."""

  @triton.jit
  def gla_decode_kernel(q_ptr, k_ptr, v_ptr, g_ptr, h0_ptr, reset_ptr, o_ptr, ht_ptr,
                        SCALE: tl.constexpr, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, HAS_RESET: tl.constexpr):
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    q = tl.load(q_ptr + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + i_bh * V + o_v, mask=m_v, other=0.0).to(tl.float32)
    p_h = i_bh * K * V + o_k[:, None] * V + o_v[None, :]
    h = tl.load(h0_ptr + p_h, mask=m_h, other=0.0)
    d = tl.exp(g)
    if HAS_RESET:
      r = tl.load(reset_ptr + i_bh // H)
      d = tl.where(r != 0, 0.0, d)
    h = d[:, None] * h + k[:, None] * v[None, :]
    o = tl.sum(q[:, None] * h, axis=0) * SCALE
    tl.store(o_ptr + i_bh * V + o_v, o.to(o_ptr.dtype.element_ty), mask=m_v)
    tl.store(ht_ptr + p_h, h, mask=m_h)

  return gla_decode_kernel


def _kernel(opts: DecodeOptions, q, k, v, g, h0, reset):
  """The kernel on the [B, H, ·] arrays → (o [B, H, V] in v's dtype, h [B, H, K, V] f32)."""
  B, H, K, V, BH = opts.B, opts.H, opts.K, opts.V, opts.B * opts.H
  h0 = jnp.zeros((BH, K, V), F32) if h0 is None else h0.reshape(BH, K, V)
  reset = jnp.zeros((B,), jnp.int32) if reset is None else reset.astype(jnp.int32)
  o, h = jt.triton_call(
      q.reshape(BH, K), k.reshape(BH, K), v.reshape(BH, V), g.reshape(BH, K), h0, reset,
      kernel=_triton_kernel(),
      out_shape=(jax.ShapeDtypeStruct((BH, V), v.dtype), jax.ShapeDtypeStruct((BH, K, V), F32)),
      grid=(BH, opts.nv),
      input_output_aliases={4: 1},
      num_warps=opts.num_warps,
      num_stages=1,
      name="gla_decode_step_jax_triton",
      SCALE=opts.scale, H=H, K=K, V=V, BK=opts.Kp, BV=opts.bv, HAS_RESET=opts.has_reset)
  return o.reshape(B, H, V), h.reshape(B, H, K, V)


_decode = decode_with_xla_grads(_kernel)


def gla_decode_step_jax_triton(q, k, v, g, h0=None, reset=None, *, scale=None, bv: int | None = None,
                               num_warps: int | None = None):
  """`pallas_kernels.gla.triton.decode.gla_decode_step` through jax-triton (GPU only; same arguments
  and returns, no interpret mode)."""
  if IMPORT_ERROR is not None:
    raise ValueError(f"the jax_triton decode kernel needs jax_triton and triton ({IMPORT_ERROR})")
  B, H, K = _check(q, k, v, g, h0, reset)
  opts = DecodeOptions.make("vector", scale=default_scale(scale, K), B=B, H=H, K=K, V=v.shape[-1],
                            has_h0=h0 is not None, has_reset=reset is not None, bv=bv,
                            num_warps=num_warps)
  h0 = None if h0 is None else h0.astype(F32)
  reset = None if reset is None else jnp.asarray(reset).astype(jnp.int32)
  return _decode(opts, q, k, v, g, h0, reset)


IMPLEMENTATION = (None if IMPORT_ERROR is not None else
                  Implementation("jax_triton", op_impl(_decode), platforms=frozenset({"gpu"}),
                                 check=check_call))
