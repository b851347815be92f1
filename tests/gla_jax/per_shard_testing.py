"""A fake `chunk_gla` implementation that records the shapes of every call it gets (so a test can see
the per-shard shapes inside `jax.shard_map`) and computes with the plain-jnp `chunk_gla_jnp`."""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.gla import ops
from pallas_kernels.gla.chunk import chunk_gla_jnp

NAME = "recording_test"


@contextlib.contextmanager
def recording_impl():
  """Registers impl `NAME` for the duration; yields the list of (q, v, initial_state, segment_ids)
  shapes of its calls (recorded at trace time; None for an absent argument)."""
  calls: list[tuple] = []

  def fn(info, q, k, v, g, **kw):
    del info
    shape = lambda x: None if x is None else tuple(x.shape)
    calls.append((shape(q), shape(v), shape(kw.get("initial_state")), shape(kw.get("segment_ids"))))
    return chunk_gla_jnp(q, k, v, g, **kw)

  assert NAME not in ops.CHUNK_GLA.registry
  ops.CHUNK_GLA.register(Implementation(NAME, fn))
  try:
    yield calls
  finally:
    ops.CHUNK_GLA.registry.pop(NAME, None)


def rel_err(a, b) -> float:
  """max |a − b| / max |b| (float64)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def assert_trees_close(got, want, tol: float) -> None:
  """Every leaf of `got` within relative error `tol` of `want`'s (same structure)."""
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
    assert rel_err(a, b) < tol, (jax.tree_util.keystr(path), rel_err(a, b))
