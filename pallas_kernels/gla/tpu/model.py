"""A paper performance model of the GLA TPU kernels (`tpu.py`): VMEM per block, HBM bytes, MXU and VPU
work per chunk of one head, and the time bounds they imply on TPU v5e / v5p / v6e.

Nothing here was measured on a TPU. The counts follow the kernel code line by line (stages.py); the
chip figures are JAX's own table (`pltpu.get_tpu_info_for_chip`, per TensorCore) except the VPU / EUP
issue rates and clocks, which are assumptions stated in `CHIPS`. `python -m pallas_kernels.gla.tpu.model`
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


# ------------------------------------------------------------------------------------------------
# chips
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TensorCore's figures. hbm_bw, bf16_flops, vmem: JAX's table (pltpu.get_tpu_info_for_chip);
  clock: derived from the bf16 peak and the MXU count of that table where it is consistent, else an
  assumption (see `clock_note`). cores: TensorCores per chip that one jit spreads "parallel" grid axes
  over (megacore)."""

  name: str
  hbm_bw: float  # bytes / s
  bf16_flops: float  # MXU peak, flop / s
  vmem: int  # bytes
  clock: float  # Hz
  cores: int
  clock_note: str


CHIPS = {
    "v5e": Chip("v5e", 820e9, 197e12, 128 * MiB, 197e12 / (4 * 128 * 128 * 2), 1,
                "197 TF/s over 4 MXUs of 128×128"),
    "v5p": Chip("v5p", 1230e9, 229.5e12, 64 * MiB, 229.5e12 / (4 * 128 * 128 * 2), 2,
                "229.5 TF/s over 4 MXUs of 128×128; 2 TensorCores (megacore) per chip"),
    "v6e": Chip("v6e", 1640e9, 920e12, 128 * MiB, 1.75e9, 1,
                "assumed: JAX's table (2 MXUs of 256×256) would imply 3.5 GHz; we take 1.75 GHz "
                "(4 MXUs of 256×256), so v6e times are the least certain"),
}


# ------------------------------------------------------------------------------------------------
# per chunk of one head: HBM bytes and MXU flops, kernel by kernel (as tpu.py / stages.py do it)
# ------------------------------------------------------------------------------------------------


def chunk_costs(C: int, K: int, V: int, S: int = 8, itemsize: int = 2, g_itemsize: int = 4,
                N: int = 32) -> dict[str, dict[str, float]]:
  """HBM bytes, MXU flops and exponentials of one grid step (one chunk of one head) of each kernel.

  K, V are the padded widths. N (chunks per sequence) spreads the per-sequence state reads/writes
  (h0, final state, dh0, dht: K·V float32 each) over the chunks.
  """
  tok_k, tok_v, g = C * K * itemsize, C * V * itemsize, C * K * g_itemsize
  state32, state_c = K * V * 4, K * V * itemsize
  ckv, c2k, c2v = C * K * V, C * C * K, C * C * V
  off = (C - S) * C * K  # Σ_i S·K·(rows before sub-chunk i): one off-diagonal product family
  diag_exp = S * C * K  # exponentials of the exact diagonal blocks
  fwd = {
      "bytes": 2 * tok_k + g + tok_v + tok_v + 2 * state32 / N,  # q k g v → o; h0, ht
      "flops": 2 * (ckv + c2v + ckv + off),  # q_dec·h, A·v, state update, off-diagonal A
      "exp": diag_exp + 3 * C * K + (C - S) * K // 2 + C * K,  # diag; e^G e^R e^Gl; F; e^Γ-ish
  }
  state = {
      "bytes": tok_k + g + tok_v + state_c + state32 / N,  # k g v → h per chunk; h0
      "flops": 2 * ckv,
      "exp": C * K,
  }
  bwd = {
      "bytes": (2 * tok_k + g + 2 * tok_v + state_c  # q k g v do h
                + 2 * tok_k + tok_v + C * K * 4 + 2 * state32 / N),  # dq dk dv dg; dht, dh0
      "flops": 2 * (c2v + 3 * off + c2v + ckv + ckv + ckv + ckv),  # dA; off-diag ×3; dv; dq, dk inter; dh
      "exp": diag_exp + 3 * C * K + (C - S) * K // 2 + C * K,
  }
  return {"gla_chunk_fwd": fwd, "gla_chunk_state_pass": state, "gla_chunk_bwd": bwd}


# ------------------------------------------------------------------------------------------------
# the compiler's static schedule (recorded), and the report
# ------------------------------------------------------------------------------------------------

# Bundles (VLIW instruction words ≈ cycles without stalls) of one grid step of each kernel, from
# `python -m pallas_kernels.gla.tpu.aot` (deviceless AOT compile: jax/jaxlib 0.10.2, libtpu 0.0.42.1,
# 2026-11-22; bf16 inputs, float32 gates, no segment_ids, S = 8). Key: (chip, K, V, C, heads per step).
# A grid step covers `hb` heads of one chunk. Nothing here ran on a TPU.
STATIC_BUNDLES: dict[tuple[str, int, int, int, int], dict[str, int]] = {
    ('v5e', 128, 256, 64, 4): {"gla_chunk_fwd": 1979, "gla_chunk_state_pass": 757, "gla_chunk_bwd": 4479},
    ('v5e', 128, 256, 128, 4): {"gla_chunk_fwd": 3451, "gla_chunk_state_pass": 951, "gla_chunk_bwd": 9645},
    ('v5e', 256, 512, 64, 4): {"gla_chunk_fwd": 4675, "gla_chunk_state_pass": 2096, "gla_chunk_bwd": 9753},
    ('v5e', 256, 512, 128, 2): {"gla_chunk_fwd": 4091, "gla_chunk_state_pass": 1375, "gla_chunk_bwd": 10254},
    ('v5p', 128, 256, 64, 4): {"gla_chunk_fwd": 2072, "gla_chunk_state_pass": 727, "gla_chunk_bwd": 4560},
    ('v5p', 128, 256, 128, 4): {"gla_chunk_fwd": 3579, "gla_chunk_state_pass": 915, "gla_chunk_bwd": 9838},
    ('v5p', 256, 512, 64, 4): {"gla_chunk_fwd": 4775, "gla_chunk_state_pass": 1888, "gla_chunk_bwd": 9686},
    ('v5p', 256, 512, 128, 2): {"gla_chunk_fwd": 4192, "gla_chunk_state_pass": 1297, "gla_chunk_bwd": 10477},
    ('v6e', 128, 256, 64, 4): {"gla_chunk_fwd": 1735, "gla_chunk_state_pass": 537, "gla_chunk_bwd": 4001},
    ('v6e', 128, 256, 128, 4): {"gla_chunk_fwd": 3463, "gla_chunk_state_pass": 700, "gla_chunk_bwd": 7564},
    ('v6e', 256, 512, 64, 4): {"gla_chunk_fwd": 3664, "gla_chunk_state_pass": 1311, "gla_chunk_bwd": 7490},
    ('v6e', 256, 512, 128, 2): {"gla_chunk_fwd": 3577, "gla_chunk_state_pass": 998, "gla_chunk_bwd": 7456},
    ('v5e', 128, 256, 64, 1): {"gla_chunk_fwd": 628, "gla_chunk_state_pass": 254, "gla_chunk_bwd": 1257},
    ('v5e', 256, 512, 64, 1): {"gla_chunk_fwd": 1378, "gla_chunk_state_pass": 542, "gla_chunk_bwd": 2319},
    ('v5e', 128, 256, 128, 1): {"gla_chunk_fwd": 1051, "gla_chunk_state_pass": 310, "gla_chunk_bwd": 2582},
}

SHAPES = {  # layer shapes of docs/models.md (340M, 1.3B) and the benchmark shapes: B, T, H, K, V
    "340M": (8, 2048, 4, 128, 256),
    "1.3B": (8, 2048, 4, 256, 512),
}


def layer_estimate(chip: str, shape: str, C: int, hb: int) -> dict[str, float] | None:
  """Forward + backward time of one GLA layer at a benchmark shape (benchmarks/RESULTS.md), in ms: the HBM floor, the MXU
  floor and the static-schedule estimate (bundles / clock, all chunk-heads, parallel over the chip's
  TensorCores), from `STATIC_BUNDLES` (None if that configuration was not compiled)."""
  B, T, H, K, V = SHAPES[shape]
  bundles = STATIC_BUNDLES.get((chip, K, V, C, hb))
  if bundles is None:
    return None
  c = CHIPS[chip]
  N = T // C
  steps = B * (H // hb) * N / c.cores  # grid steps per TensorCore
  costs = chunk_costs(C, K, V, N=N)
  chunk_heads = B * H * N
  hbm = sum(x["bytes"] for x in costs.values()) * chunk_heads / (c.hbm_bw * c.cores)
  mxu = sum(x["flops"] for x in costs.values()) * chunk_heads / (c.bf16_flops * c.cores)
  sched = sum(bundles.values()) * steps / c.clock
  return {"hbm_ms": hbm * 1e3, "mxu_ms": mxu * 1e3, "schedule_ms": sched * 1e3,
          "bound_ms": max(hbm, mxu, sched) * 1e3,
          "cycles_per_chunk_head": sum(bundles.values()) / hb}


def report() -> str:
  """The tables of benchmarks/TPU.md, as markdown."""
  out = ["| chip | layer | C | heads/step | fwd | state pass | bwd | cycles per chunk·head | "
         "HBM floor ms | MXU floor ms | schedule ms | estimate ms |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for (chip, K, V, C, hb), b in sorted(STATIC_BUNDLES.items()):
    shape = next((n for n, s in SHAPES.items() if s[3:] == (K, V)), None)
    est = layer_estimate(chip, shape, C, hb) if shape else None
    if est is None:
      continue
    out.append(f"| {chip} | {shape} | {C} | {hb} | {b['gla_chunk_fwd']} | {b['gla_chunk_state_pass']} | "
               f"{b['gla_chunk_bwd']} | {est['cycles_per_chunk_head']:.0f} | {est['hbm_ms']:.2f} | "
               f"{est['mxu_ms']:.2f} | {est['schedule_ms']:.2f} | **{est['bound_ms']:.2f}** |")
  return "\n".join(out)


def vmem_report() -> str:
  out = ["| layer | C | heads/step | kernel | blocks (×2 buffers) MiB | scratch MiB | temporaries MiB | "
         "total MiB | vmem_limit MiB |", "|---|---|---|---|---|---|---|---|---|"]
  for shape, (B, T, H, K, V) in SHAPES.items():
    for C in (64, 128):
      hb = heads_per_block(H, C, K, V, 2)
      for stage in ("fwd", "state_pass", "bwd"):
        m = vmem_bytes(stage, C, K, V, 2)
        out.append(f"| {shape} | {C} | {hb} | {stage} | {hb * m['blocks'] / MiB:.1f} | "
                   f"{hb * m['scratch'] / MiB:.2f} | {hb * m['temporaries'] / MiB:.1f} | "
                   f"{hb * m['total'] / MiB:.1f} | {vmem_limit_bytes(stage, C, K, V, 2, hb) / MiB:.0f} |")
  return "\n".join(out)


def bytes_flops_report() -> str:
  out = ["| layer | C | kernel | HBM KiB | MXU MFLOP | exp (thousands) | flop/byte |",
         "|---|---|---|---|---|---|---|"]
  for shape, (B, T, H, K, V) in SHAPES.items():
    for C in (64, 128):
      for name, c in chunk_costs(C, K, V, N=T // C).items():
        out.append(f"| {shape} | {C} | {name} | {c['bytes'] / 1024:.0f} | {c['flops'] / 1e6:.1f} | "
                   f"{c['exp'] / 1e3:.0f} | {c['flops'] / c['bytes']:.0f} |")
  return "\n".join(out)


if __name__ == "__main__":
  print(vmem_report(), "\n")
  print(bytes_flops_report(), "\n")
  print(report())
