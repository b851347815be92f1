"""`chunk_linear_attn(..., impl="mosaic_gpu" | "mosaic_gpu_interpret")`: simple_gla's Mosaic GPU kernels (no
gate; forward and the Mosaic backward, simple_gla/mosaic_gpu/ops.py) for S and the numerator, the shared jnp normaliser
(`linear_attn/chunk.py`). Imported by the Op on first use only; explicit-only, as for simple_gla."""

from pallas_kernels.linear_attn.chunk import on_simple_gla
from pallas_kernels.simple_gla.ops import CHUNK_SIMPLE_GLA

IMPLEMENTATION = on_simple_gla(CHUNK_SIMPLE_GLA.lookup("mosaic_gpu"))
INTERPRET_IMPLEMENTATION = on_simple_gla(CHUNK_SIMPLE_GLA.lookup("mosaic_gpu_interpret"))
