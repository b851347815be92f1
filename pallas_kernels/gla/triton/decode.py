"""GLA decode step (T = 1) as one Pallas Triton kernel: state update and output in one pass.

    o, h = gla_decode_step(q, k, v, g, h0, reset=None, scale=None, interpret=False)

Registered as `fused_recurrent_gla(..., impl="triton")` for T = 1 calls (the mixers' `decode_step`), and
preferred by `impl="auto"` on GPUs for them; `impl="triton_interpret"` runs the same kernel in Pallas
interpret mode on any platform (tests, the model-level check on CPU). The kernel
(`pallas_kernels/common/triton/decode.py`) reads the float32 state [B, H, K, V] once and writes it once,
in place. Gradients (rarely wanted through a decode step) are the vjp of the XLA step
(`pallas_kernels.gla.fused_recurrent._step`), so values and gradients both match the "xla" impl.

Inputs: any K, V in 1..512 (K padded to a power of two in the block and masked; the arrays are never
padded), q, k, v in float32 / bfloat16 / float16, g float32 or the inputs' dtype (−inf allowed: a full
reset), state float32.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from pallas_kernels.common.checks import CallInfo, default_scale
from pallas_kernels.common.dispatch import ALL_PLATFORMS, Implementation
from pallas_kernels.common.triton import decode as shared
from pallas_kernels.common.triton.decode import MAX_DIM, DecodeOptions
from pallas_kernels.gla.fused_recurrent import _step

F32 = jnp.float32


def _kernel(opts, q, k, v, g, h0, reset):
  return shared.decode_step(q, k, v, g, h0, reset, opts)


def xla_step(opts: DecodeOptions, q, k, v, g, h0, reset):
  """The XLA step on the kernel's arguments → (o [B, H, V] in v's dtype, h f32): the backward's spec."""
  h = jnp.zeros((opts.B, opts.H, opts.K, opts.V), F32) if h0 is None else h0
  start = jnp.zeros((opts.B,), bool) if reset is None else reset != 0
  h, o = _step(h, q, k, v, g, start, opts.scale)
  return o.astype(v.dtype), h


decode_with_xla_grads = functools.partial(shared.xla_with_kernel_forward, xla_step_fn=xla_step)
_decode = decode_with_xla_grads(_kernel)


def gla_decode_step(q, k, v, g, h0=None, reset=None, *, scale=None, interpret: bool = False,
                    bv: int | None = None, num_warps: int | None = None):
  """One GLA token: S ← diag(e^g) S + kᵀ v (S ← kᵀ v where `reset`), o = scale · q S.

  Args:
    q, k, g: [B, H, K] (g: log forget gates, float32 or the inputs' dtype); v: [B, H, V].
    h0: [B, H, K, V] state (float32; None: zeros).
    reset: [B] bool / int (True: a new document starts at this token) or None.
    scale: defaults to K ** -0.5.
    interpret: Pallas interpret mode (CPU); bv, num_warps: override the default tile / warps.

  Returns:
    (o [B, H, V] in v's dtype, new state [B, H, K, V] float32); differentiable (XLA-step gradients).

  Example:
    >>> B, H, K, V = 2, 4, 64, 128
    >>> q = k = jnp.ones((B, H, K), jnp.bfloat16); v = jnp.ones((B, H, V), jnp.bfloat16)
    >>> g = jnp.full((B, H, K), -0.1); h0 = jnp.zeros((B, H, K, V))
    >>> o, h = gla_decode_step(q, k, v, g, h0, interpret=True)
  """
  B, H, K = _check(q, k, v, g, h0, reset)
  V = v.shape[-1]
  opts = DecodeOptions.make("vector", scale=default_scale(scale, K), B=B, H=H, K=K, V=V,
                            has_h0=h0 is not None, has_reset=reset is not None, interpret=interpret,
                            bv=bv, num_warps=num_warps)
  h0 = None if h0 is None else h0.astype(F32)
  reset = None if reset is None else jnp.asarray(reset).astype(jnp.int32)
  return _decode(opts, q, k, v, g, h0, reset)


def _check(q, k, v, g, h0, reset):
  if q.ndim != 3 or k.shape != q.shape:
    raise ValueError(f"q and k must have one shape [B, H, K], got q {q.shape}, k {k.shape}")
  B, H, K = q.shape
  if v.ndim != 3 or v.shape[:2] != (B, H):
    raise ValueError(f"v must have shape [B, H, V] = [{B}, {H}, V], got {v.shape}")
  if g.shape != q.shape:
    raise ValueError(f"g must have the shape of q {q.shape} = [B, H, K], got {g.shape}")
  if K > MAX_DIM or v.shape[2] > MAX_DIM:
    raise ValueError(f"K and V must be at most {MAX_DIM}, got K={K}, V={v.shape[2]}")
  if h0 is not None and h0.shape != (B, H, K, v.shape[2]):
    raise ValueError(f"h0 must have shape [B, H, K, V] = {(B, H, K, v.shape[2])}, got {h0.shape}")
  if reset is not None and jnp.shape(reset) != (B,):
    raise ValueError(f"reset must have shape [B] = ({B},), got {jnp.shape(reset)}")
  return B, H, K


# ------------------------------------------------------------------------------------------------
# the op's implementation (fused_recurrent_gla contract, T = 1)
# ------------------------------------------------------------------------------------------------


def check_call(info: CallInfo) -> str | None:
  """Why the decode kernel cannot serve a checked fused_recurrent_gla call (None if it can)."""
  if info.T != 1:
    return f"the decode kernel serves one token per row (T = 1), got T={info.T}; use impl='xla'"
  if info.K > MAX_DIM or info.V > MAX_DIM:
    return f"K and V must be at most {MAX_DIM}, got K={info.K}, V={info.V}"
  return None


def op_impl(kernel_forward):
  """The fused_recurrent_gla implementation over a decode forward `f(opts, q, k, v, g, h0, reset)`
  with XLA-step gradients (the Pallas one here, jax-triton's in gla/jax_triton/decode.py)."""

  def run(info: CallInfo, q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
          segment_ids=None, interpret: bool = False):
    # segment_ids of one token mark no document start (a start is a change of id at t > 0)
    del segment_ids
    opts = DecodeOptions.make("vector", scale=default_scale(scale, info.K), B=info.B, H=info.H,
                              K=info.K, V=info.V, has_h0=initial_state is not None, has_reset=False,
                              interpret=interpret)
    h0 = None if initial_state is None else initial_state.astype(F32)
    o, h = kernel_forward(opts, q[:, 0], k[:, 0], v[:, 0], g[:, 0], h0, None)
    return o[:, None], (h if output_final_state else None)

  return run


_run = op_impl(_decode)
IMPLEMENTATION = Implementation("triton", _run, platforms=frozenset({"gpu"}), check=check_call)
INTERPRET_IMPLEMENTATION = Implementation("triton_interpret", functools.partial(_run, interpret=True),
                                          platforms=ALL_PLATFORMS, check=check_call)
