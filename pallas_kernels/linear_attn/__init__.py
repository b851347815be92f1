"""Linear attention ops (fla's `chunk_linear_attn` / `fused_recurrent_linear_attn`, docs/ops.md).

    o, final_state = chunk_linear_attn(q, k, v, scale=None, normalize=False, initial_state=None,
                                       output_final_state=False, segment_ids=None, chunk_size=64,
                                       impl="auto")

No decay: S_t = S_{t-1} + k_tᵀ v_t, o_t = scale · q_t · S_t; normalize=True divides by
scale · q_t · z_t + 1e-10 with z_t the running key sum of the document, and the state is (S, z).
Implementations (`impl=`) are simple_gla's without a gate plus the shared normaliser: "xla", "naive",
"associative", "parallel", and the kernels "triton" (NVIDIA GPUs) and "tpu" (explicit-only).
"""

from pallas_kernels.linear_attn.chunk import chunk_linear_attn_on, on_simple_gla
from pallas_kernels.linear_attn.fused_recurrent import fused_recurrent_linear_attn_xla
from pallas_kernels.linear_attn.naive import naive_recurrent_linear_attn
from pallas_kernels.linear_attn.ops import (available_impls, chunk_linear_attn,
                                            fused_recurrent_linear_attn, select_impl)

__all__ = [
    "available_impls",
    "chunk_linear_attn",
    "chunk_linear_attn_on",
    "fused_recurrent_linear_attn",
    "fused_recurrent_linear_attn_xla",
    "naive_recurrent_linear_attn",
    "on_simple_gla",
    "select_impl",
]
