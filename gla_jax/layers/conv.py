"""Causal depthwise short convolution with SiLU (fla `ShortConvolution`) and its decode-time state.

    y_t[c] = act( Σ_{i<W} w[i, c] · x_{t-W+1+i}[c] + b[c] )

The weight is [W, C] ("conv", channel name); fla stores it as torch Conv1d's [C, 1, W]. The state is the
last W − 1 inputs [B, W − 1, C]. With `segment_ids` a token never sees inputs of another document (the
taps that cross a document start are masked), and the returned state holds only the last document.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.sharding import make_param
from pallas_kernels.common.segments import doc_index

_f32 = jnp.float32


class ShortConvolution(nnx.Module):
  """Causal depthwise conv over time: x [B, T, C] → y [B, T, C] (and the new state [B, W−1, C]).

  `activation`: "silu"/"swish" or None. Param init N(0, init_std) (fla inits Conv1d like a Linear).
  """

  def __init__(self, channels: int, kernel_size: int = 4, *, bias: bool = False,
               activation: str | None = "silu", channel_name: str = "heads", init_std: float = 0.02,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if activation not in (None, "silu", "swish"):
      raise ValueError(f"activation must be 'silu', 'swish' or None, got {activation!r}")
    if kernel_size < 1:
      raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    self.channels, self.kernel_size, self.activation, self.dtype = channels, kernel_size, activation, dtype
    self.weight = make_param(nnx.initializers.normal(init_std), ("conv", channel_name), rngs.params(),
                             (kernel_size, channels), param_dtype)
    self.bias = (make_param(nnx.initializers.zeros_init(), (channel_name,), rngs.params(), (channels,),
                            param_dtype) if bias else None)

  def init_state(self, batch_size: int, dtype=None) -> jax.Array:
    """Zero state [B, W − 1, C]."""
    return jnp.zeros((batch_size, self.kernel_size - 1, self.channels), dtype or self.dtype or _f32)

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x [B, T, C]; segment_ids [B, T]; state [B, W−1, C] (inputs before t = 0, zeros if None).

    Returns (y [B, T, C] in x's dtype, new state [B, W−1, C] in x's dtype).
    """
    B, T, C = x.shape
    W = self.kernel_size
    if C != self.channels:
      raise ValueError(f"x must have shape [B, T, {self.channels}], got {x.shape}")
    if state is None:
      state = jnp.zeros((B, W - 1, C), x.dtype)
    elif state.shape != (B, W - 1, C):
      raise ValueError(f"state must have shape [B, W-1, C] = {(B, W - 1, C)}, got {state.shape}")
    xp = jnp.concatenate([state.astype(x.dtype), x], axis=1)  # [B, W-1+T, C]
    w = self.weight[...].astype(_f32)  # [W, C]
    if segment_ids is not None:
      # the state belongs to each row's first document (doc index 0), like initial_state of the op
      doc = jnp.pad(doc_index(segment_ids), ((0, 0), (W - 1, 0)))  # [B, W-1+T]
    y = jnp.zeros((B, T, C), _f32)
    for i in range(W):  # tap i reads x_{t-W+1+i}
      tap = xp[:, i:i + T].astype(_f32) * w[i]
      if segment_ids is not None and i < W - 1:
        same = doc[:, i:i + T] == doc[:, W - 1:]  # [B, T]
        tap = jnp.where(same[..., None], tap, 0.0)
      y = y + tap
    if self.bias is not None:
      y = y + self.bias[...].astype(_f32)
    if self.activation is not None:
      y = jax.nn.silu(y)
    new_state = xp[:, T:]  # the last W-1 inputs
    if segment_ids is not None and W > 1:
      keep = doc[:, T:] == doc[:, -1:]  # only the last document's inputs carry over
      new_state = jnp.where(keep[..., None], new_state, 0)
    return y.astype(self.dtype or x.dtype), new_state.astype(x.dtype)
