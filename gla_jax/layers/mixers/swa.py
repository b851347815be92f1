"""Sliding-window softmax attention (kind "swa"): fla `Attention` with `window_size`."""

from __future__ import annotations

from gla_jax.layers.mixers.attention import Attention


class SlidingWindowAttention(Attention):
  """Causal RoPE attention over the last `window_size` tokens (the token itself included)."""

  kind = "swa"
