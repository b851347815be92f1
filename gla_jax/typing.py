"""Shape aliases used in signatures and docstrings.

Letters (docs/models.md): B batch, T time, H heads, K key dim per head, V value dim per head, D model width,
F MLP width, W conv width, S cache length. These are plain aliases of `jax.Array` that name the
expected layout; shapes are checked where it matters, not by the type.
"""

from __future__ import annotations

import jax

Array = jax.Array
TokenIds = jax.Array  # int32 [B, T]
SegmentIds = jax.Array  # int [B, T]; a change of id starts a new document
Hidden = jax.Array  # [B, T, D]
Logits = jax.Array  # float32 [B, T, vocab] (or [B, vocab] for one decode step)
Heads = jax.Array  # [B, T, H, K] or [B, T, H, V]
RecurrentState = jax.Array  # float32 [B, H, K, V]
ConvState = jax.Array  # [B, W - 1, C]: the last W - 1 inputs of a short convolution
