"""The public simple-GLA ops on the family's one registry (`pallas_kernels.common.dispatch.Op`).

`CHUNK_SIMPLE_GLA` owns the input check (run once per call) and the implementations: the jnp forms
registered here, the kernel backends ("triton", "tpu", "mosaic_gpu", "mosaic_gpu_fwd") imported on
first use from their subfolders, which define their `Implementation` and never import this module.
`impl="auto"` walks the platform's list (GPU: mosaic_gpu_fwd — the Mosaic forward with the Triton
backward — and mosaic_gpu, each only at the shapes of its table of measured wins on sm90, then triton,
xla; TPU and CPU: xla — the TPU kernels stay explicit-only until they have run on a TPU) and takes the first implementation that supports the call; an explicit `impl` that cannot serve the
call raises a ValueError with the reason — there is no silent fallback.

The one-token op (`FUSED_RECURRENT_*`) has the fused decode kernels as backends (triton/decode.py), which
serve T = 1 calls only: "auto" on a GPU takes "triton" for a decode step and "xla" for longer calls;
`decode_impl(name)` makes the calls that pass no impl (the mixers') take `name`.
"""

from __future__ import annotations

from pallas_kernels.common.checks import CallInfo, check_simple_gla_inputs
from pallas_kernels.common.dispatch import Implementation, Op, associative_check, reference
from pallas_kernels.gla.ops import prefer_impl
from pallas_kernels.simple_gla.chunk import chunk_simple_gla_xla
from pallas_kernels.simple_gla.fused_recurrent import fused_recurrent_simple_gla_scan
from pallas_kernels.simple_gla.naive import (naive_associative_simple_gla, naive_parallel_simple_gla,
                                             naive_recurrent_simple_gla)


def _check_chunk(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                 output_final_state=False, segment_ids=None, chunk_size=64) -> CallInfo:
  return check_simple_gla_inputs(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                                 segment_ids=segment_ids, chunk_size=chunk_size,
                                 output_final_state=output_final_state)


def _check_recurrent(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                     output_final_state=False, segment_ids=None) -> CallInfo:
  return check_simple_gla_inputs(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                                 segment_ids=segment_ids, output_final_state=output_final_state)


CHUNK_SIMPLE_GLA = Op("chunk_simple_gla", check=_check_chunk,
                      # GPU: the Mosaic impls first, each taken by auto only where its table of measured
                      # shapes says so (`MEASURED_FASTER`, sm90); elsewhere triton serves
                      auto_order={"gpu": ("mosaic_gpu_fwd", "mosaic_gpu", "triton", "xla"), "tpu": ("xla",),
                                  "cpu": ("xla",)},
                      backends={"triton": "pallas_kernels.simple_gla.triton.ops:IMPLEMENTATION",
                                "tpu": "pallas_kernels.simple_gla.tpu.ops:IMPLEMENTATION",
                                "mosaic_gpu": "pallas_kernels.simple_gla.mosaic_gpu.ops:IMPLEMENTATION",
                                "mosaic_gpu_interpret":
                                    "pallas_kernels.simple_gla.mosaic_gpu.ops:INTERPRET_IMPLEMENTATION",
                                "mosaic_gpu_fwd":
                                    "pallas_kernels.simple_gla.mosaic_gpu.fwd_triton_bwd:IMPLEMENTATION",
                                "mosaic_gpu_fwd_interpret":
                                    "pallas_kernels.simple_gla.mosaic_gpu.fwd_triton_bwd:INTERPRET_IMPLEMENTATION"})
# The decode kernels serve T = 1 calls only (`check_call`); longer calls fall through to "xla".
FUSED_RECURRENT_SIMPLE_GLA = Op(
    "fused_recurrent_simple_gla", check=_check_recurrent, auto_order={"gpu": ("xla",)},  # as GLA's (gla/ops.py)
    backends={"triton": "pallas_kernels.simple_gla.triton.decode:IMPLEMENTATION",
              "triton_interpret": "pallas_kernels.simple_gla.triton.decode:INTERPRET_IMPLEMENTATION"})


def chunk_simple_gla(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                     output_final_state=False, segment_ids=None, chunk_size=64, impl="auto"):
  """Simple gated linear attention, chunkwise: one decay per token and head (fla's `chunk_simple_gla`).

      S_t = exp(g_t,h) · S_{t-1} + k_tᵀ v_t ;   o_t = scale · q_t · S_t

  Args:
    q, k: [B, T, H, K] queries and keys (float32, bfloat16 or float16; one dtype with v).
    v: [B, T, H, V] values.
    g: [B, T, H] log decay per token and head (≤ 0; −inf allowed: a full reset), float32 or the inputs'
      dtype — Mamba-2's Δ·A, gated RetNet. Or None.
    g_gamma: [H] constant log decay per head (RetNet log(1 − 2^(−5−h)), Lightning) or None. A constant of
      the op: no gradient flows to it. At most one of g, g_gamma; neither means no decay.
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V], the state before t = 0 (float32 preferred).
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id (packed documents);
      `initial_state` applies to each row's first segment.
    chunk_size: tokens per chunk (a multiple of 16, at most 1024).
    impl: "auto" or a name from `available_impls()`.

  Returns:
    o [B, T, H, V] in v's dtype, and final_state [B, H, K, V] float32 (None unless requested).
    Differentiable w.r.t. q, k, v, g and initial_state.

  Example:
    >>> B, T, H, K, V = 2, 256, 4, 64, 128
    >>> kq, kk, kv, kg = jax.random.split(jax.random.key(0), 4)
    >>> q = jax.random.normal(kq, (B, T, H, K), jnp.bfloat16)
    >>> k = jax.random.normal(kk, (B, T, H, K), jnp.bfloat16)
    >>> v = jax.random.normal(kv, (B, T, H, V), jnp.bfloat16)
    >>> g = jax.nn.log_sigmoid(jax.random.normal(kg, (B, T, H)))
    >>> o, state = chunk_simple_gla(q, k, v, g, output_final_state=True)
    >>> g_gamma = jnp.log1p(-2.0 ** (-5.0 - jnp.arange(H)))  # RetNet
    >>> o, _ = chunk_simple_gla(q, k, v, g_gamma=g_gamma)
  """
  return CHUNK_SIMPLE_GLA(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                          output_final_state=output_final_state, segment_ids=segment_ids,
                          chunk_size=chunk_size, impl=impl)


def fused_recurrent_simple_gla(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                               output_final_state=False, segment_ids=None, impl="auto"):
  """Simple GLA token by token: for short sequences and decoding (T = 1 has its own path, no scan).

  Same arguments, returns and gradients as `chunk_simple_gla` (without `chunk_size`). `impl`: "auto",
  "xla" (one `lax.scan`; its gradient keeps a state per token, so train long sequences with
  `chunk_simple_gla`), or for one token (T = 1, a decode step) the fused decode kernel: "triton"
  (Pallas Triton, GPU; what "auto" takes there) or "triton_interpret" (interpret mode, any platform);
  its gradients are the "xla" step's. `decode_impl(name)` sets the impl of the calls that pass none.

  Example (decoding one token with the state carried along):
    >>> o_t, state = fused_recurrent_simple_gla(q[:, -1:], k[:, -1:], v[:, -1:], g[:, -1:],
    ...                                         initial_state=state, output_final_state=True)
  """
  return FUSED_RECURRENT_SIMPLE_GLA(q, k, v, g, g_gamma=g_gamma, scale=scale,
                                    initial_state=initial_state,
                                    output_final_state=output_final_state, segment_ids=segment_ids,
                                    impl=impl)


def decode_impl(name: str):
  """Context manager: within it, `fused_recurrent_simple_gla` calls with impl="auto" (the RetNet,
  Lightning, Mamba-2 mixers' decode steps) take `name` where it serves the call; read at trace time,
  like `pallas_kernels.gla.ops.decode_impl`."""
  return prefer_impl(FUSED_RECURRENT_SIMPLE_GLA, name)


def available_impls() -> tuple[str, ...]:
  """Every implementation name `chunk_simple_gla` accepts besides "auto"."""
  return CHUNK_SIMPLE_GLA.available_impls()


def select_impl(info: CallInfo, impl: str = "auto", platform: str | None = None) -> Implementation:
  """The implementation of `chunk_simple_gla` that serves a checked call; ValueError if the named one
  cannot."""
  return CHUNK_SIMPLE_GLA.select(info, impl, platform)


# ------------------------------------------------------------------------------------------------
# built-in implementations
# ------------------------------------------------------------------------------------------------


def _parallel_check(info: CallInfo) -> str | None:
  if info.T > 2048:
    return f"the T×T parallel reference holds [T, T] decays per head; T={info.T} > 2048"
  return None


CHUNK_SIMPLE_GLA.register(Implementation("xla", chunk_simple_gla_xla))
CHUNK_SIMPLE_GLA.register(Implementation("naive", reference(naive_recurrent_simple_gla)))
CHUNK_SIMPLE_GLA.register(Implementation("associative", reference(naive_associative_simple_gla),
                                         check=associative_check))
CHUNK_SIMPLE_GLA.register(Implementation("parallel", reference(naive_parallel_simple_gla),
                                         check=_parallel_check))
FUSED_RECURRENT_SIMPLE_GLA.register(Implementation("xla", fused_recurrent_simple_gla_scan))
