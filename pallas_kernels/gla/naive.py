"""Reference forms of the GLA op: the specification and two independent re-derivations of it.

All three compute, in float32 (docs/ops.md),

    S_t = diag(exp g_t) · S_{t-1} + k_tᵀ v_t        (inclusive: update, then read)
    o_t = scale · q_t · S_t

with S restarting at zero at every document start of `segment_ids`, and `initial_state` as S_{-1} of
each row's first document. They return `(o, final_state)` with `o` [B, T, H, V] float32 and
`final_state` [B, H, K, V] float32 (or None). No performance code lives here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.checks import check_gla_inputs, default_scale
from pallas_kernels.common.segments import doc_index, segment_starts

_f32 = jnp.float32


def _prepare(q, k, v, g, scale, initial_state, segment_ids):
  info = check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state, segment_ids=segment_ids)
  scale = default_scale(scale, info.K)
  q, k, v, g = (x.astype(_f32) for x in (q, k, v, g))
  h0 = (jnp.zeros((info.B, info.H, info.K, info.V), _f32) if initial_state is None
        else initial_state.astype(_f32))
  return info, scale, q, k, v, g, h0


def naive_recurrent_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                        segment_ids=None):
  """The specification: a `lax.scan` over time in float32.

  Args:
    q, k, g: [B, T, H, K]; g is the log forget gate (≤ 0).
    v: [B, T, H, V].
    scale: multiplies q·S; defaults to K ** -0.5.
    initial_state: [B, H, K, V], the state before t = 0.
    output_final_state: also return S_{T-1}.
    segment_ids: [B, T] int; the state restarts at every change of id.

  Returns:
    (o [B, T, H, V] float32, final_state [B, H, K, V] float32 or None).

  Example:
    >>> q = k = g = jnp.zeros((1, 8, 2, 16)); v = jnp.ones((1, 8, 2, 32))
    >>> o, _ = naive_recurrent_gla(q, k, v, g)
  """
  info, scale, q, k, v, g, h0 = _prepare(q, k, v, g, scale, initial_state, segment_ids)
  starts = (jnp.zeros((info.B, info.T), bool) if segment_ids is None else segment_starts(segment_ids))

  def step(h, xs):  # h: [B, H, K, V]
    q_t, k_t, v_t, g_t, start_t = xs
    decay = jnp.where(start_t[:, None, None], 0.0, jnp.exp(g_t))  # [B, H, K]
    h = decay[..., None] * h + k_t[..., :, None] * v_t[..., None, :]
    o_t = scale * jnp.einsum("bhk,bhkv->bhv", q_t, h, precision="highest")
    return h, o_t

  time_major = lambda x: jnp.moveaxis(x, 1, 0)
  h, o = jax.lax.scan(step, h0, (time_major(q), time_major(k), time_major(v), time_major(g),
                                 time_major(starts)))
  return jnp.moveaxis(o, 0, 1), (h if output_final_state else None)


def naive_associative_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                          segment_ids=None):
  """The parallel-scan form: `lax.associative_scan` over (a_t, k_tᵀ v_t) pairs.

  S_t = a_t ⊙ S_{t-1} + b_t is a first-order linear recurrence, so pairs compose associatively with
  (a_l, b_l) ∘ (a_r, b_r) = (a_l·a_r, a_r ⊙ b_l + b_r). A document start sets a_t = 0. Materialises
  every state (T·K·V per head): an oracle for small shapes. Same arguments and returns as
  `naive_recurrent_gla`.
  """
  info, scale, q, k, v, g, h0 = _prepare(q, k, v, g, scale, initial_state, segment_ids)
  a = jnp.exp(g)  # [B, T, H, K]
  if segment_ids is not None:
    a = jnp.where(segment_starts(segment_ids)[:, :, None, None], 0.0, a)
  b = k[..., :, None] * v[..., None, :]  # [B, T, H, K, V]
  b = b.at[:, 0].add(a[:, 0, ..., None] * h0)  # fold S_{-1} into the first element

  def combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r[..., None] * b_l + b_r

  _, states = jax.lax.associative_scan(combine, (a, b), axis=1)
  o = scale * jnp.einsum("bthk,bthkv->bthv", q, states, precision="highest")
  return o, (states[:, -1] if output_final_state else None)


def naive_parallel_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                       segment_ids=None):
  """The masked T×T form with log-space decays (small T only: it holds a [T, T, K] tensor per head).

  o_t = scale · Σ_{s ≤ t, same document} Σ_d q_td k_sd exp(D_tsd) v_s  +  scale · (q_t ⊙ e^{G_t}) S_{-1}
  with D_tsd = Σ_{s<r≤t} g_rd summed directly per (s, t) (not as G_t − G_s, whose cancellation would cost
  float32 digits for long sequences), and G_t = Σ_{r≤t} g_r. Same arguments and returns as
  `naive_recurrent_gla`.
  """
  info, scale, q, k, v, g, h0 = _prepare(q, k, v, g, scale, initial_state, segment_ids)
  T = info.T
  doc = (jnp.zeros((info.B, T), jnp.int32) if segment_ids is None else doc_index(segment_ids))
  t_idx = jnp.arange(T)
  after = t_idx[None, :] > t_idx[:, None]  # [s, t]: r = t lies in (s, ...]
  # D[b, s, t, h, k] = Σ_{s < r ≤ t} g[b, r, h, k]
  D = jnp.cumsum(jnp.where(after[None, :, :, None, None], g[:, None], 0.0), axis=2)
  visible = (t_idx[None, :] >= t_idx[:, None])[None] & (doc[:, :, None] == doc[:, None, :])  # [b, s, t]
  decay = jnp.exp(jnp.where(visible[..., None, None], D, -jnp.inf))  # [B, s, t, H, K]
  A = scale * jnp.einsum("bthk,bshk,bsthk->bhts", q, k, decay, precision="highest")
  o = jnp.einsum("bhts,bshv->bthv", A, v, precision="highest")
  G = jnp.cumsum(g, axis=1)  # [B, T, H, K]
  first_doc = (doc == 0)[:, :, None, None]
  q_h0 = jnp.where(first_doc, q * jnp.exp(G), 0.0)
  o = o + scale * jnp.einsum("bthk,bhkv->bthv", q_h0, h0, precision="highest")
  if not output_final_state:
    return o, None
  last_doc = doc[:, -1:]  # [B, 1]
  k_last = jnp.where((doc == last_doc)[:, :, None, None], k * decay[:, :, -1], 0.0)  # [B, s, H, K]
  ht = jnp.einsum("bshk,bshv->bhkv", k_last, v, precision="highest")
  carry_h0 = (last_doc[:, 0] == 0)[:, None, None, None]
  ht = ht + jnp.where(carry_h0, jnp.exp(G[:, -1])[..., None] * h0, 0.0)
  return o, ht
