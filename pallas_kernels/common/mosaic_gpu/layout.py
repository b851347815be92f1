"""Sizes and device limits shared by the Mosaic GPU ops' wrappers (pallas_kernels/*/mosaic_gpu/ops.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

G_FLOOR = -60.0  # log decays are raised to this (e^-60 ≈ 1e-26: zero next to what it is added to)
SMEM_LIMIT = 227 * 1024  # an H100/H200 block's shared memory
BARRIER_BYTES = 8  # one mbarrier in SMEM: the kernels' smem_bytes count them (a kernel at the limit
#                    without them was 24 bytes over it on the H200, 2026-12-03)
COMPILED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))  # wgmma operands


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def is_sm90() -> bool:
  """Whether the default device is a Hopper (sm90) GPU, the one the compiled kernels target."""
  try:
    d = jax.devices()[0]
  except RuntimeError:
    return False
  return d.platform == "gpu" and str(getattr(d, "compute_capability", "")) == "9.0"
