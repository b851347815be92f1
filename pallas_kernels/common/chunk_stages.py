"""The gate-shape-agnostic stages of the chunked jnp forms, shared by every op of the family.

Layout [B, H, N, C, *] (`common/chunking.py`). A gate is a log decay with a trailing axis that is K for
GLA's per-key gates ([B, H, N, C, K]) and 1 for a scalar decay per token and head (simple GLA, and
simple GLA's constant per-head decay once broadcast over tokens): every stage here broadcasts over
that axis, so the same code serves both, number for number. `gates=None` means no decay at all
(linear attention, simple GLA without g / g_gamma): the exponentials are skipped, not computed as e^0.
This plays the role of fla's one `chunk_fwd_h` with its USE_G / USE_G_GAMMA / USE_GK switches.

  stage 1 `chunk_local_cumsum`     prefix / suffix / total sums of the gate inside each chunk
  stage 2 `chunk_state_pass`       h entering every chunk, and the final state
  stage 4 `chunk_output`           o = (q ⊙ e^G) h + A v
  stage 5 `chunk_state_grad_pass`  dh leaving every chunk (reverse), and d initial_state

`opts` is the op's static options object; these stages read only its `compute_dtype` (the matmul
operand dtype; accumulation is always float32). A gate entry of −inf is legal (exp = 0): no stage
subtracts two cumsums or multiplies a gate by 0, so −inf gives exact zeros, never NaN.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pallas_kernels import compat
from pallas_kernels.common.chunking import DocMasks

_f32 = jnp.float32


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def dot(spec: str, a, b, opts):
  """Tensor-core style product: operands in `opts.compute_dtype`, float32 accumulation."""
  cdt = jnp.dtype(opts.compute_dtype)
  a, b = a.astype(cdt), b.astype(cdt)
  if cdt != _f32 and compat.backend_platform() == "cpu":
    # XLA:CPU has no bf16×bf16→f32 dot for every shape; products of bf16 numbers are exact in
    # float32, so upcasting the rounded operands computes the same thing
    a, b = a.astype(_f32), b.astype(_f32)
  precision = jax.lax.Precision.HIGHEST if a.dtype == _f32 else jax.lax.Precision.DEFAULT
  return jnp.einsum(spec, a, b, preferred_element_type=_f32, precision=precision)


def suffix_sum(x):
  """Exclusive suffix sum along axis −2: out_t = Σ_{r > t} x_r."""
  rev = jnp.flip(jnp.cumsum(jnp.flip(x[..., 1:, :], -2), axis=-2), -2)
  return jnp.concatenate([rev, jnp.zeros_like(x[..., :1, :])], axis=-2)


def masked(mask, x):
  """x where mask (None: everywhere), else 0."""
  return x if mask is None else jnp.where(mask, x, 0.0)


# ------------------------------------------------------------------------------------------------
# stage 1
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChunkGates:
  """Stage 1's log-space decays of each chunk, float32, all [B, H, N, C, D] (D = K or 1) unless noted.

  Every exponent the stages need is a *direct* sum of gates, never a difference of two cumsums: G_t − G_s
  computed from cumsums of magnitude |G| loses ε·|G| (≈ 1e-4 at g ≈ −20 over a chunk), which would
  swamp dg at strong decay, and −inf − (−inf) is NaN. (The kernels may take differences: they work at
  bf16 precision.)
  """

  g: jax.Array  # the gates themselves
  G: jax.Array  # Σ_{r ≤ t} g_r  (inclusive prefix: row t back to the chunk start)
  R: jax.Array  # Σ_{r > t} g_r  (exclusive suffix: row t to the chunk end) = Γ − G
  Gamma: jax.Array  # [B, H, N, 1, D] Σ_r g_r over the chunk


def chunk_local_cumsum(g) -> ChunkGates:
  """Stage 1. g: [B, H, N, C, D] → the chunk's prefix and suffix sums (float32)."""
  g = g.astype(_f32)
  G = jnp.cumsum(g, axis=-2)
  return ChunkGates(g=g, G=G, R=suffix_sum(g), Gamma=G[..., -1:, :])


# ------------------------------------------------------------------------------------------------
# stages 2, 4, 5
# ------------------------------------------------------------------------------------------------


def _carry_decay(gates: ChunkGates | None, masks: DocMasks):
  """e^Γ of each chunk where the state carries over it: [B, H, N, D, 1] (None: 1 everywhere)."""
  if gates is None:
    return None if masks.carry is None else masks.carry[..., 0, :, None].astype(_f32)
  return masked(masks.carry, jnp.exp(gates.Gamma))[..., 0, :, None]


def _scan_chunks(decay, x, init, reverse: bool = False):
  """carry_{n+1} = decay_n ⊙ carry_n + x_n over axis 2 (N); returns (all carries [B, H, N, K, V], last)."""
  def step(h, xs):
    decay_n, x_n = xs
    return (h + x_n if decay_n is None else decay_n * h + x_n), h

  move = lambda a: None if a is None else jnp.moveaxis(a, 2, 0)
  last, hs = jax.lax.scan(step, init, (move(decay), move(x)), reverse=reverse)
  return jnp.moveaxis(hs, 0, 2), last


def decayed_rows_in(x, gates: ChunkGates | None, masks: DocMasks):
  """x ⊙ e^G on the rows that read the incoming state (float32)."""
  x = x.astype(_f32)
  return masked(masks.row_in, x if gates is None else x * jnp.exp(gates.G))


def decayed_rows_out(x, gates: ChunkGates | None, masks: DocMasks):
  """x ⊙ e^{Γ−G} on the rows that feed the outgoing state (float32)."""
  x = x.astype(_f32)
  return masked(masks.row_out, x if gates is None else x * jnp.exp(gates.R))


def chunk_state_pass(k, v, gates: ChunkGates | None, h0, masks: DocMasks, opts):
  """Stage 2: the inter-chunk recurrence h_{n+1} = diag(e^{Γ_n}) h_n + (k ⊙ e^{Γ_n − G})ᵀ v.

  k: [B, H, N, C, K]; v: [B, H, N, C, V]; h0: [B, H, K, V] float32.
  Returns (h [B, H, N, K, V] entering each chunk, h_final [B, H, K, V]), float32.
  All exponents are ≤ 0. The chunk summaries are computed for all chunks at once; only the cheap
  K×V update is sequential.
  """
  update = dot("bhnck,bhncv->bhnkv", decayed_rows_out(k, gates, masks), v, opts)  # [B, H, N, K, V]
  return _scan_chunks(_carry_decay(gates, masks), update, h0)


def chunk_output(q_scaled, v, gates: ChunkGates | None, h, A, masks: DocMasks, opts):
  """Stage 4: o = (q ⊙ e^G) h + A v. A: [B, H, N, C, C]. Returns [B, H, N, C, V] float32."""
  o_inter = dot("bhnck,bhnkv->bhncv", decayed_rows_in(q_scaled, gates, masks), h, opts)
  o_intra = dot("bhncs,bhnsv->bhncv", A, v, opts)
  return o_inter + o_intra


def chunk_state_grad_pass(q_scaled, do, gates: ChunkGates | None, dht, masks: DocMasks, opts):
  """Stage 5: dh_{n} = diag(e^{Γ_n}) dh_{n+1} + (q ⊙ e^G)ᵀ do, in reverse over chunks.

  Returns (dh [B, H, N, K, V]: gradient w.r.t. the state *leaving* each chunk, dh0 [B, H, K, V]).
  """
  read = dot("bhnck,bhncv->bhnkv", decayed_rows_in(q_scaled, gates, masks), do, opts)  # [B, H, N, K, V]
  return _scan_chunks(_carry_decay(gates, masks), read, dht, reverse=True)
