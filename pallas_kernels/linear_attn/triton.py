"""`chunk_linear_attn(..., impl="triton")`: simple_gla's Pallas Triton kernels (no gate) for S and the
numerator, the shared jnp normaliser (`linear_attn/chunk.py`). Imported by the Op on first use only, so
importing `pallas_kernels.linear_attn` imports no Triton code; `IMPLEMENTATION` is None where simple_gla
has no Triton implementation."""

from pallas_kernels.linear_attn.chunk import on_simple_gla
from pallas_kernels.simple_gla.ops import CHUNK_SIMPLE_GLA

IMPLEMENTATION = on_simple_gla(CHUNK_SIMPLE_GLA.lookup("triton"))
