"""The public linear-attention ops on the family's one registry (`pallas_kernels.common.dispatch.Op`).

`CHUNK_LINEAR_ATTN` checks a call once (`check_linear_attn_inputs`) and has one implementation per
simple_gla implementation, under the same name: "xla", "naive", "associative", "parallel" registered
here, "triton" and "tpu" imported on first use from `linear_attn/triton.py` / `linear_attn/tpu.py`
(which import simple_gla's kernels only then). Each runs that simple_gla implementation without a gate
for S and the numerator, and the shared normaliser (`chunk.py`). `impl="auto"` uses simple_gla's order
(GPU: triton, xla; TPU and CPU: xla — TPU kernels stay explicit-only); an explicit `impl` that cannot
serve the call raises a ValueError with simple_gla's reason.
"""

from __future__ import annotations

from pallas_kernels.common.checks import CallInfo, check_linear_attn_inputs
from pallas_kernels.common.dispatch import Implementation, Op
from pallas_kernels.linear_attn.chunk import on_simple_gla
from pallas_kernels.linear_attn.fused_recurrent import fused_recurrent_linear_attn_scan
from pallas_kernels.simple_gla.ops import CHUNK_SIMPLE_GLA


def _check_chunk(q, k, v, *, scale=None, normalize=False, initial_state=None,
                 output_final_state=False, segment_ids=None, chunk_size=64) -> CallInfo:
  return check_linear_attn_inputs(q, k, v, scale=scale, normalize=normalize,
                                  initial_state=initial_state, segment_ids=segment_ids,
                                  chunk_size=chunk_size, output_final_state=output_final_state)


def _check_recurrent(q, k, v, *, scale=None, normalize=False, initial_state=None,
                     output_final_state=False, segment_ids=None) -> CallInfo:
  return check_linear_attn_inputs(q, k, v, scale=scale, normalize=normalize,
                                  initial_state=initial_state, segment_ids=segment_ids,
                                  output_final_state=output_final_state)


CHUNK_LINEAR_ATTN = Op("chunk_linear_attn", check=_check_chunk,
                       auto_order=CHUNK_SIMPLE_GLA.auto_order,
                       default_auto=CHUNK_SIMPLE_GLA.default_auto,
                       backends={"triton": "pallas_kernels.linear_attn.triton:IMPLEMENTATION",
                                 "tpu": "pallas_kernels.linear_attn.tpu:IMPLEMENTATION",
                                 "mosaic_gpu": "pallas_kernels.linear_attn.mosaic_gpu:IMPLEMENTATION",
                                 "mosaic_gpu_interpret":
                                     "pallas_kernels.linear_attn.mosaic_gpu:INTERPRET_IMPLEMENTATION",
                                 "mosaic_gpu_fwd": "pallas_kernels.linear_attn.mosaic_gpu:PAIR_IMPLEMENTATION",
                                 "mosaic_gpu_fwd_interpret":
                                     "pallas_kernels.linear_attn.mosaic_gpu:PAIR_INTERPRET_IMPLEMENTATION"})
FUSED_RECURRENT_LINEAR_ATTN = Op("fused_recurrent_linear_attn", check=_check_recurrent,
                                 auto_order={})


def chunk_linear_attn(q, k, v, *, scale=None, normalize=False, initial_state=None,
                      output_final_state=False, segment_ids=None, chunk_size=64, impl="auto"):
  """Linear attention (no decay), chunkwise; fla's `chunk_linear_attn` contract with segment_ids.

      S_t = S_{t-1} + k_tᵀ v_t ;   o_t = scale · q_t · S_t
      normalize=True:  o_t ← o_t / (scale · q_t · z_t + 1e-10),   z_t = z_{t-1} + k_t

  S and z restart at every document start; feature maps (positive ones for the normaliser) are the
  caller's.

  Args:
    q, k: [B, T, H, K] queries and keys (float32, bfloat16 or float16; one dtype with v).
    v: [B, T, H, V] values.
    scale: defaults to K ** -0.5.
    normalize: divide by the normaliser; the state becomes the pair (S, z).
    initial_state: S0 [B, H, K, V]; with normalize=True the pair (S0 [B, H, K, V], z0 [B, H, K]).
      Applies to each row's first document (float32 preferred).
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id (packed documents).
    chunk_size: tokens per chunk of the simple_gla chunk forms (a multiple of 16, ≤ 1024); the result
      does not depend on it.
    impl: "auto" or a name from `available_impls()`.

  Returns:
    o [B, T, H, V] in v's dtype, and the final state (None unless requested): S [B, H, K, V] float32,
    or with normalize=True (S, z [B, H, K]) both float32 (fla: z [B, 1, H, K], in the input dtype).
    Differentiable w.r.t. q, k, v and initial_state (S0 and z0).

  Example:
    >>> B, T, H, K, V = 2, 256, 4, 64, 128
    >>> kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    >>> q = 1 + jax.nn.elu(jax.random.normal(kq, (B, T, H, K), jnp.bfloat16))
    >>> k = 1 + jax.nn.elu(jax.random.normal(kk, (B, T, H, K), jnp.bfloat16))
    >>> v = jax.random.normal(kv, (B, T, H, V), jnp.bfloat16)
    >>> o, (S, z) = chunk_linear_attn(q, k, v, normalize=True, output_final_state=True)
  """
  return CHUNK_LINEAR_ATTN(q, k, v, scale=scale, normalize=normalize, initial_state=initial_state,
                           output_final_state=output_final_state, segment_ids=segment_ids,
                           chunk_size=chunk_size, impl=impl)


def fused_recurrent_linear_attn(q, k, v, *, scale=None, normalize=False, initial_state=None,
                                output_final_state=False, segment_ids=None, impl="auto"):
  """Linear attention token by token: for short sequences and decoding (T = 1 has its own path).

  Same arguments, returns and gradients as `chunk_linear_attn` (without `chunk_size`). `impl`: "auto"
  or "xla" (one `lax.scan` carrying (S, z); its gradient keeps a state per token, so train long
  sequences with `chunk_linear_attn`).

  Example:
    >>> o, state = fused_recurrent_linear_attn(q[:, :1], k[:, :1], v[:, :1], normalize=True,
    ...                                        initial_state=state, output_final_state=True)
  """
  return FUSED_RECURRENT_LINEAR_ATTN(q, k, v, scale=scale, normalize=normalize,
                                     initial_state=initial_state,
                                     output_final_state=output_final_state,
                                     segment_ids=segment_ids, impl=impl)


def available_impls() -> tuple[str, ...]:
  """Every implementation name `chunk_linear_attn` accepts besides "auto"."""
  return CHUNK_LINEAR_ATTN.available_impls()


def select_impl(info: CallInfo, impl: str = "auto", platform: str | None = None) -> Implementation:
  """The implementation of `chunk_linear_attn` that serves a checked call."""
  return CHUNK_LINEAR_ATTN.select(info, impl, platform)


# the jnp forms: simple_gla's, under the same names
for _name in ("xla", "naive", "associative", "parallel"):
  _impl = on_simple_gla(CHUNK_SIMPLE_GLA.lookup(_name))
  if _impl is not None:
    CHUNK_LINEAR_ATTN.register(_impl)
FUSED_RECURRENT_LINEAR_ATTN.register(Implementation("xla", fused_recurrent_linear_attn_scan))
