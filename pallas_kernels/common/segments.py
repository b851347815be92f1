"""Packed documents: turn `segment_ids` into a monotone document index.

The state restarts at every *change* of id (an id that comes back later starts a new document), so the
ops never compare raw ids: they compare `doc_index`, which counts the changes so far and is 0 on each
row's first segment (the only one `initial_state` applies to).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_starts(segment_ids: jax.Array) -> jax.Array:
  """[B, T] bool: True where a new document starts at t > 0."""
  change = segment_ids[:, 1:] != segment_ids[:, :-1]
  return jnp.pad(change, ((0, 0), (1, 0)))


def doc_index(segment_ids: jax.Array) -> jax.Array:
  """[B, T] int32: number of document starts up to and including t (0 on the first document)."""
  return jnp.cumsum(segment_starts(segment_ids).astype(jnp.int32), axis=1)
