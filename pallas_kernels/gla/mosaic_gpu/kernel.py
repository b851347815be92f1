"""The Mosaic GPU (Hopper) forward kernel of chunk_gla (docs/ops.md): one program per (b·h, V tile) walks
the chunks of 64 tokens in order with the float32 state S [Kp, BV] in registers, as a tuple of
[64, BV] tiles, one per 64-wide K tile; each chunk is processed one K tile at a time.

With G the chunk-local inclusive cumsum of the (floored) log gate, per key dim, and Γ its last row
(both precomputed by `ops.prepare`; G also transposed), per chunk and K tile:

  o  += (q ⊙ e^{G} ⊙ cin) S_kt                         inter part: every exponent ≤ 0
  S_kt' = (e^{Γ} ⊙ carry) S_kt + (kᵀ ⊙ e^{Γ−Gᵀ} ⊙ tail) v   state update: every exponent ≤ 0
  A  += A_kt (below);   after the last K tile:  o = scale · (o + (A ⊙ M) v)

where cin / tail / carry are the packed-document masks of the simple-GLA kernel (queries read the
carried state only in the chunk's first document, keys feed it only from its last, the state decays
into the next chunk only if no document starts inside) and M the causal same-document mask.

The intra-chunk scores A_ts = Σ_d q_td k_sd e^{G_td − G_sd} (s ≤ t) take one of two exact forms, chosen
per chunk by the flag `ops.prepare` writes in the "dense" row of the gate operand:

* dense (the chunk's exponent span around row 31, max_d max(G_0 − G_31, G_31 − G_63), is at most
  `ops.DENSE_MAX_EXP`): one reference row for the whole chunk,
  A = (q ⊙ e^{G − G_31})(kᵀ ⊙ e^{G_31 − Gᵀ}), one wgmma; every factor is within e^{±span} (bounded;
  the products it gives above the diagonal may overflow, and are masked out by a select).
* exact (the other chunks: strong decay, −inf resets), every exponent ≤ 0:
  - off-diagonal 16-row sub-blocks by reference rows at sub-block boundaries: queries 32..63 × keys
    0..31 through row 31; queries 16..31 × keys 0..15 through row 15 and 48..63 × 32..47 through row
    47 (one wgmma for those two, its cross block masked): (q ⊙ e^{G − G_r})(kᵀ ⊙ e^{G_r − Gᵀ});
  - the four diagonal 16×16 blocks exactly in float32, one sub-diagonal j = 0..15 at a time:
    A_{t,t−j} = Σ_d q_td k_{t−j,d} e^{G_td − G_{t−j,d}}, from row-shifted windows of G and of k
    (k untransposed, fetched by TMA only for the chunks that take this form).

Every matmul is a `plgpu.wgmma` of two SMEM tiles, none transposed in SMEM and none from registers
(the layout JAX 0.10's interpret mode runs; one code path for interpret and compiled), as in the
simple-GLA kernel. Register budget: the state and the o / A accumulators are the wgmmas' accumulators
themselves (`tiles.mma`: no second [64, N] value beside each), each step forms the query side's
operands (q, G → qi, and the dense form's qa) before the key side's (kᵀ, Gᵀ → kd, ka), and the exact
form re-reads its operands from SMEM per product, so that beside the state only one side's two [64, 64]
float32 tiles are live at a time. Keys arrive transposed ([B, H, Kp, Tp]) and so does G. The gate tile G lives in an
untiled float32 buffer with `PAD` leading rows, so that the exact form can read it (and the keys)
shifted by j rows. Loads of SMEM tiles into registers take an explicit layout when compiled
(`plgpu.load`) and a plain `ref[...]` when interpreted.

Tiles: C = 64 rows per chunk; K in tiles of BK = 64; BV 64 (or 128 with single-buffered inputs). The
input tiles of the next (chunk, K tile) step are TMA'd into a second buffer while one computes.
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
C = 64  # tokens per chunk
BK = 64  # K tile
SUB = 16  # diagonal sub-block of the exact form
PAD = SUB  # leading rows of the untiled gate / key buffers (windows shifted up by < SUB rows)
REF = 31  # the dense form's reference row
SEG_ROWS = ("cin", "tail", "carry", "doc")  # rows of the gate operand with segment_ids


def vec_rows(has_seg: bool) -> tuple[str, ...]:
  """Rows of the [B, H, R, Tp] float32 per-token operand: the per-chunk dense flag (broadcast over the
  chunk's tokens) and, with segment_ids, the document masks and the document index."""
  return ("dense",) + (SEG_ROWS if has_seg else ())


@dataclasses.dataclass(frozen=True)
class FwdOptions:
  """Static facts of one forward launch (padded sizes)."""

  B: int
  H: int
  T: int  # padded to a multiple of C
  K: int  # padded to a multiple of BK
  V: int  # padded to a multiple of BV
  BV: int
  dtype: str  # q/k/v dtype: the wgmma operand dtype
  scale: float
  has_h0: bool
  has_seg: bool
  want_ht: bool
  interpret: bool = False
  buffers: int = 2  # 2: the next step's tiles load while this one computes; 1 where two do not fit
  f32_out: bool = False  # o in float32 (the launches of a K split into parts are summed in float32)

  @property
  def o_dtype(self):
    return jnp.dtype(jnp.float32) if self.f32_out else jnp.dtype(self.dtype)

  @property
  def N(self) -> int:
    return self.T // C

  @property
  def NK(self) -> int:
    return self.K // BK

  @property
  def R(self) -> int:
    return len(vec_rows(self.has_seg))

  def smem_bytes(self) -> int:
    """Shared memory the kernel allocates (compiled: must stay under the H200's 227 KiB)."""
    it = jnp.dtype(self.dtype).itemsize
    BV = self.BV
    step = it * (C * BK + BK * C) + 4 * ((PAD + C) * BK + BK * C)  # q, kᵀ, G, Gᵀ
    chunk = it * C * BV + 4 * self.R * C  # v, gate rows
    work = it * (4 * C * BK + BK * BV + C * C + (PAD + C) * BK) + 4 * BK * BV
    barriers = BARRIER_BYTES * (2 * self.buffers + 2)  # bar, vbar (one each per buffer), st_bar, k_bar
    return self.buffers * (step + chunk) + work + self.o_dtype.itemsize * C * BV + barriers  # + the o tile


def _query_side(t: dict, opts: FwdOptions):
  """q and G of the step's K tile as float32 registers ([C, BK])."""
  q = mt.read(t["q_s"], WGMMA, opts.interpret).astype(F32)
  return q, mt.read(t["g"].at[pl.ds(PAD, C)], WGMMA, opts.interpret, False)


def _key_side(t: dict, opts: FwdOptions):
  """kᵀ and Gᵀ of the step's K tile as float32 registers ([BK, C])."""
  kT = mt.read(t["kt_s"], WGMMA, opts.interpret).astype(F32)
  return kT, mt.read(t["gt_s"], WGMMA, opts.interpret)


def _dense_query(t: dict, q, G, opts: FwdOptions):
  """The dense form's qa = q ⊙ e^{G − G_REF} into SMEM (one reference row, REF, for the whole chunk)."""
  g_ref = mt.cols(mt.read(t["g"].at[PAD + REF], COLS, opts.interpret), (C, BK))
  t["qa_s"][...] = (q * jnp.exp(G - g_ref)).astype(jnp.dtype(opts.dtype))


def _dense_key(t: dict, kT, Gt, opts: FwdOptions):
  """The dense form's ka = kᵀ ⊙ e^{G_REF − Gᵀ} into SMEM."""
  g_ref = mt.rows(mt.read(t["g"].at[PAD + REF], ROWS, opts.interpret), (BK, C))
  t["ka_s"][...] = (kT * jnp.exp(g_ref - Gt)).astype(jnp.dtype(opts.dtype))


def _exact_scores(t: dict, opts: FwdOptions, A):
  """A + A_kt with every exponent ≤ 0: reference rows at the 16-row sub-block boundaries off the
  diagonal, float32 sub-diagonals on the diagonal blocks. Each operand pair is read from SMEM where it
  is used (registers: beside S and the o and A accumulators, only what one product needs)."""
  dt = jnp.dtype(opts.dtype)
  g_s = t["g"]
  plgpu.commit_smem()
  plgpu.copy_gmem_to_smem(t["k_src"], t["kr_s"].at[pl.ds(PAD, C)], t["k_bar"])
  gr = lambda r, layout: mt.read(g_s.at[PAD + r], layout, opts.interpret)
  ninf = -jnp.inf
  row, colk = (lambda: mt.iota((C, BK), 0, opts.interpret)), (lambda: mt.iota((BK, C), 1, opts.interpret))
  # queries 32..63 × keys 0..31 through row 31
  q, G = _query_side(t, opts)
  t["qa_s"][...] = (q * jnp.exp(jnp.where(row() >= 32, G - mt.cols(gr(31, COLS), (C, BK)), ninf))).astype(dt)
  kT, Gt = _key_side(t, opts)
  t["ka_s"][...] = (kT * jnp.exp(jnp.where(colk() < 32, mt.rows(gr(31, ROWS), (BK, C)) - Gt, ninf))
                    ).astype(dt)
  plgpu.commit_smem()
  A = mt.mma(A, [(t["qa_s"], t["ka_s"])], opts.interpret)
  # queries 16..31 × keys 0..15 through row 15, queries 48..63 × keys 32..47 through row 47
  q, G = _query_side(t, opts)
  ref_q = jnp.where(row() < 32, mt.cols(gr(15, COLS), (C, BK)), mt.cols(gr(47, COLS), (C, BK)))
  t["qa_s"][...] = (q * jnp.exp(jnp.where(lax.rem(row(), 32) >= 16, G - ref_q, ninf))).astype(dt)
  kT, Gt = _key_side(t, opts)
  ref_k = jnp.where(colk() < 32, mt.rows(gr(15, ROWS), (BK, C)), mt.rows(gr(47, ROWS), (BK, C)))
  t["ka_s"][...] = (kT * jnp.exp(jnp.where(lax.rem(colk(), 32) < 16, ref_k - Gt, ninf))).astype(dt)
  plgpu.commit_smem()
  r, c = (lambda: mt.iota((C, C), 0, opts.interpret)), (lambda: mt.iota((C, C), 1, opts.interpret))
  A = A + jnp.where((r() >= 48) & (c() < 16), 0.0, mt.mm(t["qa_s"], t["ka_s"], (C, C)))
  # the diagonal 16×16 blocks, one sub-diagonal j at a time (rows t with t mod 16 ≥ j)
  plgpu.barrier_wait(t["k_bar"])

  def diagonal(j, A):
    q = mt.read(t["q_s"], WGMMA, opts.interpret).astype(F32)
    qk = q * mt.read(t["kr_s"].at[pl.ds(PAD - j, C)], WGMMA, opts.interpret, False).astype(F32)  # k_{t−j}
    G = mt.read(g_s.at[pl.ds(PAD, C)], WGMMA, opts.interpret, False)
    e = jnp.exp(G - mt.read(g_s.at[pl.ds(PAD - j, C)], WGMMA, opts.interpret, False))  # G_t − G_{t−j}
    d = jnp.sum(jnp.where(lax.rem(row(), SUB) >= j, qk * e, 0.0), axis=1)  # where: pad rows
    return A + jnp.where(c() == r() - j, mt.rows(d, (C, C)), 0.0)

  return lax.fori_loop(0, SUB, diagonal, A)


def fwd_kernel(*refs, opts: FwdOptions, q_s, kt_s, g_s, gt_s, v_s, vec_s, qi_s, qa_s, kd_s, ka_s, s_s,
               a_s, o_s, st_s, kr_s, bar, vbar, st_bar, k_bar):
  q_ref, kt_ref, g_ref, gt_ref, k_ref, v_ref, vec_ref, *rest = refs
  h0_ref = rest.pop(0) if opts.has_h0 else None
  o_ref, *rest = rest
  ht_ref = rest.pop(0) if opts.want_ht else None
  NK, BV, dt = opts.NK, opts.BV, jnp.dtype(opts.dtype)
  names = vec_rows(opts.has_seg)
  bh, vt = lax.axis_index("bh"), lax.axis_index("v")
  b, h = lax.div(bh, opts.H), lax.rem(bh, opts.H)
  cols = pl.ds(vt * BV, BV)
  S0 = []
  for kt in range(NK):
    if opts.has_h0:
      plgpu.copy_gmem_to_smem(h0_ref.at[b, h, pl.ds(kt * BK, BK), cols], st_s, st_bar)
      plgpu.barrier_wait(st_bar)
      S0.append(mt.read(st_s, WGMMA, opts.interpret))
      plgpu.commit_smem()
    else:
      S0.append(mt.zeros((BK, BV), opts.interpret))

  def issue(n, kt, slot):  # TMA of step (chunk n, K tile kt)'s tiles into buffer `slot`
    rows, kc = pl.ds(n * C, C), pl.ds(kt * BK, BK)
    plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h, kc], q_s.at[slot], bar.at[slot])
    plgpu.copy_gmem_to_smem(kt_ref.at[b, h, kc, rows], kt_s.at[slot], bar.at[slot])
    plgpu.copy_gmem_to_smem(g_ref.at[b, rows, h, kc], g_s.at[slot, pl.ds(PAD, C)], bar.at[slot])
    plgpu.copy_gmem_to_smem(gt_ref.at[b, h, kc, rows], gt_s.at[slot], bar.at[slot])

  def issue_chunk(n, slot):  # TMA of chunk n's v tile and gate rows
    rows = pl.ds(n * C, C)
    plgpu.copy_gmem_to_smem(v_ref.at[b, rows, h, cols], v_s.at[slot], vbar.at[slot])
    plgpu.copy_gmem_to_smem(vec_ref.at[b, h, :, rows], vec_s.at[slot], vbar.at[slot])

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
    plgpu.barrier_wait(vbar.at[cslot])
    if double:
      @pl.when(n + 1 < opts.N)
      def _prefetch_chunk():
        plgpu.commit_smem()
        issue_chunk(n + 1, 1 - cslot)

    v, vec = v_s.at[cslot], vec_s.at[cslot]
    dense = vec[names.index("dense"), 0] > 0.5
    if opts.has_seg:
      cin = mt.read(vec.at[names.index("cin")], ROWS, opts.interpret)  # broadcast where used: 1-D while live
      tail = mt.read(vec.at[names.index("tail")], COLS, opts.interpret)
      carry = vec[names.index("carry"), 0]
    qS = mt.zeros((C, BV), opts.interpret)
    A = mt.zeros((C, C), opts.interpret)
    for kt in range(NK):
      slot = lax.rem(n * NK + kt, 2) if double else 0
      if not double:
        issue(n, kt, 0)
      plgpu.barrier_wait(bar.at[slot])
      if double:  # the next step's tiles load while this one computes (their buffer is free)
        if kt + 1 < NK:
          plgpu.commit_smem()
          issue(n, kt + 1, 1 - slot)
        else:
          @pl.when(n + 1 < opts.N)
          def _prefetch():
            plgpu.commit_smem()
            issue(n + 1, 0, 1 - slot)

      tiles = dict(q_s=q_s.at[slot], kt_s=kt_s.at[slot], g=g_s.at[slot], gt_s=gt_s.at[slot],
                   qa_s=qa_s, ka_s=ka_s, kr_s=kr_s, k_bar=k_bar,
                   k_src=k_ref.at[b, rows, h, pl.ds(kt * BK, BK)])
      # the query side, then the key side: beside S and the o / A accumulators only one side's two
      # [64, 64] float32 tiles are live (the dense form's operands are formed from the same registers)
      q, G = _query_side(tiles, opts)
      qe = q * jnp.exp(G)
      qi_s[...] = (qe * mt.rows(cin, (C, BK)) if opts.has_seg else qe).astype(dt)
      pl.when(dense)(functools.partial(_dense_query, tiles, q, G, opts))
      kT, Gt = _key_side(tiles, opts)
      gam_r = mt.read(tiles["g"].at[PAD + C - 1], ROWS, opts.interpret)  # Γ, one value per row of [BK, ·] tiles
      ke = kT * jnp.exp(mt.rows(gam_r, (BK, C)) - Gt)
      kd_s[...] = (ke * mt.cols(tail, (BK, C)) if opts.has_seg else ke).astype(dt)
      pl.when(dense)(functools.partial(_dense_key, tiles, kT, Gt, opts))
      s_s[...] = S[kt].astype(dt)
      plgpu.commit_smem()
      qS = mt.mma(qS, [(qi_s, s_s)], opts.interpret)
      decay = mt.rows(jnp.exp(gam_r), (BK, BV))
      S[kt] = mt.mma(S[kt] * (decay * carry if opts.has_seg else decay), [(kd_s, v)], opts.interpret)
      A = lax.cond(dense, lambda A: mt.mma(A, [(qa_s, ka_s)], opts.interpret),
                   functools.partial(_exact_scores, tiles, opts), A)

    r, c = mt.iota((C, C), 0, opts.interpret), mt.iota((C, C), 1, opts.interpret)
    live = r >= c
    if opts.has_seg:
      doc = vec.at[names.index("doc")]
      live = live & (mt.rows(mt.read(doc, ROWS, opts.interpret), (C, C)) == mt.cols(mt.read(doc, COLS, opts.interpret), (C, C)))
    a_s[...] = (jnp.where(live, A, 0.0) * opts.scale).astype(dt)
    plgpu.commit_smem()
    o = mt.mma(qS * opts.scale, [(a_s, v)], opts.interpret)
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous chunk's o has left o_s
    o_s[...] = o.astype(o_s.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_s, o_ref.at[b, rows, h, cols])
    return tuple(S)

  S = lax.fori_loop(0, opts.N, chunk, tuple(S0))
  if opts.want_ht:
    for kt in range(NK):
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)
      st_s[...] = S[kt]
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(st_s, ht_ref.at[b, h, pl.ds(kt * BK, BK), cols])
  plgpu.wait_smem_to_gmem(0)


def chunk_fwd(q, kt, g, gt, k, v, vec, h0, opts: FwdOptions):
  """q, k [B, Tp, H, Kp], kt [B, H, Kp, Tp] (k transposed), v [B, Tp, H, Vp] (one 16-bit dtype;
  float32 in interpret mode), g [B, Tp, H, Kp] f32 (the chunk-local gate cumsum G) and gt its transpose
  [B, H, Kp, Tp], vec [B, H, R, Tp] f32 (`vec_rows`), h0 [B, H, Kp, Vp] f32 or None →
  o [B, Tp, H, Vp] (v.dtype; float32 with `opts.f32_out`) and, with `opts.want_ht`, the final state [B, H, Kp, Vp] f32 (else None)."""
  B, T, H, K, V, BV = opts.B, opts.T, opts.H, opts.K, opts.V, opts.BV
  dt = jnp.dtype(opts.dtype)
  out_type = [compat.pallas_out_struct((B, T, H, V), opts.o_dtype, q)]
  if opts.want_ht:
    out_type.append(compat.pallas_out_struct((B, H, K, V), F32, q))
  nb = opts.buffers
  scratch = dict(
      q_s=mt.smem((nb, C, BK), dt), kt_s=mt.smem((nb, BK, C), dt), g_s=plgpu.SMEM((nb, PAD + C, BK), F32),
      gt_s=mt.smem((nb, BK, C), F32), v_s=mt.smem((nb, C, BV), dt), vec_s=plgpu.SMEM((nb, opts.R, C), F32),
      qi_s=mt.smem((C, BK), dt), qa_s=mt.smem((C, BK), dt), kd_s=mt.smem((BK, C), dt),
      ka_s=mt.smem((BK, C), dt), s_s=mt.smem((BK, BV), dt), a_s=mt.smem((C, C), dt),
      o_s=mt.smem((C, BV), opts.o_dtype), st_s=mt.smem((BK, BV), F32), kr_s=plgpu.SMEM((PAD + C, BK), dt),
      bar=plgpu.Barrier(num_arrivals=4, num_barriers=nb),
      vbar=plgpu.Barrier(num_arrivals=2, num_barriers=nb), st_bar=plgpu.Barrier(),
      k_bar=plgpu.Barrier())
  run = plgpu.kernel(functools.partial(fwd_kernel, opts=opts), out_type=out_type,
                     scratch_types=scratch, grid=(B * H, V // BV), grid_names=("bh", "v"),
                     compiler_params=mt.compiler_params(), kernel_name="gla_mosaic_fwd",
                     interpret=compat.gpu_interpret_params() if opts.interpret else None)
  args = [q, kt, g, gt, k, v, vec] + ([h0] if opts.has_h0 else [])
  outs = run(*args)
  outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
  return outs[0], (outs[1] if opts.want_ht else None)
