"""GLA on Hopper GPUs through Pallas' Mosaic GPU backend (forward kernel; see `ops.py`)."""

from pallas_kernels.gla.mosaic_gpu.ops import (IMPLEMENTATION, INTERPRET_IMPLEMENTATION, check_call,
                                               chunk_gla_mosaic)

__all__ = ["IMPLEMENTATION", "INTERPRET_IMPLEMENTATION", "check_call", "chunk_gla_mosaic"]
