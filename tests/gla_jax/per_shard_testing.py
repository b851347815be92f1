"""Helpers for the per-shard tests: a fake `chunk_gla` implementation that records the shapes of every
call it gets (so a test can see the per-shard shapes inside `jax.shard_map`) and computes with the
plain-jnp `chunk_gla_jnp`, and recording stand-ins for chunk_simple_gla / chunk_linear_attn."""

from __future__ import annotations

import contextlib
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.common.dispatch import Implementation
from pallas_kernels.gla import ops
from pallas_kernels.gla.chunk import chunk_gla_jnp
from pallas_kernels.gla.naive import naive_recurrent_gla

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


# ---------------------------------------------------------------------------------------------- any op

RECORDED = ("q", "v", "g", "g_gamma", "initial_state", "segment_ids")


def recording(op, calls: list):
  """`op` that appends {name: shape pytree or None} of its arguments in `RECORDED` to `calls` (at trace
  time, so inside a shard_map it sees the per-shard shapes); same name and signature as `op`."""
  signature = inspect.signature(op)

  @functools.wraps(op)
  def call(*args, **kwargs):
    given = signature.bind(*args, **kwargs).arguments
    calls.append({n: jax.tree.map(lambda x: tuple(x.shape), given.get(n)) for n in RECORDED})
    return op(*args, **kwargs)

  return call


# Stand-ins with the contracts of chunk_simple_gla and chunk_linear_attn, built on GLA's lax.scan spec, for
# the per-shard tests while those ops are not importable (quick to compile; chunk_size, impl ignored).


def simple_gla_standin(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                       output_final_state=False, segment_ids=None, chunk_size=64, impl="auto"):
  """`chunk_simple_gla`: the scalar (or constant) gate broadcast over K into GLA."""
  del chunk_size, impl
  if g_gamma is not None:
    g = jnp.broadcast_to(g_gamma.astype(jnp.float32), q.shape[:3])
  if g is None:
    g = jnp.zeros(q.shape[:3], jnp.float32)
  gk = jnp.broadcast_to(g[..., None], q.shape)
  o, ht = naive_recurrent_gla(q, k, v, gk, scale=scale, initial_state=initial_state,
                              output_final_state=output_final_state, segment_ids=segment_ids)
  return o.astype(v.dtype), ht


def linear_attn_standin(q, k, v, *, scale=None, normalize=False, initial_state=None,
                        output_final_state=False, segment_ids=None, impl="auto"):
  """`chunk_linear_attn`: GLA with a zero gate; with normalize the key sum z rides along as an extra
  value column of ones (state (S, z); z0 only for the row's first document, like S0)."""
  del impl
  V = v.shape[-1]
  h0 = initial_state
  if normalize:
    v = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)
    if initial_state is not None:
      h0 = jnp.concatenate([initial_state[0], initial_state[1][..., None]], axis=-1)
  o, ht = naive_recurrent_gla(q, k, v, jnp.zeros(q.shape, jnp.float32), scale=scale, initial_state=h0,
                              output_final_state=output_final_state, segment_ids=segment_ids)
  if not normalize:
    return o, ht
  o = o[..., :V] / (o[..., V:] + 1e-10)
  return o, None if ht is None else (ht[..., :V], ht[..., V])
