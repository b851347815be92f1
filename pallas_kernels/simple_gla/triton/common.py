"""Static options of the simple-GLA Pallas Triton kernels: tile sizes (`BlockSizes`, with the tuned
default table) and the facts of one call (`KernelOptions`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels import compat
from pallas_kernels.common.triton.tiles import C, F32, SCAN_MIN_CHUNKS, fit_tile

GATES = ("scalar", "constant", "none")  # the simple-GLA gate kinds (common/triton/gates.py)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes and Triton launch parameters of the kernels (all static)."""

  fwd_bk: int  # chunk_fwd / chunk_output: K tile (static loop over K / fwd_bk)
  fwd_bv: int  # chunk_fwd: V tile = grid axis (h [K, fwd_bv] lives in registers)
  fwd_warps: int
  state_bk: int  # chunk_state_pass / chunk_state_grad_pass: [state_bk, state_bv] tile = grid axis
  state_bv: int
  state_warps: int
  grads_bk: int  # chunk_grads: K loop tile (dq, dk, QKᵀ)
  grads_bv: int  # chunk_grads: V loop tile (dv, do vᵀ)
  grads_warps: int
  out_bv: int = 64  # chunk_output (sequence-parallel forward): V tile = grid axis
  out_warps: int = 4
  fwd_parallel: bool = False  # forward as chunk_state_pass + chunk_output instead of chunk_fwd
  state_scan: bool = False  # state passes as chunk summaries + elementwise scan (common/triton/scan.py)
  scan_sum_bk: int = 64  # chunk_summaries: K tile = grid axis, V loop tile
  scan_sum_bv: int = 64
  scan_sum_warps: int = 4
  scan_bk: int = 32  # state_scan: [BK, BV] tile of the carried state = grid axis
  scan_bv: int = 64
  scan_warps: int = 4
  scan_prefetch: int = 2
  num_stages: int = 2

  @classmethod
  def get_default(cls, B: int, H: int, K: int, V: int, T: int = 2048) -> "BlockSizes":
    """K, V (padded, `padded_dim`) and T; measured on an H200 (jax 0.11.2, bf16, fwd+bwd).

    The fused forward keeps h [K, BV] in registers and walks the chunks of one (b·h, V tile) in
    order: the widest V tile that still gives ≥ ~1 program per SM (GLA's rule). Its chunk step is
    lighter than GLA's, so the sequence-parallel forward (state pass + chunk-parallel output) wins
    earlier: from chunks × waves ≥ 64 (at 8,2048,4,256,512: 0.44 vs 0.61 ms forward; at
    8,2048,16,128,128 fused 0.26 vs 0.28 ms). chunk_grads tiles K and V by 64 with 4 warps up to
    K = V = 128 (0.75 vs 0.92 ms fwd+bwd with 128-wide tiles at 8,2048,16,128,128) and by 128 with
    8 warps above (1.05 vs 1.51 ms at 8,2048,4,256,512). Two-phase state scans from
    `SCAN_MIN_CHUNKS` chunks on (at 32 chunks the sequential passes win: 0.75 vs 0.91 ms). Every
    tile divides its dim (`fit_tile`: 64, not 128, at K or V = 192, 320, 448)."""
    bv = fit_tile(V, min(128, max(16, 16384 // K)))
    while bv > 32 and B * H * (V // bv) < 120:
      bv //= 2
    waves = -(-(B * H * (V // bv)) // 132)
    n_chunks = -(-T // C)
    sbk, sbv = min(K, 64), min(V, 64)
    while sbv > 16 and B * H * (K // sbk) * (V // sbv) < 264:
      sbv //= 2
    wide = max(K, V) > 128
    gt = 128 if wide else 64
    return cls(fwd_bk=min(K, 64), fwd_bv=bv, fwd_warps=4 if K * bv <= 8192 else 8,
               state_bk=sbk, state_bv=sbv, state_warps=4,
               grads_bk=fit_tile(K, gt), grads_bv=fit_tile(V, gt), grads_warps=8 if wide else 4,
               out_bv=fit_tile(V, 128), fwd_parallel=n_chunks * waves >= 64,
               state_scan=n_chunks >= SCAN_MIN_CHUNKS,
               scan_sum_bk=min(K, 64), scan_sum_bv=min(V, 64), scan_bk=min(K, 32),
               scan_bv=min(V, 64))


@dataclasses.dataclass(frozen=True)
class KernelOptions:
  """Static facts of one call; hashable (the custom_vjp's non-differentiable argument). Also the
  options of the shared state passes (common/triton/state.py)."""

  scale: float
  B: int
  H: int
  T: int  # padded to a multiple of C
  K: int  # padded (`padded_dim`)
  V: int
  dtype: str  # q/k/v dtype name
  gate: str  # "scalar" | "constant" | "none"
  t_valid: int  # the sequence's real length (the constant gate does not decay padded rows)
  has_h0: bool
  has_seg: bool
  blocks: BlockSizes
  interpret: bool = False
  state_dtype: str = "float32"  # dtype of the per-chunk states the backward materialises
  # the sequence-parallel forward's per-chunk states kept as residuals for the backward (no recompute)
  keep_states: bool = True

  prefix = "simple_gla"  # kernel names

  @property
  def N(self) -> int:
    return self.T // C

  @property
  def dot_dtype(self):
    """Matmul operand dtype: bf16 inputs use bf16 tensor-core products; fp16 and f32 use f32 operands."""
    return jnp.dtype(jnp.bfloat16) if self.dtype == "bfloat16" else jnp.dtype(F32)

  def compiler_params(self, num_warps: int):
    return compat.triton_compiler_params(num_warps=num_warps, num_stages=self.blocks.num_stages)
