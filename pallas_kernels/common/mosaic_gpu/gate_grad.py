"""The gate's gradient of the Mosaic GPU backwards (simple GLA's scalar gate, GLA's per-key gate) from their
strict dq and dk passes, formed in XLA (pallas_kernels/*/mosaic_gpu/ops.py explain the passes)."""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.common.segments import doc_index

F32 = jnp.float32


def gate_grad(s: float, q, k, v, gt, do, h0, dht, seg, dq, dk):
  """dg of the (floored) log gate gt — [B, T, H, K] per key dim, or [B, T, H, 1] shared by every key
  (then dg is [B, T, H, 1], summed over K) — from the strict passes' dq' and dk' (float32, without each
  token's own pair, dk' without the final state's cotangent); → (dg, dq, dk), dq and dk completed. Per
  key dim d, every term a sum of pair contributions, none O(1) where the result is small:

    dg_r = Σ_{t≥r} q_t ⊙ dq'_t − Σ_{s≥r} k_s ⊙ dk'_s        pairs (t, s), s < r ≤ t, h0's pairs included
         + Σ_{s<r} k_s ⊙ e_s + [h0 reaches ht] e^{Σ g} ⊙ Σ_v h0 ⊙ dht    the final state's pairs:
    e_s = [s in the last document] e^{Σ_{s<r<T} g_r} ⊙ (dht v_s)  (dk's part from dht; the last token's
    own pair with the final state spans no r, and enters no sum).
  """
  per_key = (lambda x: x) if gt.shape[-1] > 1 else (lambda x: jnp.sum(x, axis=-1, keepdims=True))
  qf, kf, vf = q.astype(F32), k.astype(F32), v.astype(F32)
  revcumsum = lambda x: jnp.flip(jnp.cumsum(jnp.flip(x, 1), axis=1), 1)
  dg = revcumsum(per_key(qf * dq) - per_key(kf * dk))
  own = s * jnp.sum(do.astype(F32) * vf, axis=-1)[..., None]  # s·(do_t·v_t): each token's own pair
  dq = dq + own * kf
  dk = dk + own * qf
  if dht is not None:
    after = revcumsum(jnp.concatenate([gt[:, 1:], jnp.zeros_like(gt[:, :1])], axis=1))  # Σ_{s<r<T} g_r
    weight = jnp.exp(after)
    docs = None if seg is None else doc_index(seg)
    if docs is not None:
      weight = jnp.where((docs == docs[:, -1:])[..., None, None], weight, 0.0)
    if v.dtype == F32:  # interpret mode's float32 inputs: an exact product
      vd = jnp.einsum("bthv,bhkv->bthk", vf, dht, precision="highest")
    else:  # 16-bit inputs: one tensor-core matmul, float32 accumulation (the passes' own precision)
      vd = jnp.einsum("bthv,bhkv->bthk", v, dht.astype(v.dtype), preferred_element_type=F32)
    e = weight * vd
    dk = dk + e
    seen = jnp.cumsum(per_key(kf * e), axis=1)
    dg = dg + jnp.concatenate([jnp.zeros_like(seen[:, :1]), seen[:, :-1]], axis=1)  # Σ_{s<r}
    if h0 is not None:
      through = jnp.exp(jnp.sum(gt, axis=1))  # [B, H, K or 1]: h0 reaches ht only if no document starts
      if docs is not None:
        through = jnp.where((docs[:, -1:] == 0)[..., None], through, 0.0)
      dg = dg + (through * per_key(jnp.sum(h0.astype(F32) * dht, axis=3)))[:, None]
  return dg, dq, dk
