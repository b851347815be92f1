"""The public GLA ops on the family's one registry (`pallas_kernels.common.dispatch.Op`).

`CHUNK_GLA` owns the input check (run once per call) and the implementations: the jnp forms registered
here, the kernel backends ("triton", "tpu", "mosaic_gpu", "mosaic_gpu_fwd") imported on first use from
their subfolders, which define their `Implementation` and never import this module. `impl="auto"` walks
the platform's list (GPU: mosaic_gpu_fwd — the Mosaic forward with the Triton backward, only at the
shapes of its measured table on sm90 — then triton, xla; TPU and CPU: xla — the TPU kernels stay
explicit-only until they have run on a TPU) and takes the first implementation that supports the call; an explicit `impl` that cannot serve the call
raises a ValueError with the reason — there is no silent fallback.

The one-token op (`FUSED_RECURRENT_*`) has the fused decode kernels as backends (triton/decode.py), which
serve T = 1 calls only: "auto" on a GPU takes "triton" for a decode step and "xla" for longer calls;
`decode_impl(name)` makes the calls that pass no impl (the mixers') take `name`.
"""

from __future__ import annotations

import contextlib

from pallas_kernels.common.checks import CallInfo, check_gla_inputs
from pallas_kernels.common.dispatch import Implementation, Op, associative_check, reference
from pallas_kernels.gla.chunk import chunk_gla_xla
from pallas_kernels.gla.fused_recurrent import fused_recurrent_gla_scan
from pallas_kernels.gla.naive import naive_associative_gla, naive_parallel_gla, naive_recurrent_gla


def _check_chunk(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                 segment_ids=None, chunk_size=64) -> CallInfo:
  return check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state,
                          segment_ids=segment_ids, chunk_size=chunk_size,
                          output_final_state=output_final_state)


def _check_recurrent(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                     segment_ids=None) -> CallInfo:
  return check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state,
                          segment_ids=segment_ids, output_final_state=output_final_state)


CHUNK_GLA = Op("chunk_gla", check=_check_chunk,
               auto_order={"gpu": ("mosaic_gpu_fwd", "triton", "xla"), "tpu": ("xla",), "cpu": ("xla",)},
               backends={"triton": "pallas_kernels.gla.triton.ops:IMPLEMENTATION",
                         "tpu": "pallas_kernels.gla.tpu.ops:IMPLEMENTATION",
                         "mosaic_gpu": "pallas_kernels.gla.mosaic_gpu.ops:IMPLEMENTATION",
                         "mosaic_gpu_interpret":
                             "pallas_kernels.gla.mosaic_gpu.ops:INTERPRET_IMPLEMENTATION",
                         "mosaic_gpu_fwd": "pallas_kernels.gla.mosaic_gpu.fwd_triton_bwd:IMPLEMENTATION",
                         "mosaic_gpu_fwd_interpret":
                             "pallas_kernels.gla.mosaic_gpu.fwd_triton_bwd:INTERPRET_IMPLEMENTATION"})
# The decode kernels serve T = 1 calls only (`check_call`); longer calls fall through to "xla".
# GPU order: "xla" first, from benchmarks/bench_generate.py on one H200 (2026-12-02, JAX 0.11.2,
# benchmarks/RESULTS.md): one decode step of the GLA-340M layer (H 4, K 128, V 256) at B = 64 takes
# xla 15.3 µs (92 % of 4.8 TB/s for the state read + write), Pallas "triton" 17.0, "jax_triton" 30.1;
# at B = 1 3.1 / 3.4 / 7.2 µs; generate() of GLA-340M decodes 19.7k / 16.8k / 14.3k tokens/s at B = 64.
# XLA is already near the bandwidth floor at B = 64; the kernels stay as explicit impls ("triton" is
# faster at B = 1 on the 1.3B layer, K 256, V 512: 4.7 vs 7.4 µs).
FUSED_RECURRENT_GLA = Op("fused_recurrent_gla", check=_check_recurrent,
                         auto_order={"gpu": ("xla",)},
                         backends={"triton": "pallas_kernels.gla.triton.decode:IMPLEMENTATION",
                                   "triton_interpret":
                                       "pallas_kernels.gla.triton.decode:INTERPRET_IMPLEMENTATION",
                                   "jax_triton": "pallas_kernels.gla.jax_triton.decode:IMPLEMENTATION"})

def chunk_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
              segment_ids=None, chunk_size=64, impl="auto"):
  """Gated linear attention, chunkwise (fla's `chunk_gla` contract).

      S_t = diag(exp g_t) · S_{t-1} + k_tᵀ v_t ;   o_t = scale · q_t · S_t

  Args:
    q, k: [B, T, H, K] queries and keys (float32, bfloat16 or float16; one dtype with v).
    v: [B, T, H, V] values.
    g: [B, T, H, K] log forget gates (≤ 0, −inf allowed; not checked: see docs/ops.md), float32 or
      the inputs' dtype.
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
    >>> g = jax.nn.log_sigmoid(jax.random.normal(kg, (B, T, H, K))) / 16
    >>> o, state = chunk_gla(q, k, v, g, output_final_state=True)
  """
  return CHUNK_GLA(q, k, v, g, scale=scale, initial_state=initial_state,
                   output_final_state=output_final_state, segment_ids=segment_ids,
                   chunk_size=chunk_size, impl=impl)


def fused_recurrent_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                        segment_ids=None, impl="auto"):
  """Gated linear attention token by token: for short sequences and decoding (T = 1 has its own path).

  Same arguments, returns and gradients as `chunk_gla` (without `chunk_size`). `impl`: "auto", "xla"
  (one `lax.scan`; its gradient keeps a state per token, so train long sequences with `chunk_gla`), or
  for one token (T = 1, a decode step) the fused decode kernels: "triton" (Pallas Triton, GPU; what
  "auto" takes there), "jax_triton" (the same kernel in the Triton language, when jax_triton is
  installed), "triton_interpret" (the Pallas kernel in interpret mode, any platform). Their gradients
  are the "xla" step's. `decode_impl(name)` sets the impl of the calls that pass none (the mixers').
  """
  return FUSED_RECURRENT_GLA(q, k, v, g, scale=scale, initial_state=initial_state,
                             output_final_state=output_final_state, segment_ids=segment_ids,
                             impl=impl)



@contextlib.contextmanager
def prefer_impl(op: Op, name: str):
  """Within the block, `op`'s impl="auto" calls take `name` first where it serves the call, then the
  platform's usual order. Read at trace time (see `decode_impl`)."""
  impl = op.lookup(name) if isinstance(name, str) else None
  if impl is None:
    raise ValueError(f"{op.name}: impl must be one of {op.available_impls()}, got {name!r}")
  platform = op.platform()
  if platform not in impl.platforms:
    raise ValueError(f"{op.name}: impl={name!r} runs on {sorted(impl.platforms)}, not on {platform}")
  saved = op.auto_order
  op.auto_order = {p: (name, *(n for n in saved.get(p, op.default_auto) if n != name))
                   for p in {*saved, platform}}
  try:
    yield
  finally:
    op.auto_order = saved


def decode_impl(name: str):
  """Context manager: within it, `fused_recurrent_gla` calls with impl="auto" — the GLA mixers' decode
  steps — take `name` ("triton", "jax_triton", "triton_interpret", "xla") where it serves the call
  (T = 1 for the decode kernels), the usual order otherwise.

  Read at trace time: a function jitted before the block keeps the impl it was traced with (jitted
  `generate` too, whose cache keys on the model's structure), so trace under the block, or call
  `jax.clear_caches()` when switching.

  Example:
    >>> with decode_impl("jax_triton"):
    ...   tokens = generate(model, prompt, max_new_tokens=64, greedy=True)
  """
  return prefer_impl(FUSED_RECURRENT_GLA, name)


def available_impls() -> tuple[str, ...]:
  """Every implementation name `chunk_gla` accepts besides "auto"."""
  return CHUNK_GLA.available_impls()


def select_impl(info: CallInfo, impl: str = "auto", platform: str | None = None) -> Implementation:
  """The implementation of `chunk_gla` that serves a checked call; ValueError if the named one cannot."""
  return CHUNK_GLA.select(info, impl, platform)


# ------------------------------------------------------------------------------------------------
# built-in implementations
# ------------------------------------------------------------------------------------------------


def _parallel_check(info: CallInfo) -> str | None:
  if info.T > 1024:
    return f"the T×T parallel reference holds a [T, T, K] tensor per head; T={info.T} > 1024"
  return None


CHUNK_GLA.register(Implementation("xla", chunk_gla_xla))
CHUNK_GLA.register(Implementation("naive", reference(naive_recurrent_gla)))
CHUNK_GLA.register(Implementation("associative", reference(naive_associative_gla),
                                  check=associative_check))
CHUNK_GLA.register(Implementation("parallel", reference(naive_parallel_gla), check=_parallel_check))
FUSED_RECURRENT_GLA.register(Implementation("xla", fused_recurrent_gla_scan))
