"""Plain-jnp statement of fla 0.6.0's `HGRN2Attention` (layers/hgrn2.py) inside its `HGRN2Model`, reading
fla names / torch layouts from a state dict (the lower bounds from `model.lower_bounds`). No gla_jax
layer is used.

    q, f, i = x W_qᵀ, x W_fᵀ, x W_iᵀ, each through a causal depthwise conv with NO activation if
              use_short_conv
    q = swish(q); g = logsigmoid(f); layer ≥ 1 with bounds: g = logaddexp(log β, log1p(−β) + g)
    β = (cumsum(softmax(lower_bounds, 0)) − softmax(lower_bounds, 0)[0])[layer]
    k = 1 − exp(g); o = chunk_gla(q, k, i, g) (scale K^-½, K = expand_ratio)
    y = rms_norm_linear(o, g_norm.weight, o_proj.weight): RMSNorm over all D channels, eps 1e-5
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.gla import naive_recurrent_gla
from tests.gla_jax.fla_reference import _doc, linear, rms_norm


def causal_conv(x, w, b=None, doc=None):
  """torch Conv1d(groups=C, padding=W−1), first T outputs, no activation; x [B, T, C], w [C, 1, W]."""
  B, T, C = x.shape
  W = w.shape[-1]
  t = jnp.arange(T)
  acc = jnp.zeros((B, T, C), x.dtype)
  for j in range(W):
    src = t - (W - 1) + j
    xs = jnp.where((src >= 0)[None, :, None], x[:, jnp.clip(src, 0)], 0.0)
    if doc is not None:
      xs = jnp.where((doc[:, jnp.clip(src, 0)] == doc)[..., None], xs, 0.0)
    acc = acc + xs * w[:, 0, j]
  return acc if b is None else acc + b


def lower_bound_of(lower_bounds, layer_idx):
  """fla HGRN2Model.forward: softmax over layers, cumsum, minus the first row; row `layer_idx`, written
  as the sum of rows 1 … layer_idx (jnp.cumsum's gradient came out wrong under jit on CPU here)."""
  p = jax.nn.softmax(lower_bounds.astype(jnp.float32), axis=0)
  return sum((p[j] for j in range(1, layer_idx + 1)), jnp.zeros_like(p[0]))


def hgrn2(x, sd, p, *, expand_ratio, use_short_conv=False, lower_bound=None, layer_idx=0, segment_ids=None):
  B, T, D = x.shape
  H = D // expand_ratio
  K, V = expand_ratio, D // H
  q, f, i = (linear(x, sd[p + n + "_proj.weight"]) for n in "qfi")
  if use_short_conv:
    doc = _doc(segment_ids)
    q, f, i = (causal_conv(t, sd[p + n + "_conv1d.weight"], sd.get(p + n + "_conv1d.bias"), doc)
               for t, n in zip((q, f, i), "qfi"))
  q = q * jax.nn.sigmoid(q)
  g = jax.nn.log_sigmoid(f)
  if lower_bound is not None and layer_idx > 0:
    g = jnp.logaddexp(jnp.log(lower_bound), jnp.log1p(-lower_bound) + g)
  k = 1 - jnp.exp(g)
  q, k, g = (a.reshape(B, T, H, K) for a in (q, k, g))
  o, _ = naive_recurrent_gla(q, k, i.reshape(B, T, H, V), g, segment_ids=segment_ids)
  o = rms_norm(o.reshape(B, T, D), sd.get(p + "g_norm.weight"), 1e-5)
  return linear(o, sd[p + "o_proj.weight"])


def mixer(x, sd, p, cfg, segment_ids, layer_idx):
  """fla's HGRN2Block's layer: the config's settings; the bound from the model's lower_bounds."""
  lb = lower_bound_of(sd[f"{cfg.fla_prefix}.lower_bounds"], layer_idx) if cfg.use_lower_bound else None
  return hgrn2(x, sd, p, expand_ratio=cfg.expand_ratio, use_short_conv=cfg.use_short_conv, lower_bound=lb,
               layer_idx=layer_idx, segment_ids=segment_ids)
