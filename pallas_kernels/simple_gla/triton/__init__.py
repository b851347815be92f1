"""Simple GLA on NVIDIA GPUs through Pallas' Triton backend (see `ops.py`)."""

from pallas_kernels.simple_gla.triton.ops import (IMPLEMENTATION, check_call,
                                                  chunk_simple_gla_triton, prepare)

__all__ = ["IMPLEMENTATION", "check_call", "chunk_simple_gla_triton", "prepare"]
