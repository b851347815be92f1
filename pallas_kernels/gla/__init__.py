"""Gated Linear Attention ops (fla's `chunk_gla` / `fused_recurrent_gla` contract, docs/ops.md).

    o, final_state = chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
                               segment_ids=None, chunk_size=64, impl="auto")

Implementations (`impl=`): "xla" (the two-level chunked jnp form, every backend), "triton" (Pallas
Triton kernels, NVIDIA GPUs), "tpu" (Pallas Mosaic TPU kernels), and the references "naive"
(lax.scan), "associative" (lax.associative_scan), "parallel" (masked T×T). "auto" takes the first of
the platform's preferred list that supports the call.
"""

from pallas_kernels.gla.chunk import chunk_gla_jnp
from pallas_kernels.gla.fused_recurrent import fused_recurrent_gla_xla
from pallas_kernels.gla.naive import naive_associative_gla, naive_parallel_gla, naive_recurrent_gla
from pallas_kernels.gla.ops import available_impls, chunk_gla, fused_recurrent_gla, select_impl

__all__ = [
    "available_impls",
    "chunk_gla",
    "chunk_gla_jnp",
    "fused_recurrent_gla",
    "fused_recurrent_gla_xla",
    "naive_associative_gla",
    "naive_parallel_gla",
    "naive_recurrent_gla",
    "select_impl",
]
