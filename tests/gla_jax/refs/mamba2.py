"""Plain-jnp statement of fla 0.6.0's `Mamba2` layer (fla layers/mamba2.py, torch_forward's decode form,
which is the recurrence its chunked SSD computes), reading fla names and torch layouts from a state dict.

    zxbcdt = in_proj(x);  z, xBC, dt = split [I, I + 2GN, H]
    xBC = silu(conv1d(xBC))  (torch Conv1d [C, 1, W], causal);  x, B, C = split [I, GN, GN]
    dt = softplus(dt + dt_bias), clamped to dt_limit;  A = −exp(A_log)
    h_t = exp(dt_t A) h_{t−1} + dt_t x_t ⊗ B_t  (h [B, H, P, N], fla's ssm_state layout);  y_t = h_t C_t + D x_t
    out = out_proj(RMSNormGated(y, z))   (group_size = I / n_groups)

Group j of B and C serves heads j·H/G … (j+1)·H/G − 1: fla's decode path and the mamba_ssm CUDA kernels
(fla's torch prefill path tiles the groups with `.repeat` instead; the two agree only when G = 1 or G = H).
With segment_ids the state and the conv restart at every document start (as if each ran alone).
No gla_jax layer is imported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tests.gla_jax.fla_reference import _doc, causal_conv_silu, linear

_HI = jax.lax.Precision.HIGHEST


def _rms_norm_gated(x, z, w, eps, group_size, norm_before_gate):
  """fla rms_norm_ref: x · silu(z) before (default) or after the per-group RMS normalisation."""
  if not norm_before_gate:
    x = x * jax.nn.silu(z)
  xg = x.reshape(*x.shape[:-1], -1, group_size)
  xg = xg / jnp.sqrt(jnp.mean(xg * xg, axis=-1, keepdims=True) + eps)
  out = xg.reshape(x.shape) * w
  if norm_before_gate:
    out = out * jax.nn.silu(z)
  return out


def mixer(x, sd, p, cfg, segment_ids=None, layer_idx=None):
  """x [B, T, D] → fla Mamba2's output [B, T, D]; `p` is the layer's prefix ("backbone.layers.i.mixer.")."""
  del layer_idx
  Bsz, T, Dm = x.shape
  I = cfg.expand * Dm
  P, N, G = cfg.head_dim, cfg.state_size, cfg.n_groups
  H = I // P
  C = I + 2 * G * N
  proj = linear(x, sd[p + "in_proj.weight"], sd.get(p + "in_proj.bias"))
  gate, xbc, dt = proj[..., :I], proj[..., I:I + C], proj[..., I + C:]
  doc = _doc(segment_ids)
  xbc = causal_conv_silu(xbc, sd[p + "conv1d.weight"], sd.get(p + "conv1d.bias"), doc)
  hs = xbc[..., :I].reshape(Bsz, T, H, P)
  Bm = xbc[..., I:I + G * N].reshape(Bsz, T, G, 1, N)
  Cm = xbc[..., I + G * N:].reshape(Bsz, T, G, 1, N)
  Bm = jnp.broadcast_to(Bm, (Bsz, T, G, H // G, N)).reshape(Bsz, T, H, N)  # expand, as fla's decode
  Cm = jnp.broadcast_to(Cm, (Bsz, T, G, H // G, N)).reshape(Bsz, T, H, N)
  dt = jax.nn.softplus(dt + sd[p + "dt_bias"])
  dt = jnp.clip(dt, cfg.dt_limit[0], cfg.dt_limit[1])
  A = -jnp.exp(sd[p + "A_log"])  # [H]
  D = sd[p + "D"].reshape(H, P) if cfg.D_has_hdim else sd[p + "D"][:, None]
  if segment_ids is None:
    starts = jnp.zeros((Bsz, T), bool)
  else:
    starts = jnp.pad(segment_ids[:, 1:] != segment_ids[:, :-1], ((0, 0), (1, 0)))

  def step(h, inp):  # h [B, H, P, N]
    x_t, dt_t, b_t, c_t, start = inp
    dA = jnp.where(start[:, None], 0.0, jnp.exp(dt_t * A))  # [B, H]
    dBx = dt_t[..., None, None] * x_t[..., :, None] * b_t[..., None, :]  # [B, H, P, N]
    h = h * dA[..., None, None] + dBx
    y = jnp.einsum("bhpn,bhn->bhp", h, c_t, precision=_HI) + x_t * D
    return h, y

  tm = lambda a: jnp.moveaxis(a, 1, 0)
  h0 = jnp.zeros((Bsz, H, P, N), x.dtype)
  _, y = jax.lax.scan(step, h0, (tm(hs), tm(dt), tm(Bm), tm(Cm), tm(starts)))
  y = jnp.moveaxis(y, 0, 1).reshape(Bsz, T, I)
  if cfg.rmsnorm:
    y = _rms_norm_gated(y, gate, sd[p + "norm.weight"], cfg.norm_eps, I // G, cfg.norm_before_gate)
  else:
    y = y * jax.nn.silu(gate)
  return linear(y, sd[p + "out_proj.weight"], sd.get(p + "out_proj.bias"))
