"""fla 0.6.0's `BasedLinearAttention` (fla/layers/based.py) in plain jnp, from fla's source.

fla's default mode "parallel" (`parallel_based`, the reference `naive_parallel_based`): with
σ_ts = q_t·k_s / √F,

    a_ts = 1 + σ_ts + σ_ts²/2   (s ≤ t, same document; 0 otherwise)
    o_t  = Σ_s a_ts v_s / (Σ_s a_ts + eps),   y = o W_o

eps is 1e-6 in "parallel", 1e-10 in "chunk" (Taylor map + chunk_linear_attn(scale=1, normalize=True));
`mixer` uses the chunk mode's 1e-10 (what gla_jax computes), `mixer_parallel_eps` fla's default 1e-6.
No Taylor feature map here: the quadratic form checks the map's expansion independently.
"""

from __future__ import annotations

import jax.numpy as jnp

from tests.gla_jax.fla_reference import _HI, _doc, linear


def based_attention(x, sd, p, cfg, segment_ids=None, eps=1e-10):
  B, T, D = x.shape
  H, F = cfg.num_heads, cfg.feature_dim
  Dv = D // H
  q = linear(x, sd[p + "q_proj.weight"]).reshape(B, T, H, F)
  k = linear(x, sd[p + "k_proj.weight"]).reshape(B, T, H, F)
  v = linear(x, sd[p + "v_proj.weight"]).reshape(B, T, H, Dv)
  s = jnp.einsum("bthf,bshf->bhts", q * F ** -0.5, k, precision=_HI)
  a = 1.0 + s + 0.5 * s * s
  allowed = (jnp.arange(T)[None, :] <= jnp.arange(T)[:, None])[None, None]
  if segment_ids is not None:
    doc = _doc(segment_ids)
    allowed = allowed & (doc[:, None, :, None] == doc[:, None, None, :])
  a = jnp.where(allowed, a, 0.0)
  o = jnp.einsum("bhts,bshv->bthv", a, v, precision=_HI)
  o = o / (jnp.sum(a, axis=-1).transpose(0, 2, 1)[..., None] + eps)
  return linear(o.reshape(B, T, H * Dv), sd[p + "o_proj.weight"])


def mixer(x, sd, p, cfg, segment_ids=None, layer_idx=0):
  del layer_idx
  return based_attention(x, sd, p, cfg, segment_ids, eps=1e-10)


def mixer_parallel_eps(x, sd, p, cfg, segment_ids=None, layer_idx=0):
  del layer_idx
  return based_attention(x, sd, p, cfg, segment_ids, eps=1e-6)
