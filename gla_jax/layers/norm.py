"""RMSNorm and the gated RMSNorm of GLA's output, with fla's numerics (statistics in float32).

fla's `RMSNorm(x, residual, prenorm=True)` fuses the residual add: the sum is formed in float32, the
normalised output is computed from that float32 sum, and the returned residual is the sum rounded to
the residual's dtype. `RMSNorm.__call__(x, residual)` does the same, so bf16 models match fla's bits
as closely as possible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.sharding import make_param

_f32 = jnp.float32


def _rms_normalize(x32: jax.Array, eps: float) -> jax.Array:
  """x · (mean(x²) + eps)^-½ over the last axis; x32 float32."""
  var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  return x32 * jax.lax.rsqrt(var + eps)


class RMSNorm(nnx.Module):
  """y = x / rms(x) · w over the last axis (fla `RMSNorm`).

  Shapes: x [..., D] → y [..., D] in `dtype` (default: x's dtype). Weight `w` [D] ("norm"), ones.
  Calling with `residual` [..., D] returns `(norm(x + residual), x + residual)` (fla's prenorm fusion:
  the sum in float32, the returned residual in residual's dtype).
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, elementwise_affine: bool = True, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dim, self.eps, self.dtype = dim, eps, dtype
    self.weight = (make_param(nnx.initializers.ones, ("norm",), rngs.params(), (dim,), param_dtype)
                   if elementwise_affine else None)

  def __call__(self, x: jax.Array, residual: jax.Array | None = None):
    if x.shape[-1] != self.dim:
      raise ValueError(f"x must have last dimension {self.dim}, got shape {x.shape}")
    out_dtype = self.dtype or x.dtype
    s = x.astype(_f32) if residual is None else x.astype(_f32) + residual.astype(_f32)
    y = _rms_normalize(s, self.eps)
    if self.weight is not None:
      y = y * self.weight[...].astype(_f32)
    y = y.astype(out_dtype)
    if residual is None:
      return y
    return y, s.astype(residual.dtype)


class GatedRMSNorm(nnx.Module):
  """y = x / rms(x) · w · act(g) per head (fla `FusedRMSNormGated`), all in float32.

  act is swish (g·σ(g)) by default, or sigmoid; x, g [..., D] → y [..., D] in x's dtype (or `dtype`).
  Weight [D] ("norm"), ones. GLA applies it over each head's value dim: D = head_v_dim.
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, elementwise_affine: bool = True,
               activation: str = "swish", dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if activation not in ("swish", "silu", "sigmoid"):
      raise ValueError(f"activation must be 'swish', 'silu' or 'sigmoid', got {activation!r}")
    self.dim, self.eps, self.activation, self.dtype = dim, eps, activation, dtype
    self.weight = (make_param(nnx.initializers.ones, ("norm",), rngs.params(), (dim,), param_dtype)
                   if elementwise_affine else None)

  def __call__(self, x: jax.Array, g: jax.Array) -> jax.Array:
    if x.shape[-1] != self.dim or g.shape != x.shape:
      raise ValueError(f"x and g must have the same shape [..., {self.dim}], got {x.shape} and {g.shape}")
    y = _rms_normalize(x.astype(_f32), self.eps)
    if self.weight is not None:
      y = y * self.weight[...].astype(_f32)
    g32 = g.astype(_f32)
    gate = jax.nn.sigmoid(g32) if self.activation == "sigmoid" else g32 * jax.nn.sigmoid(g32)
    return (y * gate).astype(self.dtype or x.dtype)
