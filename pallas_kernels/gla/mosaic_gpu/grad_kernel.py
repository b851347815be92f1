"""The Mosaic GPU (Hopper) kernel of chunk_gla's dq and dk passes (`ops._bwd_rule`): the gated-output
pass. With s the scale, G_t the cumulative log gate (per column d of z) and the state Sᵀ [V, K],

  out_t = s Σ_{s < t} (x_t · y_s) z_s ⊙ e^{G_t − G_s}  +  s e^{G_t} ⊙ (S0ᵀ x_t)            (S0: initial state)

so dq = pass(x = do, y = v, z = k, g) and dk = rev(pass(x = rev v, y = rev do, z = rev q, g⃖)) (ops.py).
The gate acts on the output's columns, not on the contraction (the forward kernel's case), so the
contraction (over V) needs no gating and the gating is elementwise on [C, 64] tiles of z and of the
output. The pass is *strict*: each token's own pair (s = t) is left out (the caller adds it exactly):
the form from which dg is formed without O(1) terms that cancel (ops.py).

One program per (b·h, 64-wide tile of K) walks the chunks of 64 tokens in order, the float32 state
Sᵀ [Vp, 64] in registers as one [64, 64] tile per 64-wide V tile. Per chunk, with G the chunk-local
inclusive cumsum of the (floored) log gate and Γ its last row (`ops.prepare_grad`):

  B     = x yᵀ                       summed over the V tiles, [C, C]: the pair scores
  inter = x Sᵀ                       summed over the V tiles
  Sᵀ'   = Sᵀ ⊙ e^{Γ} ⊙ carry + yᵀ (z ⊙ e^{Γ − G} ⊙ tail)     per V tile (every exponent ≤ 0)
  out   = s e^{G} ⊙ cin ⊙ inter + intra(s · B ⊙ M)

with cin / tail / carry the packed-document masks of the forward kernel and M the strictly causal,
same-document mask. intra_td = Σ_s Bm_ts z_sd e^{G_td − G_sd} takes the forward's two forms, chosen
per chunk by the same "dense" flag:

* dense: e^{G − G_31} ⊙ (Bm (z ⊙ e^{G_31 − G})), one matmul (every factor within e^{±span});
* exact (every exponent ≤ 0): queries 32..63 × keys 0..31 through row 31, [t ≥ 32] e^{G_t − G_31} ⊙
  (Bm (z ⊙ [s < 32] e^{G_31 − G_s})); then Bm restricted to pairs in one 32-row half, queries 16..31 ×
  keys 0..15 through row 15 and 48..63 × 32..47 through row 47 in one matmul; the diagonal 16×16
  blocks one sub-diagonal j = 1..15 at a time in float32 (z and G read shifted by j rows).

Compensation. dg sums q·dq' − k·dk' over all later tokens (ops.py): the pairs with both ends after r
cancel between the dq and the dk pass only up to each pass's own roundings. So every float32 value
that meets a 16-bit matmul operand other than the pair scores — the state Sᵀ, the decayed z of the
state update and the gated z of the intra matmuls — goes to SMEM as hi + lo (hi = x rounded to the
operand dtype, lo = x − hi rounded) and takes two matmuls, ~2^-16 relative error instead of 2^-8. The
pair scores Bm are rounded once, to the same value in both passes (B_ts = x_t·y_s is the same dot
product in the dq pass and, transposed, in the dk pass; the level of a pair is the same in reversed
time), so they cancel without it. The output is float32.

Every matmul is a `plgpu.wgmma` of two SMEM tiles, none transposed in SMEM (y arrives transposed,
[B, H, Vp, Tp]); z and G live in untiled buffers with `PAD` leading rows (the shifted windows of the
diagonal blocks), as the forward's gate buffer does. The next step's x and yᵀ tiles (chunk, V tile) and
the next chunk's z, G and gate rows are TMA'd into second buffers while one computes.
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
from pallas_kernels.gla.mosaic_gpu.kernel import BK, C, PAD, REF, SUB, vec_rows

pl = compat.pl
BV = 64  # contraction (V) tile


@dataclasses.dataclass(frozen=True)
class GradOptions:
  """Static facts of one gated-output launch (padded sizes)."""

  B: int
  H: int
  T: int  # padded to a multiple of C
  V: int  # the contraction (x's and y's last dim), padded to a multiple of BV; ≤ 256 per launch
  K: int  # the gated dim (z's last dim, the output's), padded to a multiple of BK
  dtype: str  # x / y / z dtype: the wgmma operand dtype
  scale: float
  has_h0: bool
  has_seg: bool
  interpret: bool = False
  buffers: int = 2

  @property
  def N(self) -> int:
    return self.T // C

  @property
  def NV(self) -> int:
    return self.V // BV

  @property
  def R(self) -> int:
    return len(vec_rows(self.has_seg))

  def smem_bytes(self) -> int:
    """Shared memory the kernel allocates (compiled: must stay under the H200's 227 KiB)."""
    it = jnp.dtype(self.dtype).itemsize
    step = it * (C * BV + BV * C)  # x, yᵀ
    chunk = (it + 8) * (PAD + C) * BK + 4 * self.R * C  # z, G, G_lo, gate rows
    work = it * (2 * C * BK + 2 * BV * BK + C * C + 2 * C * BK) + 4 * C * BK  # kd, S, Bm, z̃ (hi, lo), o
    barriers = BARRIER_BYTES * (2 * self.buffers + 1)  # bar, zbar (one each per buffer), st_bar
    return self.buffers * (step + chunk) + work + barriers


def _split(x, dt):
  """float32 x → (hi, lo) in dt with hi + lo ≈ x to ~2^-16 (compensated operand)."""
  hi = x.astype(dt)
  return hi, (x - hi.astype(F32)).astype(dt)


def _store(ref_hi, ref_lo, x, dt):
  ref_hi[...], ref_lo[...] = _split(x, dt)


def _mm2(a_ref, hi_ref, lo_ref, init, interpret: bool):
  """init + a @ (hi + lo), one accumulator."""
  return mt.mma(init, [(a_ref, hi_ref), (a_ref, lo_ref)], interpret)


def _window(t: dict, j, opts: GradOptions, names=("z", "g", "gl")):
  """z, G and G_lo (those of `names`) of rows t − j, [C, BK] float32 (rows t < j: garbage, masked by
  the caller)."""
  w = lambda ref: mt.read(ref.at[pl.ds(PAD - j, C)], WGMMA, opts.interpret, False)
  return tuple(w(t[n]).astype(F32) for n in names)


def _ref_row(t: dict, r: int, shape, opts: GradOptions):
  """G and G_lo of row r broadcast over the rows of a [·, BK] tile."""
  row = lambda ref: mt.cols(mt.read(ref.at[PAD + r], COLS, opts.interpret), shape)
  return row(t["g"]), row(t["gl"])


def _diff(a, b):
  """The exponent a − b of two compensated cumsums (hi, lo): (hi_a − hi_b) + (lo_a − lo_b)."""
  return (a[0] - b[0]) + (a[1] - b[1])


def _exponent(t: dict, r: int, opts: GradOptions):
  """G_t − G_r, [C, BK] float32 (compensated)."""
  return _diff(_window(t, 0, opts, ("g", "gl")), _ref_row(t, r, (C, BK), opts))


def _dense_intra(t: dict, opts: GradOptions, out):
  """out + e^{G − G_31} ⊙ (Bm (z ⊙ e^{G_31 − G})). Registers: the exponent first (G and G_lo then
  dead), then z."""
  dt = jnp.dtype(opts.dtype)
  e = _exponent(t, REF, opts)  # G_t − G_REF
  (z,) = _window(t, 0, opts, ("z",))
  _store(t["za_s"], t["za_lo"], z * jnp.exp(-e), dt)
  plgpu.commit_smem()
  return out + jnp.exp(e) * _mm2(t["bm_s"], t["za_s"], t["za_lo"], mt.zeros((C, BK), opts.interpret),
                                 opts.interpret)


def _exact_intra(t: dict, opts: GradOptions, out):
  dt = jnp.dtype(opts.dtype)
  row = lambda: mt.iota((C, BK), 0, opts.interpret)
  ninf = -jnp.inf
  zeros = lambda: mt.zeros((C, BK), opts.interpret)
  # queries 32..63 × keys 0..31 through row 31 (keys masked in z̃, queries in the output)
  e = _exponent(t, 31, opts)
  (z,) = _window(t, 0, opts, ("z",))
  _store(t["za_s"], t["za_lo"], z * jnp.exp(jnp.where(row() < 32, -e, ninf)), dt)
  plgpu.commit_smem()
  out = out + jnp.exp(jnp.where(row() >= 32, e, ninf)) * _mm2(t["bm_s"], t["za_s"], t["za_lo"], zeros(),
                                                              opts.interpret)
  # pairs within one 32-row half only (the rest is done): its queries 16..31 × keys 0..15 through
  # row 15, 48..63 × 32..47 through row 47
  r, c = (lambda: mt.iota((C, C), 0, opts.interpret)), (lambda: mt.iota((C, C), 1, opts.interpret))
  bm = mt.read(t["bm_s"], WGMMA, opts.interpret).astype(F32)
  t["bm_s"][...] = jnp.where(lax.div(r(), 32) == lax.div(c(), 32), bm, 0.0).astype(dt)  # a subset of the same values
  e = jnp.where(row() < 32, _exponent(t, 15, opts), _exponent(t, 47, opts))
  (z,) = _window(t, 0, opts, ("z",))
  _store(t["za_s"], t["za_lo"], z * jnp.exp(jnp.where(lax.rem(row(), 32) < 16, -e, ninf)), dt)
  plgpu.commit_smem()
  out = out + jnp.exp(jnp.where(lax.rem(row(), 32) >= 16, e, ninf)) * _mm2(
      t["bm_s"], t["za_s"], t["za_lo"], zeros(), opts.interpret)
  # the diagonal 16×16 blocks, one sub-diagonal j at a time (rows t with t mod 16 ≥ j); j = 0 is the
  # own pair, left out (strict). Each step reads its operands from SMEM.

  def diagonal(j, out):
    bm = mt.read(t["bm_s"], WGMMA, opts.interpret).astype(F32)
    d = jnp.sum(jnp.where(c() == r() - j, bm, 0.0), axis=1)  # Bm_{t, t−j}
    G, L = _window(t, 0, opts, ("g", "gl"))
    gw, lw = _window(t, j, opts, ("g", "gl"))
    e = jnp.exp(_diff((G, L), (gw, lw)))
    (zw,) = _window(t, j, opts, ("z",))
    return out + jnp.where(lax.rem(row(), SUB) >= j, mt.rows(d, (C, BK)) * zw * e, 0.0)

  return lax.fori_loop(1, SUB, diagonal, out)


def grad_kernel(*refs, opts: GradOptions, x_s, yt_s, z_s, g_s, gl_s, vec_s, kd_s, kd_lo, s_s, s_lo,
                bm_s, za_s, za_lo, o_s, bar, zbar, st_bar):
  x_ref, yt_ref, z_ref, g_ref, gl_ref, vec_ref, *rest = refs
  h0_ref = rest.pop(0) if opts.has_h0 else None
  (o_ref,) = rest
  NV, dt = opts.NV, jnp.dtype(opts.dtype)
  names = vec_rows(opts.has_seg)
  bh, kt = lax.axis_index("bh"), lax.axis_index("k")
  b, h = lax.div(bh, opts.H), lax.rem(bh, opts.H)
  kc = pl.ds(kt * BK, BK)
  S0 = []
  for vt in range(NV):
    if opts.has_h0:  # staged through o_s (a [64, 64] float32 tile, free until the first output)
      plgpu.copy_gmem_to_smem(h0_ref.at[b, h, pl.ds(vt * BV, BV), kc], o_s, st_bar)
      plgpu.barrier_wait(st_bar)
      S0.append(mt.read(o_s, WGMMA, opts.interpret))
      plgpu.commit_smem()
    else:
      S0.append(mt.zeros((BV, BK), opts.interpret))

  def issue(n, vt, slot):  # TMA of step (chunk n, V tile vt)'s x and yᵀ tiles into buffer `slot`
    rows, vc = pl.ds(n * C, C), pl.ds(vt * BV, BV)
    plgpu.copy_gmem_to_smem(x_ref.at[b, rows, h, vc], x_s.at[slot], bar.at[slot])
    plgpu.copy_gmem_to_smem(yt_ref.at[b, h, vc, rows], yt_s.at[slot], bar.at[slot])

  def issue_chunk(n, slot):  # TMA of chunk n's z, G, G_lo and gate rows
    rows = pl.ds(n * C, C)
    plgpu.copy_gmem_to_smem(z_ref.at[b, rows, h, kc], z_s.at[slot, pl.ds(PAD, C)], zbar.at[slot])
    plgpu.copy_gmem_to_smem(g_ref.at[b, rows, h, kc], g_s.at[slot, pl.ds(PAD, C)], zbar.at[slot])
    plgpu.copy_gmem_to_smem(gl_ref.at[b, rows, h, kc], gl_s.at[slot, pl.ds(PAD, C)], zbar.at[slot])
    plgpu.copy_gmem_to_smem(vec_ref.at[b, h, :, rows], vec_s.at[slot], zbar.at[slot])

  double = opts.buffers == 2
  if double:
    issue(0, 0, 0)
    issue_chunk(0, 0)

  def chunk(n, S):
    S = list(S)
    rows = pl.ds(n * C, C)
    cslot = lax.rem(n, 2) if double else 0
    if not double:
      issue_chunk(n, 0)
    plgpu.barrier_wait(zbar.at[cslot])
    if double:
      @pl.when(n + 1 < opts.N)
      def _prefetch_chunk():
        plgpu.commit_smem()
        issue_chunk(n + 1, 1 - cslot)

    vec = vec_s.at[cslot]
    t = dict(z=z_s.at[cslot], g=g_s.at[cslot], gl=gl_s.at[cslot], bm_s=bm_s, za_s=za_s, za_lo=za_lo)
    dense = vec[names.index("dense"), 0] > 0.5
    (z,) = _window(t, 0, opts, ("z",))
    kd = z * jnp.exp(-_exponent(t, C - 1, opts))  # e^{Γ − G}
    if opts.has_seg:
      kd = kd * mt.rows(mt.read(vec.at[names.index("tail")], ROWS, opts.interpret), (C, BK))
    _store(kd_s, kd_lo, kd, dt)
    gam_hi, gam_lo = _ref_row(t, C - 1, (BV, BK), opts)
    decay = jnp.exp(gam_hi + gam_lo)  # e^{Γ}
    if opts.has_seg:
      decay = decay * vec[names.index("carry"), 0]
    inter = mt.zeros((C, BK), opts.interpret)
    pairs = mt.zeros((C, C), opts.interpret)
    for vt in range(NV):
      slot = lax.rem(n * NV + vt, 2) if double else 0
      if not double:
        issue(n, vt, 0)
      plgpu.barrier_wait(bar.at[slot])
      if double:  # the next step's tiles load while this one computes (their buffer is free)
        if vt + 1 < NV:
          plgpu.commit_smem()
          issue(n, vt + 1, 1 - slot)
        else:
          @pl.when(n + 1 < opts.N)
          def _prefetch():
            plgpu.commit_smem()
            issue(n + 1, 0, 1 - slot)

      xs, yts = x_s.at[slot], yt_s.at[slot]
      _store(s_s, s_lo, S[vt], dt)
      plgpu.commit_smem()
      pairs = mt.mma(pairs, [(xs, yts)], opts.interpret)
      inter = _mm2(xs, s_s, s_lo, inter, opts.interpret)
      S[vt] = _mm2(yts, kd_s, kd_lo, S[vt] * decay, opts.interpret)

    r, c = mt.iota((C, C), 0, opts.interpret), mt.iota((C, C), 1, opts.interpret)
    live = r > c
    if opts.has_seg:
      doc = vec.at[names.index("doc")]
      live = live & (mt.rows(mt.read(doc, ROWS, opts.interpret), (C, C))
                     == mt.cols(mt.read(doc, COLS, opts.interpret), (C, C)))
    bm_s[...] = (jnp.where(live, pairs, 0.0) * opts.scale).astype(dt)
    plgpu.commit_smem()
    G, L = _window(t, 0, opts, ("g", "gl"))
    out = inter * jnp.exp(G + L) * opts.scale
    if opts.has_seg:
      out = out * mt.rows(mt.read(vec.at[names.index("cin")], ROWS, opts.interpret), (C, BK))
    out = lax.cond(dense, functools.partial(_dense_intra, t, opts),
                   functools.partial(_exact_intra, t, opts), out)
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous chunk's output has left o_s
    o_s[...] = out
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_s, o_ref.at[b, rows, h, kc])
    return tuple(S)

  lax.fori_loop(0, opts.N, chunk, tuple(S0))
  plgpu.wait_smem_to_gmem(0)


def chunk_grad(x, yt, z, g, g_lo, vec, h0, opts: GradOptions):
  """x [B, Tp, H, Vp], yt [B, H, Vp, Tp] (y transposed), z [B, Tp, H, Kp] (one 16-bit dtype; float32 in
  interpret mode), g and g_lo [B, Tp, H, Kp] f32 (the chunk-local cumsum G of z's gate, compensated:
  G + G_lo), vec [B, H, R, Tp] f32
  (`kernel.vec_rows`), h0 [B, H, Vp, Kp] f32 (the initial state Sᵀ) or None → out [B, Tp, H, Kp] f32."""
  B, T, H, K, V = opts.B, opts.T, opts.H, opts.K, opts.V
  dt = jnp.dtype(opts.dtype)
  nb = opts.buffers
  scratch = dict(
      x_s=mt.smem((nb, C, BV), dt), yt_s=mt.smem((nb, BV, C), dt), z_s=plgpu.SMEM((nb, PAD + C, BK), dt),
      g_s=plgpu.SMEM((nb, PAD + C, BK), F32), gl_s=plgpu.SMEM((nb, PAD + C, BK), F32), vec_s=plgpu.SMEM((nb, opts.R, C), F32),
      kd_s=mt.smem((C, BK), dt), kd_lo=mt.smem((C, BK), dt), s_s=mt.smem((BV, BK), dt),
      s_lo=mt.smem((BV, BK), dt), bm_s=mt.smem((C, C), dt), za_s=mt.smem((C, BK), dt),
      za_lo=mt.smem((C, BK), dt), o_s=mt.smem((C, BK), F32),
      bar=plgpu.Barrier(num_arrivals=2, num_barriers=nb),
      zbar=plgpu.Barrier(num_arrivals=4, num_barriers=nb), st_bar=plgpu.Barrier())
  run = plgpu.kernel(functools.partial(grad_kernel, opts=opts),
                     out_type=compat.pallas_out_struct((B, T, H, K), F32, x),
                     scratch_types=scratch, grid=(B * H, K // BK), grid_names=("bh", "k"),
                     compiler_params=mt.compiler_params(), kernel_name="gla_mosaic_grad",
                     interpret=compat.gpu_interpret_params() if opts.interpret else None)
  out = run(*([x, yt, z, g, g_lo, vec] + ([h0] if opts.has_h0 else [])))
  return out[0] if isinstance(out, (list, tuple)) else out
