"""Plain-jnp statement of fla 0.6.0's `MultiScaleRetention` (layers/multiscale_retention.py) as built
by its `RetNetBlock`, reading fla names / torch layouts from a state dict. No gla_jax layer is used.

    q, k, v = x W_qᵀ, x W_kᵀ, x W_vᵀ  (short conv + SiLU only in `retention(use_short_conv=True)`:
                                      fla's RetNetBlock never passes use_short_conv to the layer)
    q, k = ACT2FN[feature_map](q, k); RoPE (NeoX halves, dim K, base 10000, positions per document)
    o = chunk_retention(q, k, v): S_t = γ_h S_{t−1} + k_tᵀ v_t, o_t = K^-½ q_t S_t, γ_h = 1 − 2^(−5−h)
    o = RMSNorm(o)·w·swish(x W_gᵀ) per head, y = o W_oᵀ
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels.simple_gla import naive_recurrent_simple_gla
from tests.gla_jax.fla_reference import FEATURE_MAPS, _doc, _rope, causal_conv_silu, linear, rms_norm


def positions(segment_ids, T):
  """[B or 1, T]: token positions, restarting at every document start (fla's varlen RoPE)."""
  t = jnp.arange(T)
  if segment_ids is None:
    return t[None]
  doc = _doc(segment_ids)
  first = jnp.argmax(doc[:, None, :] == doc[:, :, None], axis=-1)
  return t[None] - first


def retention(x, sd, p, *, num_heads, num_kv_heads=None, expand_k=1.0, expand_v=2.0, feature_map=None,
              use_short_conv=False, use_output_gate=True, gate_fn="swish", norm_eps=1e-5, fuse_norm=True,
              segment_ids=None):
  B, T, D = x.shape
  H = num_heads
  Hkv = num_kv_heads or H
  K, V = round(D * expand_k) // H, round(D * expand_v) // H
  q, k, v = (linear(x, sd[p + n + "_proj.weight"]) for n in "qkv")
  if use_short_conv:
    doc = _doc(segment_ids)
    q, k, v = (causal_conv_silu(t, sd[p + n + "_conv1d.weight"], sd.get(p + n + "_conv1d.bias"), doc)
               for t, n in zip((q, k, v), "qkv"))
  q, k = q.reshape(B, T, H, K), k.reshape(B, T, Hkv, K)
  fm = FEATURE_MAPS[feature_map]
  if fm is not None:
    q, k = fm(q), fm(k)
  pos = positions(segment_ids, T)
  q, k = _rope(q, pos, 10000.0), _rope(k, pos, 10000.0)
  k = jnp.repeat(k, H // Hkv, axis=2)
  v = jnp.repeat(v.reshape(B, T, Hkv, V), H // Hkv, axis=2)
  # the decay, written out per head (fla: (1 - 2.0 ** (-5.0 - arange(H))).log())
  g = jnp.asarray([math.log(1.0 - 2.0 ** (-5.0 - h)) for h in range(H)], jnp.float32)
  o, _ = naive_recurrent_simple_gla(q, k, v, jnp.broadcast_to(g, (B, T, H)), segment_ids=segment_ids)
  if use_output_gate:
    g = linear(x, sd[p + "g_proj.weight"]).reshape(B, T, H, V)
    name = "g_norm_swish_gate" if (gate_fn == "swish" and fuse_norm) else "g_norm"
    gate = g * jax.nn.sigmoid(g) if gate_fn in ("swish", "silu") else jax.nn.sigmoid(g)
    o = rms_norm(o, sd.get(p + name + ".weight"), norm_eps) * gate
  else:
    o = rms_norm(o, sd.get(p + "g_norm.weight"), norm_eps)
  return linear(o.reshape(B, T, H * V), sd[p + "o_proj.weight"])


def mixer(x, sd, p, cfg, segment_ids, layer_idx):
  """fla's RetNetBlock's layer: the config's settings, no short conv."""
  del layer_idx
  return retention(x, sd, p, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, expand_k=cfg.expand_k,
                   expand_v=cfg.expand_v, feature_map=cfg.feature_map, use_short_conv=False,
                   use_output_gate=cfg.use_output_gate, gate_fn=cfg.hidden_act, norm_eps=cfg.norm_eps,
                   fuse_norm=cfg.fuse_norm, segment_ids=segment_ids)
