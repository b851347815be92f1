"""`chunk_linear_attn(..., impl="mosaic_gpu" | "mosaic_gpu_fwd" | …_interpret)`: simple_gla's Mosaic GPU
kernels (no gate; simple_gla/mosaic_gpu/ops.py: forward and the Mosaic backward; fwd_triton_bwd.py: the
Mosaic forward with the Triton backward) for S and the numerator, the shared jnp normaliser
(`linear_attn/chunk.py`). Imported by the Op on first use only; in auto's order at the shapes of their
measured tables for the gate kind "none" (empty so far), as for simple_gla."""

from pallas_kernels.linear_attn.chunk import on_simple_gla
from pallas_kernels.simple_gla.ops import CHUNK_SIMPLE_GLA

IMPLEMENTATION = on_simple_gla(CHUNK_SIMPLE_GLA.lookup("mosaic_gpu"))
INTERPRET_IMPLEMENTATION = on_simple_gla(CHUNK_SIMPLE_GLA.lookup("mosaic_gpu_interpret"))
PAIR_IMPLEMENTATION = on_simple_gla(CHUNK_SIMPLE_GLA.lookup("mosaic_gpu_fwd"))
PAIR_INTERPRET_IMPLEMENTATION = on_simple_gla(CHUNK_SIMPLE_GLA.lookup("mosaic_gpu_fwd_interpret"))
