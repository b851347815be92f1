"""GLA on NVIDIA GPUs through Pallas' Triton backend (see `ops.py`)."""

from pallas_kernels.gla.triton.ops import IMPLEMENTATION, check_call, chunk_gla_triton, prepare

__all__ = ["IMPLEMENTATION", "check_call", "chunk_gla_triton", "prepare"]
