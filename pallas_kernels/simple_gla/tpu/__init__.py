"""Simple GLA on TPUs through Pallas' Mosaic TPU backend (see `ops.py`)."""

from pallas_kernels.simple_gla.tpu.ops import IMPLEMENTATION, chunk_simple_gla_tpu

__all__ = ["IMPLEMENTATION", "chunk_simple_gla_tpu"]
