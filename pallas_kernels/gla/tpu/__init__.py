"""GLA on TPUs through Pallas' Mosaic TPU backend (see `ops.py`)."""

from pallas_kernels.gla.tpu.ops import IMPLEMENTATION, chunk_gla_tpu

__all__ = ["IMPLEMENTATION", "chunk_gla_tpu"]
