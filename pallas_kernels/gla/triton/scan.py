"""Stage 2 and stage 5 of the GLA Triton kernels as two-phase scans (chunk summaries in parallel, then an
elementwise chain over the chunks). The kernels are shared by every op and gate kind: see
pallas_kernels/common/triton/scan.py; GLA calls them with the per-key gate ("vector")."""

from pallas_kernels.common.triton.scan import (chunk_state_grad_pass, chunk_state_pass,
                                               chunk_summaries, state_scan)

__all__ = ["chunk_state_grad_pass", "chunk_state_pass", "chunk_summaries", "state_scan"]
