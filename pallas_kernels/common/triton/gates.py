"""The decay of one chunk for every gate kind, inside a Pallas Triton kernel (docs/ops.md, gate kinds).

One recurrence S_t = D_t ⊙ S_{t−1} + k_tᵀ v_t, four gate kinds (a static switch, like fla's
USE_G / USE_G_GAMMA / USE_GK in its one `chunk_fwd_h`):

  kind        gate operand the kernels read                 G (chunk-local inclusive cumsum of the log decay)
  "vector"    g [B, T, H, K] (GLA)                          [R, W] per key column
  "scalar"    g [B, T, H] (simple GLA, Mamba-2)             [R], one per row
  "constant"  g_gamma as [H, 16] (RetNet, Lightning)        [R], (t + 1)·γ_h computed in the kernel
  "none"      nothing (linear attention)                    no exponentials at all

`Decay` gives the three factors every stage needs: queries decayed from the chunk start (q ⊙ e^G),
keys decayed to the chunk end (k ⊙ e^{Γ−G}), and the carried state decayed across the chunk (e^Γ ⊙ h).
Scalar entries below `G_FLOOR` (−inf is a legal gate) are raised to it: e^{−60} ≈ 1e-26 is zero at
float32 resolution against the terms it is added to, and G stays finite, so no exponent is ever
−inf − (−inf); the op zeroes the gradient of those entries (its true value is e^g·(…) ≈ 0).
The constant gate counts only the first `opts.t_valid` rows: rows padded past the sequence's end do not
decay the final state.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pallas_kernels.common.triton.tiles import C, F32, iota2, last_row, load, pl

GATE_KINDS = ("vector", "scalar", "constant", "none")
G_FLOOR = -60.0  # scalar / constant log decays are clamped from below to this (see the module doc)
GAMMA_LANES = 16  # g_gamma is passed as [H, GAMMA_LANES] (a Triton block needs ≥ 16 lanes)


@dataclasses.dataclass(frozen=True)
class Decay:
  """Decay of one block of rows (relative to its first row's predecessor). For "vector" G is [R, W] and
  gam [1, W]; for "scalar" / "constant" G is [R] and gam a scalar; for "none" both are None."""

  kind: str
  G: jax.Array | None
  gam: jax.Array | None
  n: jax.Array | None = None  # "constant": [R] int32 row counts (G = n·γ)
  gamma: jax.Array | None = None  # "constant": γ

  def _col(self):
    return self.G if self.kind == "vector" else self.G[:, None]

  def from_start(self, x):
    """x ⊙ e^{G} (rows of x decayed from the chunk start: queries reading the carried state)."""
    return x if self.kind == "none" else x * jnp.exp(self._col())

  def to_end(self, x):
    """x ⊙ e^{Γ − G} (rows of x decayed to the chunk end: keys feeding the next state)."""
    return x if self.kind == "none" else x * jnp.exp(self.gam - self._col())

  def state(self, h):
    """e^Γ ⊙ h for a [W, BV] state tile (per row of h for "vector")."""
    if self.kind == "none":
      return h
    if self.kind == "vector":
      W = self.gam.shape[1]
      return jnp.exp(self.gam.reshape(W))[:, None] * h
    return jnp.exp(self.gam) * h

  def gam_vec(self, W: int):
    """e^Γ as a [W] vector (the two-phase scan's per-chunk factor)."""
    if self.kind == "none":
      return jnp.ones((W,), F32)
    if self.kind == "vector":
      return jnp.exp(self.gam.reshape(W))
    return jnp.zeros((W,), F32) + jnp.exp(self.gam)

  def diff(self):
    """[R, R] G_t − G_s of a scalar-like decay (exact integer row difference for "constant")."""
    if self.kind == "constant":
      return (self.n[:, None] - self.n[None, :]).astype(F32) * self.gamma
    return self.G[:, None] - self.G[None, :]


def _vsum_last(x):
  R = x.shape[0]
  return jnp.sum(jnp.where(lax_iota(R) == R - 1, x, 0.0))


def lax_iota(R: int):
  return jax.lax.broadcasted_iota(jnp.int32, (R,), 0)


def gamma_of(g_ref):
  """γ of the head whose [GAMMA_LANES] row `g_ref` holds (raised to G_FLOOR)."""
  return jnp.maximum(jnp.max(g_ref[...].astype(F32)), G_FLOOR)


def chunk_decay(opts, g_ref, r0, t_abs, c0=0, W: int | None = None, R: int = C) -> Decay:
  """Decay of rows r0 .. r0 + R − 1 of `g_ref` (absolute rows t_abs ..; the constant gate needs
  them) for K columns c0 .. c0 + W − 1 ("vector" only)."""
  kind = opts.gate
  if kind == "none":
    return Decay(kind, None, None)
  if kind == "vector":
    G = jnp.cumsum(load(g_ref, r0, R, c0, W), axis=0)
    return Decay(kind, G, last_row(G))
  if kind == "scalar":
    g = jnp.maximum(g_ref[pl.ds(r0, R)].astype(F32), G_FLOOR)
    G = jnp.cumsum(g, axis=0)
    return Decay(kind, G, _vsum_last(G))
  if kind == "constant":
    gamma = gamma_of(g_ref)
    n = jnp.minimum(t_abs + lax_iota(R) + 1, opts.t_valid) - t_abs  # rows past the end do not decay
    n_last = jnp.minimum(t_abs + R, opts.t_valid) - t_abs
    return Decay(kind, n.astype(F32) * gamma, n_last.astype(F32) * gamma, n=n, gamma=gamma)
  raise ValueError(f"gate kind must be one of {GATE_KINDS}, got {kind!r}")


# ------------------------------------------------------------------------------------------------
# BlockSpecs of the gate operand
# ------------------------------------------------------------------------------------------------


def gate_seq_spec(opts, BK: int, kt_of):
  """The gate operand of a kernel that walks one (b, h)'s whole sequence (grid (..., b·H + h));
  `kt_of(grid ids)` is the K tile ("vector" only). None for "none"."""
  H, T = opts.H, opts.T
  if opts.gate == "vector":
    return pl.BlockSpec((None, T, None, BK),
                        lambda *ids: (ids[-1] // H, 0, ids[-1] % H, kt_of(*ids)))
  if opts.gate == "scalar":
    return pl.BlockSpec((None, T, None), lambda *ids: (ids[-1] // H, 0, ids[-1] % H))
  if opts.gate == "constant":
    return pl.BlockSpec((None, GAMMA_LANES), lambda *ids: (ids[-1] % H, 0))
  return None


def gate_chunk_spec(opts, BK: int, kt_of):
  """The gate operand of a chunk-parallel kernel, grid (..., n, b·H + h) (chunk n second to last);
  `kt_of(first grid id)` is the K tile ("vector" only). None for "none"."""
  H = opts.H
  if opts.gate == "vector":
    return pl.BlockSpec((None, C, None, BK),
                        lambda *ids: (ids[-1] // H, ids[-2], ids[-1] % H, kt_of(ids[0])))
  if opts.gate == "scalar":
    return pl.BlockSpec((None, C, None), lambda *ids: (ids[-1] // H, ids[-2], ids[-1] % H))
  if opts.gate == "constant":
    return pl.BlockSpec((None, GAMMA_LANES), lambda *ids: (ids[-1] % H, 0))
  return None


def gamma_operand(g_gamma):
  """g_gamma [H] → the [H, GAMMA_LANES] float32 operand the kernels read."""
  return jnp.broadcast_to(g_gamma.astype(F32)[:, None], (g_gamma.shape[0], GAMMA_LANES))
