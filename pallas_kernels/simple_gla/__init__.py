"""Simple gated linear attention: one scalar decay per token and head (fla's `chunk_simple_gla` contract
with `segment_ids` instead of `cu_seqlens`, docs/ops.md).

    o, final_state = chunk_simple_gla(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                                      output_final_state=False, segment_ids=None, chunk_size=64,
                                      impl="auto")

g [B, T, H] (Mamba-2 SSD, gated RetNet), or g_gamma [H] (RetNet, Lightning), or neither (no decay).
Implementations (`impl=`): "xla" (the chunked jnp form, every backend), "triton" / "tpu" (Pallas
kernels, when their backend modules are present), and the references "naive" (lax.scan),
"associative" (lax.associative_scan), "parallel" (masked T×T).
"""

from pallas_kernels.simple_gla.chunk import chunk_simple_gla_jnp
from pallas_kernels.simple_gla.fused_recurrent import fused_recurrent_simple_gla_xla
from pallas_kernels.simple_gla.naive import (naive_associative_simple_gla, naive_parallel_simple_gla,
                                             naive_recurrent_simple_gla)
from pallas_kernels.simple_gla.ops import (CHUNK_SIMPLE_GLA, FUSED_RECURRENT_SIMPLE_GLA, available_impls,
                                           chunk_simple_gla, fused_recurrent_simple_gla, select_impl)

__all__ = [
    "CHUNK_SIMPLE_GLA",
    "FUSED_RECURRENT_SIMPLE_GLA",
    "available_impls",
    "chunk_simple_gla",
    "chunk_simple_gla_jnp",
    "fused_recurrent_simple_gla",
    "fused_recurrent_simple_gla_xla",
    "naive_associative_simple_gla",
    "naive_parallel_simple_gla",
    "naive_recurrent_simple_gla",
    "select_impl",
]
