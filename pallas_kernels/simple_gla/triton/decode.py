"""Simple-GLA decode step (T = 1) as one Pallas Triton kernel: state update and output in one pass.

    o, h = simple_gla_decode_step(q, k, v, g=None, h0=None, reset=None, g_gamma=None, scale=None)

Registered as `fused_recurrent_simple_gla(..., impl="triton")` for T = 1 calls (the RetNet, Lightning,
Mamba-2 mixers' `decode_step`), preferred by `impl="auto"` on GPUs for them; `impl="triton_interpret"`
runs the same kernel in Pallas interpret mode anywhere. One decay per row and head (g [B, H]), per head
(g_gamma [H], a constant: no gradient), or none. The kernel (`pallas_kernels/common/triton/decode.py`)
reads the float32 state once and writes it once, in place; gradients are the vjp of the XLA step
(`pallas_kernels.simple_gla.fused_recurrent._step`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, default_scale
from pallas_kernels.common.dispatch import ALL_PLATFORMS, Implementation
from pallas_kernels.common.triton import decode as shared
from pallas_kernels.common.triton.decode import MAX_DIM, DecodeOptions
from pallas_kernels.simple_gla.fused_recurrent import _step

F32 = jnp.float32


def _kernel(opts, q, k, v, gate, h0, reset):
  return shared.decode_step(q, k, v, gate, h0, reset, opts)


def xla_step(opts: DecodeOptions, q, k, v, gate, h0, reset):
  """The XLA step on the kernel's arguments → (o [B, H, V] in v's dtype, h f32)."""
  h = jnp.zeros((opts.B, opts.H, opts.K, opts.V), F32) if h0 is None else h0
  start = jnp.zeros((opts.B,), bool) if reset is None else reset != 0
  if opts.gate == "constant":  # g_gamma is a constant of the op
    gate = jnp.broadcast_to(jax.lax.stop_gradient(gate).astype(F32), (opts.B, opts.H))
  h, o = _step(h, q, k, v, gate if opts.gate != "none" else None, start, opts.scale)
  return o.astype(v.dtype), h


_decode = shared.xla_with_kernel_forward(_kernel, xla_step)


def _gate_kind(g, g_gamma) -> str:
  if g is not None and g_gamma is not None:
    raise ValueError("pass at most one of g and g_gamma")
  return "scalar" if g is not None else "constant" if g_gamma is not None else "none"


def simple_gla_decode_step(q, k, v, g=None, h0=None, reset=None, *, g_gamma=None, scale=None,
                           interpret: bool = False, bv: int | None = None,
                           num_warps: int | None = None):
  """One simple-GLA token: S ← e^{g} S + kᵀ v (S ← kᵀ v where `reset`), o = scale · q S.

  Args:
    q, k: [B, H, K]; v: [B, H, V].
    g: [B, H] log decay per row and head, or None. g_gamma: [H] constant log decay, or None.
    h0: [B, H, K, V] state (float32; None: zeros). reset: [B] bool / int or None.
    scale: defaults to K ** -0.5; interpret: Pallas interpret mode; bv, num_warps: tile overrides.

  Returns:
    (o [B, H, V] in v's dtype, new state [B, H, K, V] float32); differentiable (XLA-step gradients).

  Example:
    >>> o, h = simple_gla_decode_step(q, k, v, g_gamma=jnp.log1p(-2.0 ** (-5.0 - jnp.arange(4))),
    ...                               h0=h0, interpret=True)
  """
  gate = _gate_kind(g, g_gamma)
  if q.ndim != 3 or k.shape != q.shape:
    raise ValueError(f"q and k must have one shape [B, H, K], got q {q.shape}, k {k.shape}")
  B, H, K = q.shape
  if v.ndim != 3 or v.shape[:2] != (B, H):
    raise ValueError(f"v must have shape [B, H, V] = [{B}, {H}, V], got {v.shape}")
  V = v.shape[2]
  if g is not None and g.shape != (B, H):
    raise ValueError(f"g must have shape [B, H] = {(B, H)}, got {g.shape}")
  if g_gamma is not None and jnp.shape(g_gamma) != (H,):
    raise ValueError(f"g_gamma must have shape [H] = ({H},), got {jnp.shape(g_gamma)}")
  if K > MAX_DIM or V > MAX_DIM:
    raise ValueError(f"K and V must be at most {MAX_DIM}, got K={K}, V={V}")
  if h0 is not None and h0.shape != (B, H, K, V):
    raise ValueError(f"h0 must have shape [B, H, K, V] = {(B, H, K, V)}, got {h0.shape}")
  if reset is not None and jnp.shape(reset) != (B,):
    raise ValueError(f"reset must have shape [B] = ({B},), got {jnp.shape(reset)}")
  opts = DecodeOptions.make(gate, scale=default_scale(scale, K), B=B, H=H, K=K, V=V,
                            has_h0=h0 is not None, has_reset=reset is not None, interpret=interpret,
                            bv=bv, num_warps=num_warps)
  h0 = None if h0 is None else h0.astype(F32)
  reset = None if reset is None else jnp.asarray(reset).astype(jnp.int32)
  gate_arg = g if g is not None else (None if g_gamma is None else jnp.asarray(g_gamma, F32))
  return _decode(opts, q, k, v, gate_arg, h0, reset)


# ------------------------------------------------------------------------------------------------
# the op's implementation (fused_recurrent_simple_gla contract, T = 1)
# ------------------------------------------------------------------------------------------------


def check_call(info: CallInfo) -> str | None:
  """Why the decode kernel cannot serve a checked fused_recurrent_simple_gla call (None if it can)."""
  if info.T != 1:
    return f"the decode kernel serves one token per row (T = 1), got T={info.T}; use impl='xla'"
  if info.K > MAX_DIM or info.V > MAX_DIM:
    return f"K and V must be at most {MAX_DIM}, got K={info.K}, V={info.V}"
  return None


def _run(info: CallInfo, q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
         output_final_state=False, segment_ids=None, interpret: bool = False):
  del segment_ids  # one token: no document start (a start is a change of id at t > 0)
  gate = {"scalar": "scalar", "constant": "constant", "none": "none"}[info.gate]
  opts = DecodeOptions.make(gate, scale=default_scale(scale, info.K), B=info.B, H=info.H, K=info.K,
                            V=info.V, has_h0=initial_state is not None, has_reset=False,
                            interpret=interpret)
  gate_arg = g[:, 0] if gate == "scalar" else (jnp.asarray(g_gamma, F32) if gate == "constant" else None)
  h0 = None if initial_state is None else initial_state.astype(F32)
  o, h = _decode(opts, q[:, 0], k[:, 0], v[:, 0], gate_arg, h0, None)
  return o[:, None], (h if output_final_state else None)


IMPLEMENTATION = Implementation("triton", _run, platforms=frozenset({"gpu"}), check=check_call)
INTERPRET_IMPLEMENTATION = Implementation("triton_interpret", functools.partial(_run, interpret=True),
                                          platforms=ALL_PLATFORMS, check=check_call)
