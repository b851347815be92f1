"""The Mosaic GPU (Hopper) forward kernel of chunk_simple_gla (docs/ops.md): one program per
(b·h, V tile) walks the chunks of 64 tokens in order with the float32 state S [Kp, BV] in registers.

Per chunk, with G the chunk-local inclusive cumsum of the log decay and Γ its last row (everything
that depends only on the gate is precomputed by `ops.prepare` into the `vec` operand, see `VEC_ROWS`):

  o  = qf ⊙ (q S) + (s · (q kᵀ) ⊙ M) v     qf_t = s · e^{G_t} · [t in the chunk's first document]
  S' = sd · S + (kᵀ ⊙ kf) v                kf_s = e^{Γ − G_s} · [s in the chunk's last document]
                                           sd = e^{Γ} · [no document starts inside the chunk]
  M_ts = e^{G_t − G_s} for s ≤ t in one document, else 0 (the exponent is −inf before the exp).

G comes as two float32 rows, G = G_hi + G_lo (`chunking.compensated_cumsum`), and the exponent is
(G_hi,t − G_hi,s) + (G_lo,t − G_lo,s): a float32 G of a chunk at strong decay reaches −1280 (−20 per
token), where its own rounding (~1e-4) would be a 1e-4 relative error of every pair's weight — the
pairs are all of dg, so the backward needs them to float32 precision.

Every matmul is a `plgpu.wgmma` whose two operands are SMEM tiles (q [C, Kp], kᵀ [Kp, C], v [C, BV],
and the bf16/fp16 copies of S, of the scores and of the decayed keys the kernel writes there), so no
operand is transposed in SMEM and none comes from registers: the layout JAX 0.10's interpret mode
runs, and one code path for interpret and compiled. Keys arrive transposed ([B, H, Kp, Tp], made by
`ops.prepare`). Loads of TMA'd tiles into registers take an explicit layout when compiled
(`plgpu.load`, which interpret mode lacks) and a plain `ref[...]` when interpreted.

With `FwdOptions.strict` the scores keep only the pairs s < t (M_tt = 0: the caller adds each token's
own pair, exactly, outside) and o is written in float32: the backward's form, from which the gate's
gradient is formed without the O(1) diagonal terms that would cancel (ops.py). The strict form also
compensates the two 16-bit roundings of float32 values that carry the inter-chunk pairs: S and the decayed
keys each go to SMEM as hi + lo (hi = x rounded to the operand dtype, lo = x − hi rounded), and q S and
kd v each take a second wgmma on lo, so those products carry ~2^-16 relative error instead of the dtype's
2^-8. Why it is needed: dg sums q·dq' − k·dk' over all later tokens (ops.py), and the pairs with both
ends after r cancel between the dq and the dk pass only up to the roundings each pass makes on its own
state: uncompensated, those add up over T (measured, interpret mode, 1 × 2048 × 1 × 128 × 128 bf16: dg
relative L2 error 9.1e-3 vs the float32 reference, compensated 1.9e-3; the xla impl's bf16 run 2.1e-3).
The pair scores are rounded once and alike in both passes, so they cancel without it. Cost: two more
matmuls per chunk in the dq and dk passes, and the lo tiles in SMEM.

Tiles: C = 64 rows per chunk; Kp a multiple of 64 (wgmma's M for kᵀ v); BV 64 or 128. The input
tiles of chunk n + 1 are TMA'd into a second buffer while chunk n computes (`FwdOptions.buffers`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import compat
from pallas_kernels.common.mosaic_gpu import tiles as mt
from pallas_kernels.common.mosaic_gpu.layout import BARRIER_BYTES
from pallas_kernels.common.mosaic_gpu.tiles import COLS, F32, ROWS, WGMMA

pl = compat.pl
C = 64
VEC_ROWS = ("G", "G_lo", "qf", "kf", "sd", "doc")  # rows of the [B, H, R, Tp] float32 gate operand ("doc" with
#                                            segment_ids only: the document index, exact in float32)


@dataclasses.dataclass(frozen=True)
class FwdOptions:
  """Static facts of one forward launch (padded sizes)."""

  B: int
  H: int
  T: int  # padded to a multiple of C
  K: int  # padded to a multiple of 64
  V: int  # padded to a multiple of BV
  BV: int
  dtype: str  # q/k/v dtype: the wgmma operand dtype
  scale: float
  has_h0: bool
  has_seg: bool
  want_ht: bool
  interpret: bool = False
  strict: bool = False  # scores of the pairs s < t only, o in float32, S and kd compensated (docstring)
  f32_out: bool = False  # o in float32 (the launches of a K split into parts are summed in float32)
  buffers: int = 2  # 2: chunk n + 1's tiles load while chunk n computes; 1 where two do not fit SMEM

  @property
  def N(self) -> int:
    return self.T // C

  @property
  def R(self) -> int:
    return len(VEC_ROWS) if self.has_seg else len(VEC_ROWS) - 1

  @property
  def o_dtype(self):
    return jnp.dtype(jnp.float32) if self.strict or self.f32_out else jnp.dtype(self.dtype)

  def smem_bytes(self) -> int:
    """Shared memory the kernel allocates (compiled: must stay under the H200's 227 KiB)."""
    it = jnp.dtype(self.dtype).itemsize
    K, BV = self.K, self.BV
    inputs = self.buffers * (C * K + K * C + C * BV)  # q, kᵀ, v
    tiles = (K * C + K * BV) * (2 if self.strict else 1) + C * C  # decayed kᵀ, S (hi and lo if strict), A
    o_tile = C * BV * self.o_dtype.itemsize
    barriers = BARRIER_BYTES * (self.buffers + 1)  # bar (one per buffer), st_bar
    return it * (inputs + tiles) + o_tile + 4 * (self.buffers * self.R * C + K * BV) + barriers  # + gate rows, h0/ht


def fwd_kernel(*refs, opts: FwdOptions, q_s, kt_s, v_s, vec_s, s_s, a_s, kd_s, o_s, st_s, bar, st_bar,
              s_lo=None, kd_lo=None):
  q_ref, kt_ref, v_ref, vec_ref, *rest = refs
  h0_ref = rest.pop(0) if opts.has_h0 else None
  o_ref, *rest = rest
  ht_ref = rest.pop(0) if opts.want_ht else None
  K, BV, dt = opts.K, opts.BV, jnp.dtype(opts.dtype)
  bh, vt = lax.axis_index("bh"), lax.axis_index("v")
  b, h = lax.div(bh, opts.H), lax.rem(bh, opts.H)
  cols = pl.ds(vt * BV, BV)
  if opts.has_h0:
    plgpu.copy_gmem_to_smem(h0_ref.at[b, h, :, cols], st_s, st_bar)
    plgpu.barrier_wait(st_bar)
    S0 = mt.read(st_s, WGMMA, opts.interpret)
  else:
    S0 = mt.zeros((K, BV), opts.interpret)

  def issue(n, slot):  # TMA of chunk n's tiles into buffer `slot`
    rows = pl.ds(n * C, C)
    plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h], q_s.at[slot], bar.at[slot])
    plgpu.copy_gmem_to_smem(kt_ref.at[b, h, :, rows], kt_s.at[slot], bar.at[slot])
    plgpu.copy_gmem_to_smem(v_ref.at[b, rows, h, cols], v_s.at[slot], bar.at[slot])
    plgpu.copy_gmem_to_smem(vec_ref.at[b, h, :, rows], vec_s.at[slot], bar.at[slot])

  double = opts.buffers == 2
  if double:
    issue(0, 0)

  def step(n, S):  # S: [K, BV] float32, the state entering chunk n
    rows = pl.ds(n * C, C)
    slot = lax.rem(n, 2) if double else 0
    if not double:
      issue(n, 0)
    plgpu.barrier_wait(bar.at[slot])
    if double:
      @pl.when(n + 1 < opts.N)
      def _prefetch():  # chunk n + 1 loads while chunk n computes (its buffer was freed by n − 1)
        plgpu.commit_smem()
        issue(n + 1, 1 - slot)

    q, kt, v, vec = q_s.at[slot], kt_s.at[slot], v_s.at[slot], vec_s.at[slot]
    s_hi = S.astype(dt)
    s_s[...] = s_hi
    if opts.strict:  # compensated: S = hi + lo (module docstring)
      s_lo[...] = (S - s_hi.astype(F32)).astype(dt)
    plgpu.commit_smem()
    qS = mt.mm(q, s_s, (C, BV))
    if opts.strict:
      qS = qS + mt.mm(q, s_lo, (C, BV))
    qk = mt.mm(q, kt, (C, C))
    row = lambda name, layout: mt.read(vec.at[VEC_ROWS.index(name)], layout, opts.interpret)
    G_r, G_c, L_r, L_c = row("G", ROWS), row("G", COLS), row("G_lo", ROWS), row("G_lo", COLS)
    t_idx, s_idx = mt.iota((C, C), 0, opts.interpret), mt.iota((C, C), 1, opts.interpret)
    live = t_idx > s_idx if opts.strict else t_idx >= s_idx
    if opts.has_seg:
      live = live & (mt.rows(row("doc", ROWS), (C, C)) == mt.cols(row("doc", COLS), (C, C)))
    exponent = (mt.rows(G_r, (C, C)) - mt.cols(G_c, (C, C))) + (mt.rows(L_r, (C, C)) - mt.cols(L_c, (C, C)))
    M = jnp.exp(jnp.where(live, exponent, -jnp.inf))
    a_s[...] = (qk * M * opts.scale).astype(dt)
    kf = row("kf", COLS)
    kd = mt.read(kt, WGMMA, opts.interpret).astype(F32) * mt.cols(kf, (K, C))
    kd_hi = kd.astype(dt)
    kd_s[...] = kd_hi
    if opts.strict:
      kd_lo[...] = (kd - kd_hi.astype(F32)).astype(dt)
    plgpu.commit_smem()
    o = qS * mt.rows(row("qf", ROWS), (C, BV)) + mt.mm(a_s, v, (C, BV))
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous chunk's o has left o_s
    o_s[...] = o.astype(o_s.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_s, o_ref.at[b, rows, h, cols])
    S = S * vec[VEC_ROWS.index("sd"), 0] + mt.mm(kd_s, v, (K, BV))
    return S + mt.mm(kd_lo, v, (K, BV)) if opts.strict else S

  S = lax.fori_loop(0, opts.N, step, S0)
  if opts.want_ht:
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    st_s[...] = S
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(st_s, ht_ref.at[b, h, :, cols])
  plgpu.wait_smem_to_gmem(0)


def chunk_fwd(q, kt, v, vec, h0, opts: FwdOptions):
  """q [B, Tp, H, Kp], kt [B, H, Kp, Tp], v [B, Tp, H, Vp] (one 16-bit dtype; float32 in interpret
  mode), vec [B, H, R, Tp] f32, h0 [B, H, Kp, Vp] f32 or None → (o [B, Tp, H, Vp] (v.dtype; float32
  with `opts.strict`), with `opts.want_ht` the final state [B, H, Kp, Vp] f32 else None)."""
  B, T, H, K, V, BV = opts.B, opts.T, opts.H, opts.K, opts.V, opts.BV
  dt = jnp.dtype(opts.dtype)
  o_dtype = opts.o_dtype
  out_type = [compat.pallas_out_struct((B, T, H, V), o_dtype, q)]
  if opts.want_ht:
    out_type.append(compat.pallas_out_struct((B, H, K, V), F32, q))
  nb = opts.buffers
  scratch = dict(q_s=mt.smem((nb, C, K), dt), kt_s=mt.smem((nb, K, C), dt), v_s=mt.smem((nb, C, BV), dt),
                 vec_s=plgpu.SMEM((nb, opts.R, C), F32), s_s=mt.smem((K, BV), dt), a_s=mt.smem((C, C), dt),
                 kd_s=mt.smem((K, C), dt), o_s=mt.smem((C, BV), o_dtype), st_s=mt.smem((K, BV), F32),
                 bar=plgpu.Barrier(num_arrivals=4, num_barriers=nb), st_bar=plgpu.Barrier())
  if opts.strict:  # the lo halves of S and of the decayed keys (module docstring)
    scratch.update(s_lo=mt.smem((K, BV), dt), kd_lo=mt.smem((K, C), dt))
  run = plgpu.kernel(functools.partial(fwd_kernel, opts=opts), out_type=out_type,
                     scratch_types=scratch, grid=(B * H, V // BV), grid_names=("bh", "v"),
                     compiler_params=mt.compiler_params(), kernel_name="simple_gla_mosaic_fwd",
                     interpret=compat.gpu_interpret_params() if opts.interpret else None)
  args = [q, kt, v, vec] + ([h0] if opts.has_h0 else [])
  outs = run(*args)
  outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
  o = outs.pop(0)
  return o, (outs.pop(0) if opts.want_ht else None)
