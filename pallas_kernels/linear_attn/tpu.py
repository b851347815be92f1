"""`chunk_linear_attn(..., impl="tpu")`: simple_gla's Pallas Mosaic TPU kernels (no gate) for S and the
numerator, the shared jnp normaliser (`linear_attn/chunk.py`). Explicit-only (never picked by "auto"
until the kernels have run on a TPU) and imported on first use; `IMPLEMENTATION` is None where
simple_gla has no TPU implementation."""

from pallas_kernels.linear_attn.chunk import on_simple_gla
from pallas_kernels.simple_gla.ops import CHUNK_SIMPLE_GLA

IMPLEMENTATION = on_simple_gla(CHUNK_SIMPLE_GLA.lookup("tpu"))
