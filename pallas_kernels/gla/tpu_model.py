"""A paper performance model of the GLA TPU kernels (`tpu.py`): VMEM per block, HBM bytes, MXU and VPU
work per chunk of one head, and the time bounds they imply on TPU v5e / v5p / v6e.

Nothing here was measured on a TPU. The counts follow the kernel code line by line (tpu_stages.py); the
chip figures are JAX's own table (`pltpu.get_tpu_info_for_chip`, per TensorCore) except the VPU / EUP
issue rates and clocks, which are assumptions stated in `CHIPS`. `python -m pallas_kernels.gla.tpu_model`
prints the tables of benchmarks/TPU.md.
"""

from __future__ import annotations

import dataclasses

MiB = 1 << 20
LANES, SUBLANES = 128, 8
VREG = LANES * SUBLANES  # 32-bit elements per vector register


def _pad(n: int, m: int) -> int:
  return -(-n // m) * m


def _tile_bytes(rows: int, cols: int, itemsize: int) -> int:
  """VMEM bytes of a [rows, cols] buffer: (8·(4/itemsize), 128) tiles."""
  sub = SUBLANES * 4 // itemsize
  return _pad(rows, sub) * _pad(cols, LANES) * itemsize


# ------------------------------------------------------------------------------------------------
# VMEM per grid step
# ------------------------------------------------------------------------------------------------


def vmem_bytes(stage: str, C: int, Kp: int, Vp: int, itemsize: int, g_itemsize: int = 4,
               sub_chunk: int = 16) -> dict[str, int]:
  """VMEM of one grid step of a kernel: double-buffered blocks, the state scratch, and a (generous)
  estimate of live temporaries. stage ∈ {"fwd", "state_pass", "bwd"}; Kp, Vp padded to 128."""
  t = _tile_bytes
  qk = t(C, Kp, itemsize)
  g = t(C, Kp, g_itemsize)
  vv = t(C, Vp, itemsize)
  state32 = t(Vp, Kp, 4)
  docs = t(C, 1, 4) + t(1, C, 4)
  ck32, cc32, cv32 = t(C, Kp, 4), t(C, C, 4), t(C, Vp, 4)
  gate_tmp = 4 * ck32 + t(3 * C, C, 2) + 3 * t(C, Kp, 2) + t(3 * C, Kp, 4)  # g, G, R, Gl, mask, pieces
  if stage == "fwd":
    blocks = 2 * (2 * qk + g + vv + docs) + 2 * (vv) + 2 * 2 * state32  # in; o; h0 + ht
    temps = gate_tmp + 8 * ck32 + 4 * cc32 + 2 * cv32 + 2 * state32
  elif stage == "state_pass":
    blocks = 2 * (qk + g + vv + docs) + 2 * state32 + 2 * t(Vp, Kp, itemsize)  # in; h0; h out
    temps = gate_tmp + 2 * ck32 + 2 * state32
  elif stage == "bwd":
    blocks = (2 * (2 * qk + g + 2 * vv + t(Vp, Kp, itemsize) + state32 + docs)  # q k g v do h dht
              + 2 * (2 * qk + vv + t(C, Kp, 4) + state32))  # dq dk dv dg dh0
    temps = gate_tmp + 16 * ck32 + 8 * cc32 + 3 * cv32 + 3 * state32
  else:
    raise ValueError(f"stage must be 'fwd', 'state_pass' or 'bwd', got {stage!r}")
  return {"blocks": blocks, "scratch": state32, "temporaries": temps,
          "total": blocks + state32 + temps}


VMEM_BUDGET = 40 * MiB  # what one grid step may plan for: leaves room below the 64 MiB of a v5p core


def vmem_limit_bytes(stage: str, C: int, Kp: int, Vp: int, itemsize: int, hb: int = 1) -> int:
  """The scoped-VMEM limit passed to Mosaic: the estimate plus a quarter, at least 32 MiB (the compiler
  needs room for its own spills), at most 48 MiB (below the 64 MiB a v5p TensorCore has)."""
  total = hb * vmem_bytes(stage, C, Kp, Vp, itemsize)["total"]
  return int(min(48 * MiB, max(32 * MiB, _pad(int(1.25 * total), MiB))))


def heads_per_block(H: int, C: int, Kp: int, Vp: int, itemsize: int) -> int:
  """How many heads one grid step takes: the most of (4, 2, 1) dividing H whose backward step fits
  `VMEM_BUDGET`. One head's chunk is a chain of dependent MXU ops (cumsum → exp → product → store) that
  leaves most VLIW slots empty; independent heads fill them (see benchmarks/TPU.md)."""
  for hb in (4, 2, 1):
    if H % hb == 0 and hb * vmem_bytes("bwd", C, Kp, Vp, itemsize)["total"] <= VMEM_BUDGET:
      return hb
  return 1
