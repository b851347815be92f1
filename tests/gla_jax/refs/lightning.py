"""Plain-jnp statement of our Lightning-attention layer (fla has none; gla_jax/layers/mixers/lightning.py
documents the design), reading fla-style names / torch layouts from a state dict. The decay is written
out independently from fla's `chunk_lightning_attn`: g_gamma = −(8 / H · (1 − l / L)) · arange(H).

    q, k, v = conv?(x W_qᵀ, …) (SiLU conv);  q, k = φ(q), φ(k) (SiLU by default)
    S_t = exp(γ_h) S_{t−1} + k_tᵀ v_t;  o_t = K^-½ q_t S_t      (a lax.scan over time)
    y = (RMSNorm(o)·w·swish(x W_gᵀ) per head) W_oᵀ
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tests.gla_jax.fla_reference import FEATURE_MAPS, _doc, causal_conv_silu, linear, rms_norm

_HI = jax.lax.Precision.HIGHEST


def decay(H, layer_idx, num_layers):
  """The per-head log decay, one Python float per head."""
  return jnp.asarray([-(8.0 / H * (1.0 - layer_idx / num_layers)) * h for h in range(H)], jnp.float32)


def recurrence(q, k, v, gamma, doc):
  """o_t = K^-½ q_t S_t with S_t = exp(γ) S_{t−1} + k_tᵀ v_t, S reset at every document start (a scan)."""
  B, T, H, K = q.shape
  new_doc = (jnp.zeros((B, T), bool) if doc is None
             else jnp.pad(doc[:, 1:] != doc[:, :-1], ((0, 0), (1, 0))))

  def step(S, xs):
    q_t, k_t, v_t, start = xs
    keep = jnp.where(start[:, None, None, None], 0.0, jnp.exp(gamma)[None, :, None, None])
    S = keep * S + jnp.einsum("bhk,bhv->bhkv", k_t, v_t, precision=_HI)
    return S, jnp.einsum("bhk,bhkv->bhv", q_t, S, precision=_HI) * K ** -0.5

  tm = lambda a: jnp.moveaxis(a, 1, 0)
  S0 = jnp.zeros((B, H, K, v.shape[-1]), jnp.float32)
  _, o = jax.lax.scan(step, S0, (tm(q), tm(k), tm(v), tm(new_doc)))
  return jnp.moveaxis(o, 0, 1)


def mixer(x, sd, p, cfg, segment_ids, layer_idx):
  B, T, D = x.shape
  H = cfg.num_heads
  Hkv = cfg.num_kv_heads or H
  K, V = round(D * cfg.expand_k) // H, round(D * cfg.expand_v) // H
  doc = _doc(segment_ids)
  q, k, v = (linear(x, sd[p + n + "_proj.weight"]) for n in "qkv")
  if cfg.use_short_conv:
    q, k, v = (causal_conv_silu(t, sd[p + n + "_conv1d.weight"], sd.get(p + n + "_conv1d.bias"), doc)
               for t, n in zip((q, k, v), "qkv"))
  q, k, v = q.reshape(B, T, H, K), k.reshape(B, T, Hkv, K), v.reshape(B, T, Hkv, V)
  fm = FEATURE_MAPS[cfg.feature_map]
  if fm is not None:
    q, k = fm(q), fm(k)
  k, v = jnp.repeat(k, H // Hkv, axis=2), jnp.repeat(v, H // Hkv, axis=2)
  o = recurrence(q, k, v, decay(H, layer_idx, cfg.num_hidden_layers), doc)
  if cfg.use_output_gate:
    g = linear(x, sd[p + "g_proj.weight"]).reshape(B, T, H, V)
    name = "g_norm_swish_gate" if (cfg.hidden_act == "swish" and cfg.fuse_norm) else "g_norm"
    o = rms_norm(o, sd.get(p + name + ".weight"), cfg.norm_eps) * g * jax.nn.sigmoid(g)
  else:
    o = rms_norm(o, sd.get(p + "g_norm.weight"), cfg.norm_eps)
  return linear(o.reshape(B, T, H * V), sd[p + "o_proj.weight"])
