"""Reference forms of the simple-GLA op: the specification and two independent re-derivations of it.

All three compute, in float32 (docs/ops.md),

    S_t = exp(g_t,h) · S_{t-1} + k_tᵀ v_t        (inclusive: update, then read; g_t,h a scalar)
    o_t = scale · q_t · S_t

with g [B, T, H] per token and head, or g_t,h = g_gamma_h for every t (g_gamma [H], a constant of the
op: `stop_gradient`, no gradient flows to it, as in fla), or no decay at all (neither given). S restarts
at zero at every document start of `segment_ids`, and `initial_state` is S_{-1} of each row's first
document. They return `(o, final_state)` with `o` [B, T, H, V] float32 and `final_state` [B, H, K, V]
float32 (or None). A gate of −inf is legal (exp = 0). No performance code lives here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import check_simple_gla_inputs, default_scale
from pallas_kernels.common.segments import doc_index, segment_starts

_f32 = jnp.float32


def _prepare(q, k, v, g, g_gamma, scale, initial_state, segment_ids):
  """The checked call, its scale, float32 q, k, v, the per-token log decay [B, T, H] and h0."""
  info = check_simple_gla_inputs(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                                 segment_ids=segment_ids)
  scale = default_scale(scale, info.K)
  q, k, v = (x.astype(_f32) for x in (q, k, v))
  shape = (info.B, info.T, info.H)
  if info.gate == "scalar":
    g = g.astype(_f32)
  elif info.gate == "constant":
    g = jnp.broadcast_to(jax.lax.stop_gradient(g_gamma).astype(_f32), shape)
  else:
    g = jnp.zeros(shape, _f32)  # e^0 = 1: no decay
  h0 = (jnp.zeros((info.B, info.H, info.K, info.V), _f32) if initial_state is None
        else initial_state.astype(_f32))
  return info, scale, q, k, v, g, h0


def naive_recurrent_simple_gla(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                               output_final_state=False, segment_ids=None):
  """The specification: a `lax.scan` over time in float32.

  Args:
    q, k: [B, T, H, K]; v: [B, T, H, V].
    g: [B, T, H] log decay per token and head (≤ 0), or None.
    g_gamma: [H] constant log decay per head, or None (at most one of g, g_gamma; neither: no decay).
    scale: multiplies q·S; defaults to K ** -0.5.
    initial_state: [B, H, K, V], the state before t = 0.
    output_final_state: also return S_{T-1}.
    segment_ids: [B, T] int; the state restarts at every change of id.

  Returns:
    (o [B, T, H, V] float32, final_state [B, H, K, V] float32 or None).

  Example:
    >>> q = k = jnp.zeros((1, 8, 2, 16)); v = jnp.ones((1, 8, 2, 32)); g = jnp.full((1, 8, 2), -0.1)
    >>> o, _ = naive_recurrent_simple_gla(q, k, v, g)
  """
  info, scale, q, k, v, g, h0 = _prepare(q, k, v, g, g_gamma, scale, initial_state, segment_ids)
  starts = (jnp.zeros((info.B, info.T), bool) if segment_ids is None else segment_starts(segment_ids))

  def step(h, xs):  # h: [B, H, K, V]
    q_t, k_t, v_t, g_t, start_t = xs
    decay = jnp.where(start_t[:, None], 0.0, jnp.exp(g_t))  # [B, H]
    h = decay[..., None, None] * h + k_t[..., :, None] * v_t[..., None, :]
    o_t = scale * jnp.einsum("bhk,bhkv->bhv", q_t, h, precision="highest")
    return h, o_t

  tm = lambda x: jnp.moveaxis(x, 1, 0)
  h, o = jax.lax.scan(step, h0, (tm(q), tm(k), tm(v), tm(g), tm(starts)))
  return jnp.moveaxis(o, 0, 1), (h if output_final_state else None)


def naive_associative_simple_gla(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                                 output_final_state=False, segment_ids=None):
  """The parallel-scan form: `lax.associative_scan` over (a_t, k_tᵀ v_t) pairs, a_t = e^{g_t} scalar.

  (a_l, b_l) ∘ (a_r, b_r) = (a_l·a_r, a_r·b_l + b_r); a document start sets a_t = 0, which restarts the
  state there. Materialises every state (T·K·V per head): an oracle for small shapes. Same arguments
  and returns as `naive_recurrent_simple_gla`.
  """
  info, scale, q, k, v, g, h0 = _prepare(q, k, v, g, g_gamma, scale, initial_state, segment_ids)
  a = jnp.exp(g)  # [B, T, H]
  if segment_ids is not None:
    a = jnp.where(segment_starts(segment_ids)[:, :, None], 0.0, a)
  b = k[..., :, None] * v[..., None, :]  # [B, T, H, K, V]
  b = b.at[:, 0].add(a[:, 0, :, None, None] * h0)  # fold S_{-1} into the first element

  def combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r[..., None, None] * b_l + b_r

  _, states = jax.lax.associative_scan(combine, (a, b), axis=1)
  o = scale * jnp.einsum("bthk,bthkv->bthv", q, states, precision="highest")
  return o, (states[:, -1] if output_final_state else None)


def naive_parallel_simple_gla(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                              output_final_state=False, segment_ids=None):
  """The masked T×T form (small T only: it holds [T, T] decays per head).

  o_t = scale · Σ_{s ≤ t, same document} (q_t·k_s) e^{D_ts} v_s  +  scale · e^{G_t} q_t S_{-1}
  with D_ts = Σ_{s<r≤t} g_r summed directly per (s, t) (not G_t − G_s: no cancellation, no −inf − −inf)
  and G_t = Σ_{r≤t} g_r (first document only). Same arguments and returns as `naive_recurrent_simple_gla`.
  """
  info, scale, q, k, v, g, h0 = _prepare(q, k, v, g, g_gamma, scale, initial_state, segment_ids)
  T = info.T
  doc = (jnp.zeros((info.B, T), jnp.int32) if segment_ids is None else doc_index(segment_ids))
  t_idx = jnp.arange(T)
  after = t_idx[None, :] > t_idx[:, None]  # [s, r]: r > s
  D = jnp.cumsum(jnp.where(after[None, :, :, None], g[:, None], 0.0), axis=2)  # [B, s, t, H]
  visible = (t_idx[None, :] >= t_idx[:, None])[None] & (doc[:, :, None] == doc[:, None, :])  # [B, s, t]
  decay = jnp.exp(jnp.where(visible[..., None], D, -jnp.inf))  # [B, s, t, H]
  A = scale * jnp.einsum("bthk,bshk->bhts", q, k, precision="highest")
  A = A * jnp.transpose(decay, (0, 3, 2, 1))  # [B, H, t, s]
  o = jnp.einsum("bhts,bshv->bthv", A, v, precision="highest")
  G = jnp.cumsum(g, axis=1)  # [B, T, H]
  first_doc = (doc == 0)[:, :, None]
  q_decay = jnp.where(first_doc, jnp.exp(G), 0.0)  # [B, T, H]
  o = o + scale * jnp.einsum("bthk,bhkv->bthv", q * q_decay[..., None], h0, precision="highest")
  if not output_final_state:
    return o, None
  last_doc = doc[:, -1:]  # [B, 1]
  k_weight = jnp.where((doc == last_doc)[:, :, None], decay[:, :, -1], 0.0)  # [B, s, H]
  ht = jnp.einsum("bshk,bshv->bhkv", k * k_weight[..., None], v, precision="highest")
  carry_h0 = (last_doc[:, 0] == 0)[:, None, None, None]
  ht = ht + jnp.where(carry_h0, jnp.exp(G[:, -1])[..., None, None] * h0, 0.0)
  return o, ht
