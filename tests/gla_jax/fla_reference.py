"""An independent plain-jnp statement of fla 0.6.0's GLAForCausalLM and TransformerForCausalLM forward,
written from fla's source and docs/models.md, reading a state dict in fla's names and torch layouts.

It shares no code with gla_jax's modules: the tests build our model, export its weights with fla names
(`fla_state_dict`), run both, and compare logits and gradients. The GLA recurrence is the lax.scan
specification `naive_recurrent_gla`.
"""

from __future__ import annotations

import importlib
import types

import jax
import jax.numpy as jnp

from pallas_kernels.gla import naive_recurrent_gla

_f32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def linear(x, w, b=None):
  """torch nn.Linear: x Wᵀ + b, W [out, in]."""
  y = jnp.einsum("...i,oi->...o", x, w, precision=_HI)
  return y if b is None else y + b


def rms_norm(x, w, eps):
  y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  return y if w is None else y * w


def causal_conv_silu(x, w, b=None, doc=None):
  """torch Conv1d(groups=C, padding=W-1), first T outputs, then SiLU. x [B,T,C], w [C,1,W].

  Output t is Σ_i w[:, 0, i] · x[t − (W−1) + i] (cross-correlation over the left-padded input);
  with `doc`, inputs from another document than t's are left out.
  """
  B, T, C = x.shape
  W = w.shape[-1]
  t = jnp.arange(T)
  acc = jnp.zeros((B, T, C), x.dtype)
  for i in range(W):
    src = t - (W - 1) + i  # [T]
    valid = src >= 0
    xs = jnp.where(valid[None, :, None], x[:, jnp.clip(src, 0)], 0.0)
    if doc is not None:
      same = doc[:, jnp.clip(src, 0)] == doc
      xs = jnp.where(same[..., None], xs, 0.0)
    acc = acc + xs * w[:, 0, i]
  return jax.nn.silu(acc if b is None else acc + b)


FEATURE_MAPS = {None: None, "relu": jax.nn.relu, "swish": jax.nn.silu, "silu": jax.nn.silu,
                "sigmoid": jax.nn.sigmoid}


def _doc(segment_ids):
  if segment_ids is None:
    return None
  change = jnp.pad(segment_ids[:, 1:] != segment_ids[:, :-1], ((0, 0), (1, 0)))
  return jnp.cumsum(change, axis=1)


def gla_attention(x, sd, p, cfg, segment_ids=None):
  B, T, D = x.shape
  H = cfg.num_heads
  Hkv = cfg.num_kv_heads or H
  G = H // Hkv
  K = round(D * cfg.expand_k) // H
  V = round(D * cfg.expand_v) // H
  doc = _doc(segment_ids)
  q, k, v = (linear(x, sd[p + n + "_proj.weight"]) for n in "qkv")
  if cfg.use_short_conv:
    q, k, v = (causal_conv_silu(t, sd[p + n + "_conv1d.weight"], sd.get(p + n + "_conv1d.bias"), doc)
               for t, n in zip((q, k, v), "qkv"))
  gk = linear(linear(x, sd[p + "gk_proj.0.weight"]), sd[p + "gk_proj.1.weight"], sd[p + "gk_proj.1.bias"])
  q = q.reshape(B, T, H, K)
  # einops '... (h d) -> ... (h g) d': kv head h feeds query heads h*G .. h*G+G-1
  k = jnp.repeat(k.reshape(B, T, Hkv, K), G, axis=2)
  gk = jnp.repeat(gk.reshape(B, T, Hkv, K), G, axis=2)
  v = jnp.repeat(v.reshape(B, T, Hkv, V), G, axis=2)
  gk = jax.nn.log_sigmoid(gk) / 16.0
  if cfg.clamp_min is not None:
    gk = jnp.maximum(gk, cfg.clamp_min)
  fm = FEATURE_MAPS[cfg.feature_map]
  if fm is not None:
    q, k = fm(q), fm(k)
  o, _ = naive_recurrent_gla(q, k, v, gk, segment_ids=segment_ids)  # [B, T, H, V]
  if cfg.use_output_gate:
    g = linear(x, sd[p + "g_proj.weight"]).reshape(B, T, H, V)
    o = rms_norm(o, sd.get(p + "g_norm_swish_gate.weight"), cfg.norm_eps) * g * jax.nn.sigmoid(g)
  else:
    o = rms_norm(o, sd.get(p + "g_norm.weight"), cfg.norm_eps)
  return linear(o.reshape(B, T, H * V), sd[p + "o_proj.weight"])


def _rope(x, pos, theta):
  d = x.shape[-1]
  inv = 1.0 / theta ** (jnp.arange(0, d, 2, dtype=_f32) / d)
  f = pos[..., None].astype(_f32) * inv  # [B or 1, T, d/2]
  cos = jnp.concatenate([jnp.cos(f), jnp.cos(f)], -1)[:, :, None]
  sin = jnp.concatenate([jnp.sin(f), jnp.sin(f)], -1)[:, :, None]
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  return x * cos + jnp.concatenate([-x2, x1], -1) * sin


def softmax_attention(x, sd, p, cfg, segment_ids=None):
  B, T, D = x.shape
  H = cfg.num_heads
  Hkv = cfg.num_kv_heads or H
  d = D // H
  q, k, v = (linear(x, sd[p + n + "_proj.weight"], sd.get(p + n + "_proj.bias")) for n in "qkv")
  q, k, v = q.reshape(B, T, H, d), k.reshape(B, T, Hkv, d), v.reshape(B, T, Hkv, d)
  if cfg.qk_norm:
    q, k = rms_norm(q, sd[p + "q_norm.weight"], 1e-5), rms_norm(k, sd[p + "k_norm.weight"], 1e-5)
  t = jnp.arange(T)
  if segment_ids is None:
    pos = t[None]
  else:  # flash-attn varlen: positions restart per document
    doc = _doc(segment_ids)
    first = jnp.argmax(doc[:, None, :] == doc[:, :, None], axis=-1)  # first index of each token's doc
    pos = t[None] - first
  q, k = _rope(q, pos, cfg.rope_theta), _rope(k, pos, cfg.rope_theta)
  k, v = jnp.repeat(k, H // Hkv, axis=2), jnp.repeat(v, H // Hkv, axis=2)
  s = jnp.einsum("bthd,bshd->bhts", q, k, precision=_HI) / jnp.sqrt(d)
  allowed = (t[None, :] <= t[:, None])[None, None]
  if cfg.window_size is not None:
    allowed = allowed & (t[None, :] > t[:, None] - cfg.window_size)[None, None]
  if segment_ids is not None:
    allowed = allowed & (doc[:, None, :, None] == doc[:, None, None, :])
  s = jnp.where(allowed, s, -jnp.inf)
  o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v, precision=_HI)
  return linear(o.reshape(B, T, D), sd[p + "o_proj.weight"])


def _attn_cfg(cfg, layer_idx):
  """The softmax-attention settings of layer `layer_idx` (a hybrid's `attn` spec, or the config's own)."""
  spec = cfg.attn_spec(layer_idx)
  if spec is None:
    return cfg
  return types.SimpleNamespace(num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, qk_norm=False,
                               rope_theta=spec.rope_theta, window_size=spec.window_size)


def reference_mixer(kind: str):
  """The fla-named reference of mixer kind `kind`: `fn(x, sd, prefix, cfg, segment_ids, layer_idx)`.

  gla / attention / swa live here; every other kind in tests/gla_jax/refs/<kind>.py as `mixer`.
  """
  if kind == "gla":
    return lambda x, sd, p, cfg, seg, i: gla_attention(x, sd, p, cfg, seg)
  if kind in ("attention", "swa"):
    return lambda x, sd, p, cfg, seg, i: softmax_attention(x, sd, p, _attn_cfg(cfg, i), seg)
  return importlib.import_module(f"tests.gla_jax.refs.{kind}").mixer


def forward(sd, cfg, input_ids, segment_ids=None, kind=None):
  """Logits [B, T, vocab] of fla's model with state dict `sd` (fla names, torch layouts).

  Each layer's mixer is the reference of its kind in `cfg.layer_kinds()` (`kind` is accepted for old
  callers and ignored). The names are fla's: `cfg.fla_prefix` ("model", Mamba-2's "backbone"), the
  block's (`attn_norm`/`attn`, Mamba-2's `norm`/`mixer`), MLP-less blocks when not `cfg.has_mlp`.
  """
  del kind
  pre = cfg.fla_prefix
  names = {"attn_norm": "attn_norm", "attn": "attn", **cfg.fla_block_names}
  h = sd[f"{pre}.embeddings.weight"][input_ids]
  for i, layer_kind in enumerate(cfg.layer_kinds()):
    p = f"{pre}.layers.{i}."
    x = rms_norm(h, sd[p + names["attn_norm"] + ".weight"], cfg.norm_eps)
    h = h + reference_mixer(layer_kind)(x, sd, p + names["attn"] + ".", cfg, segment_ids, i)
    if not cfg.has_mlp:
      continue
    x = rms_norm(h, sd[p + "mlp_norm.weight"], cfg.norm_eps)
    m = jax.nn.silu(linear(x, sd[p + "mlp.gate_proj.weight"])) * linear(x, sd[p + "mlp.up_proj.weight"])
    h = h + linear(m, sd[p + "mlp.down_proj.weight"])
  h = rms_norm(h, sd[f"{pre}.{cfg.fla_final_norm}.weight"], cfg.norm_eps)
  head = sd[f"{pre}.embeddings.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
  return linear(h, head)
