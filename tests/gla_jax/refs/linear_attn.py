"""fla 0.6.0's `LinearAttention` layer (fla/layers/linear_attn.py) in plain jnp, from fla's source.

Reads fla names and torch layouts from a state dict; shares no code with gla_jax's layers. The
attention is the explicit T×T masked sum (no recurrence, no chunking), fla's `chunk_linear_attn`:

    o_t = Σ_{s≤t, same doc} (scale q_t·k_s) v_s,   normalize: o_t / (Σ_{s≤t, same doc} scale q_t·k_s + 1e-10)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tests.gla_jax.fla_reference import _HI, _doc, linear, rms_norm


def fla_feature_map(name, x, sd, p):
  """fla.modules.feature_map / LinearAttention's maps on x [..., d]; `p` the module's name prefix."""
  if name == "identity":
    return x
  if name == "elu":  # elu_p1
    return jax.nn.elu(x) + 1.0
  if name == "relu":
    return jax.nn.relu(x)
  if name == "hedgehog":  # Linear(d, d) with bias; softmax over cat([2y, -2y])
    y = 2.0 * linear(x, sd[p + "layer.weight"], sd[p + "layer.bias"])
    return jax.nn.softmax(jnp.concatenate([y, -y], axis=-1), axis=-1)
  if name == "t2r":  # Linear(d, d, bias=False), relu
    return jax.nn.relu(linear(x, sd[p + "layer.weight"]))
  if name == "elementwise_product":  # HadamardFeatureMap: two Linear(d, d) with biases
    return (linear(x, sd[p + "layer1.weight"], sd[p + "layer1.bias"])
            * linear(x, sd[p + "layer2.weight"], sd[p + "layer2.bias"]))
  if name == "dpfp":  # nu = 4
    r = jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], axis=-1)
    rolled = jnp.concatenate([jnp.roll(r, j, axis=-1) for j in range(1, 5)], axis=-1)
    return jnp.concatenate([r] * 4, axis=-1) * rolled
  raise ValueError(name)


def quadratic_linear_attn(q, k, v, scale, normalize, segment_ids, eps=1e-10):
  """q, k [B, T, H, K], v [B, T, H, V] → o [B, T, H, V] (causal, per document)."""
  T = q.shape[1]
  a = jnp.einsum("bthk,bshk->bhts", q, k, precision=_HI) * scale
  allowed = (jnp.arange(T)[None, :] <= jnp.arange(T)[:, None])[None, None]
  if segment_ids is not None:
    doc = _doc(segment_ids)
    allowed = allowed & (doc[:, None, :, None] == doc[:, None, None, :])
  a = jnp.where(allowed, a, 0.0)
  o = jnp.einsum("bhts,bshv->bthv", a, v, precision=_HI)
  if normalize:
    o = o / (jnp.sum(a, axis=-1).transpose(0, 2, 1)[..., None] + eps)
  return o


def mixer(x, sd, p, cfg, segment_ids=None, layer_idx=0):
  """fla's LinearAttention as built by LinearAttentionBlock from `cfg` (output_norm 'rmsnorm')."""
  del layer_idx
  B, T, D = x.shape
  H = cfg.num_heads
  Hkv = cfg.num_kv_heads or H
  K = round(D * cfg.expand_k) // H
  V = round(D * cfg.expand_v) // H
  q, k, v = (linear(x, sd[p + n + "_proj.weight"]) for n in "qkv")
  q = q.reshape(B, T, H, K)
  # einops '... (h d) -> ... (h g) d'
  k = jnp.repeat(k.reshape(B, T, Hkv, K), H // Hkv, axis=2)
  v = jnp.repeat(v.reshape(B, T, Hkv, V), H // Hkv, axis=2)
  k_name = "feature_map_q." if cfg.tie_feature_map_qk else "feature_map_k."  # one shared module
  q = fla_feature_map(cfg.feature_map, q, sd, p + "feature_map_q.")
  k = fla_feature_map(cfg.feature_map, k, sd, p + k_name)
  if cfg.norm_q:
    q = q / (q.sum(-1, keepdims=True) + 1e-4)
  if cfg.norm_k:
    k = k / (k.sum(-1, keepdims=True) + 1e-4)
  o = quadratic_linear_attn(q, k, v, k.shape[-1] ** -0.5, cfg.norm_feature_map, segment_ids)
  o = rms_norm(o, sd.get(p + "norm.weight"), cfg.norm_eps)  # RMSNorm(head_v_dim), no gate
  return linear(o.reshape(B, T, H * V), sd[p + "o_proj.weight"])
