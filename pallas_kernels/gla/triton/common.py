"""In-kernel building blocks shared by the GLA Pallas Triton kernels (`fwd.py`, `bwd.py`).

Everything here runs *inside* a kernel body on tiles loaded from refs: the chunk-local cumsum of the gates
(stage 1 of `chunk.py`), the document masks of a chunk, the blocks of the intra-chunk attention (stage 3)
and the few matmul flavours the kernels use. Triton tensors cannot be sliced or concatenated in registers,
so a sub-chunk is a separate load from the refs, never a slice of a loaded chunk.

Every chunk (C = 64 rows) takes one of two exact decompositions of A_ts = Σ_d q_td k_sd e^{G_td − G_sd}:
* dense: the whole chunk is one block, A = (q ⊙ e^{G−G_0})(k ⊙ e^{G_0−G})ᵀ, one tensor-core matmul.
  The k factor is at most e^{span}, span = max_d Σ_{r≥1} −g_rd over the chunk, so the kernels use it
  only where span < `threshold` (40: factors ≤ 2.4e17) — all chunks for the usual gates.
* two-level (GLA paper §4.3), for the other chunks: 16-row sub-chunks; an off-diagonal block uses the
  first row n_i of the query sub-chunk as reference, A_ij = (q_i ⊙ e^{G_i−G_{n_i}})(k_j ⊙ e^{G_{n_i}−G_j})ᵀ
  with both factors ≤ 1; a diagonal block uses the one-matmul form when its own 16-row span is small
  and otherwise the exact float32 log-space form (a [16, 16, W] tensor, 16 columns at a time).
The two-level code walks sub-chunks and K / V tiles in dynamic loops, so it adds little code; it only
runs for the chunks that need it. Exponents are differences of float32 chunk cumsums (|G| ≤ 1280 at
g ≈ −20: ~1e-4 absolute), well inside the bf16-level target; dg keeps `chunk.py`'s cancellation-free
structure (see `bwd.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import compat
# op-agnostic tile helpers, shared with the other ops' kernels (re-exported for fwd.py / bwd.py)
from pallas_kernels.common.triton.tiles import (  # noqa: F401
    C, F32, SCAN_MIN_CHUNKS, ChunkDocs, fit_tile, block_mask, carry_mask, causal, chunk_docs, iota2, last_row,
    load, masked, mm, mm_sum, padded_dim, pl, row_in, row_out, rows)

S_FINE = 16  # sub-chunk of the two-level path (and the minimum Triton dot size)
PATHS = ("auto", "dense", "two_level", "exact")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes and Triton launch parameters of the kernels (all static)."""

  fwd_bk: int  # chunk_fwd: K tile of the carried state (static loop over K / fwd_bk)
  fwd_bv: int  # chunk_fwd: V tile = grid axis
  fwd_warps: int
  state_bk: int  # chunk_state_pass / chunk_state_grad_pass: both K and V are grid axes
  state_bv: int
  state_warps: int
  grads_bk: int  # chunk_grads: K and V loop tiles of A, dA and dv
  grads_bv: int
  grads_warps: int
  dqk_bk: int  # chunk_grads: K tile of dq, dk, dg (many [64, dqk_bk] temporaries are alive at once;
  #              also the width of the exact [16, 16, W] blocks of the two-level path)
  dqk_bv: int  # V loop tile of the dq, dk sums of the two-level path
  dv_bk: int  # K, V tiles of the two-level dv
  dv_bv: int
  out_bv: int = 64  # chunk_output (sequence-parallel forward): V tile = grid axis
  fwd_parallel: bool = False  # forward as chunk_state_pass + chunk_output instead of chunk_fwd
  state_scan: bool = False  # state passes as chunk summaries + elementwise scan (scan.py)
  dense_diag_tf32: bool = False  # chunk_grads, dense chunks: intra dq, dk with TF32 operands, not bf16
  #   (bf16 inputs; the two-level path always uses TF32 there). H100: dg error 4.2e-3 → 1.4e-3, dq/dk
  #   3.1e-3 → 1.7e-3 (fla: 1.6e-3 / 1.9e-3) for +8–12 % fwd+bwd time.
  scan_sum_bk: int = 64  # chunk_summaries: K tile = grid axis, V loop tile
  scan_sum_bv: int = 64
  scan_sum_warps: int = 4
  scan_bk: int = 32  # state_scan: [BK, BV] tile of the carried state = grid axis
  scan_bv: int = 64
  scan_warps: int = 4
  scan_prefetch: int = 2  # state_scan: steps whose loads are in flight ahead of the multiply-add
  out_warps: int = 4  # chunk_output
  num_stages: int = 2

  @property
  def fixup_bv(self) -> int:
    return self.out_bv if self.fwd_parallel else self.fwd_bv

  @classmethod
  def get_default(cls, B: int, H: int, K: int, V: int, T: int = 2048) -> "BlockSizes":
    """K, V (padded, `padded_dim`) and T; tuned on an H100 (benchmarks/RESULTS.md).

    The fused forward keeps h [K, BV] in registers (≤ 16K floats) and walks the chunks of one
    (b·h, V tile) in order, ~12 µs per chunk: the widest V tile that still gives ≥ ~1 program per
    SM. Where that makes a long chain per SM (chunks × waves ≥ 96: long sequences, few b·h), the
    forward is sequence-parallel instead (state pass + chunk-parallel output). chunk_grads uses
    128-wide K/V tiles for A, dA and dv (−0.6 ms vs 64 at 8,2048,16,128,128 on an H100) and 4 warps
    up to K = V = 128 (two programs per SM: −0.45 ms there and at 2,8192,16,128,128), 8 above (at
    K = 256 four warps spill: +1.1 ms at 8,2048,4,256,512; at 8,2048,4,128,256 8 warps: 1.43 vs 1.72 ms).
    From `SCAN_MIN_CHUNKS` chunks on, the state passes are two-phase scans (scan.py): at
    2,8192,16,128,128 0.32 vs 0.75 ms each; the sequence-parallel forward's chunk_output then takes
    128-wide V tiles and 4 warps (0.70 vs 1.03 ms forward there)."""
    bv = fit_tile(V, min(128, max(16, 16384 // K)))  # every tile divides its padded dim (192 → 64)
    while bv > 32 and B * H * (V // bv) < 120:
      bv //= 2
    waves = -(-(B * H * (V // bv)) // 132)
    fwd_parallel = (-(-T // C)) * waves >= 96
    sbk, sbv = min(K, 64), min(V, 64)
    while sbv > 16 and B * H * (K // sbk) * (V // sbv) < 264:
      sbv //= 2
    state_scan = -(-T // C) >= SCAN_MIN_CHUNKS
    return cls(fwd_bk=min(K, 64), fwd_bv=bv, fwd_warps=8,
               state_bk=sbk, state_bv=sbv, state_warps=4,
               grads_bk=fit_tile(K, 128), grads_bv=fit_tile(V, 128),
               grads_warps=4 if max(K, V) <= 128 else 8,
               dqk_bk=min(K, 32), dqk_bv=min(V, 64), dv_bk=min(K, 64), dv_bv=min(V, 64),
               out_bv=fit_tile(V, 128), fwd_parallel=fwd_parallel, state_scan=state_scan,
               scan_sum_bk=min(K, 64), scan_sum_bv=min(V, 64), scan_bk=min(K, 32), scan_bv=min(V, 64))


@dataclasses.dataclass(frozen=True)
class KernelOptions:
  """Static facts of one call; hashable (the custom_vjp's non-differentiable argument)."""

  scale: float
  B: int
  H: int
  T: int  # padded to a multiple of C
  K: int  # padded (`padded_dim`)
  V: int
  dtype: str  # q/k/v dtype name
  g_dtype: str
  has_h0: bool
  has_seg: bool
  blocks: BlockSizes
  path: str = "auto"  # "auto" | "dense" | "two_level" | "exact" (the last three for tests)
  threshold: float = 40.0
  interpret: bool = False
  state_dtype: str = "float32"  # dtype of the per-chunk states the backward materialises
  # the sequence-parallel forward's per-chunk states kept as residuals for the backward (no recompute)
  keep_states: bool = True

  gate = "vector"  # gate kind of the shared state passes (pallas_kernels/common/triton/gates.py)
  prefix = "gla"  # kernel names

  @property
  def N(self) -> int:
    return self.T // C

  @property
  def dot_dtype(self):
    """Matmul operand dtype: bf16 inputs use bf16 tensor-core products; fp16 and f32 use f32 operands
    (fp16 cannot hold the decay factors e^{±40}; f32 inputs are multiplied exactly)."""
    return jnp.dtype(jnp.bfloat16) if self.dtype == "bfloat16" else jnp.dtype(F32)

  def compiler_params(self, num_warps: int):
    return compat.triton_compiler_params(num_warps=num_warps, num_stages=self.blocks.num_stages)


# ------------------------------------------------------------------------------------------------
# stage 1: chunk_local_cumsum on one K tile of one chunk
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Gates:
  """Cumsums of one K tile (width W) of one block of rows, float32, relative to the chunk start."""

  G: jax.Array  # [R, W] Σ_{r ≤ t} g_r (inclusive)
  Gn: jax.Array  # [1, W] G at the block's first row (the reference row n)
  Gl: jax.Array  # [1, W] G at the block's last row
  gam: jax.Array  # [W] Γ = Σ over the whole chunk

  @property
  def gam_row(self):
    return self.gam[None, :]

  @property
  def gam_col(self):
    return self.gam[:, None]


def block_gates(g_ref, r0, R: int, c0, W: int) -> Gates:
  """Stage 1 for a block that is itself the chunk: rows r0 .. r0 + R − 1, columns c0 .. c0 + W − 1.
  Γ is G's last row (not a separate sum), so Γ − G is exactly 0 on the last row."""
  G = jnp.cumsum(load(g_ref, r0, R, c0, W), axis=0)
  gl = last_row(G)
  return Gates(G=G, Gn=load(g_ref, r0, 1, c0, W), Gl=gl, gam=gl.reshape(W))


def sub_gates(g_ref, u, c0, W: int) -> Gates:
  """Stage 1 for sub-chunk u (may be traced) of the chunk held in g_ref's rows 0 .. C − 1: G is the
  sub-chunk's own cumsum plus the sum of the rows before it; Γ is built the same way for the last one."""
  S = S_FINE
  g_chunk = load(g_ref, 0, C, c0, W)
  rows_ = iota2((C, W), 0)
  before = jnp.sum(jnp.where(rows_ < u * S, g_chunk, 0.0), axis=0)[None, :]
  G = jnp.cumsum(load(g_ref, u * S, S, c0, W), axis=0) + before
  before_last = jnp.sum(jnp.where(rows_ < C - S, g_chunk, 0.0), axis=0)[None, :]
  gam = last_row(jnp.cumsum(load(g_ref, C - S, S, c0, W), axis=0)) + before_last
  return Gates(G=G, Gn=before + load(g_ref, u * S, 1, c0, W), Gl=last_row(G), gam=gam.reshape(W))


def chunk_span(g_ref, r0, K: int, W: int):
  """max_d Σ_{r ≥ 1} −g_rd over one chunk (rows r0 ..): the largest exponent the dense path would see."""
  span = jnp.zeros((), F32)
  for kt in range(K // W):
    g = load(g_ref, r0, C, kt * W, W)
    first = load(g_ref, r0, 1, kt * W, W)
    span = jnp.maximum(span, jnp.max(first - jnp.sum(g, axis=0)[None, :]))
  return span


def choose_path(opts: KernelOptions, span, dense_fn, two_level_fn, *operands):
  """Run a chunk step: the dense (S = 64) version, then — only where the chunk's span is too large for
  it — the two-level (S = 16) version, which overwrites what the dense one stored and returned. Keeping
  the dense step outside the conditional lets Triton software-pipeline its loads."""
  if opts.path == "dense":
    return dense_fn(*operands)
  if opts.path in ("two_level", "exact"):
    return two_level_fn(*operands)
  out = dense_fn(*operands)
  return lax.cond(span < opts.threshold, lambda *_: out, two_level_fn, *operands)


def fine_mode(opts: KernelOptions) -> str:
  """Diagonal-block mode of the two-level path."""
  return "exact" if opts.path == "exact" else "auto"


# ------------------------------------------------------------------------------------------------
# stage 3: blocks of chunk_intra_attention
# ------------------------------------------------------------------------------------------------


def off_block(q_i, k_j, Gi, Gni, Gj, opts):
  """A_ij for i > j: (q_i ⊙ e^{G_i − G_{n_i}})(k_j ⊙ e^{G_{n_i} − G_j})ᵀ, both factors ≤ 1."""
  return mm(q_i * jnp.exp(Gi - Gni), k_j * jnp.exp(Gni - Gj), opts, tb=True)


def diag_block_fast(q_i, k_i, Gi, Gni, opts):
  """A_ii (unmasked) as one matmul with the sub-chunk's first row as reference (span must be small)."""
  return mm(q_i * jnp.exp(Gi - Gni), k_i * jnp.exp(Gni - Gi), opts, tb=True)


def _tri3(S: int, W: int, strict: bool):
  t = lax.broadcasted_iota(jnp.int32, (S, S, W), 0)
  s = lax.broadcasted_iota(jnp.int32, (S, S, W), 1)
  return t > s if strict else t >= s


def diag_block_exact(q_ref, k_ref, g_ref, r0, c0, W: int, scale: float):
  """A_ii = Σ_d q_td k_sd e^{G_td − G_sd} (s ≤ t) in float32 log space over columns c0 .. c0 + W − 1,
  16 columns at a time (a [16, 16, 16] tensor); rows r0 .. r0 + 15 of the refs."""
  S = S_FINE
  tri = _tri3(S, S, strict=False)

  def body(u, acc):
    c = c0 + u * S
    q = load(q_ref, r0, S, c, S) * scale
    k = load(k_ref, r0, S, c, S)
    L = jnp.cumsum(load(g_ref, r0, S, c, S), axis=0)
    E = jnp.exp(jnp.where(tri, L[:, None, :] - L[None, :, :], -jnp.inf))
    return acc + jnp.sum(q[:, None, :] * k[None, :, :] * E, axis=2)

  return lax.fori_loop(0, W // S, body, jnp.zeros((S, S), F32))


def diag_A(mode: str, q, k, gt: Gates, refs, r0, c0, W: int, opts):
  """The (unmasked) diagonal block of A for one K tile, by mode ("fast", "exact" or "auto" = exact only
  where the block's own span is large). q (scaled), k: [S, W]; refs = (q_ref, k_ref, g_ref) with the
  block's rows at r0 (the exact path reloads them 16 columns at a time)."""
  fast = lambda: diag_block_fast(q, k, gt.G, gt.Gn, opts)
  if mode == "fast":
    return fast()
  exact = lambda: diag_block_exact(*refs, r0, c0, W, opts.scale)
  if mode == "exact":
    return exact()
  return lax.cond(jnp.max(gt.Gn - gt.Gl) < opts.threshold, fast, exact)
