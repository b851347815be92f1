"""Logical sharding names for parameters, and the one helper that attaches them.

Every parameter carries a tuple of logical axis names (metadata key `out_sharding`, read by
`nnx.get_partition_spec`). The trainer maps names to mesh axes; an unknown name means replicated.

    vocab    the vocabulary axis of the embedding / lm_head
    embed    the model width D
    heads    the head side of the attention projections ([embed, heads] kernels, [heads, embed] o_proj)
    kv       the key/value head side under GQA (k_proj, v_proj, the gate projection's output)
    mlp      the MLP width F
    norm     norm weights (1-D)
    lowrank  the low-rank dimension of GLA's forget-gate projection (16)
    conv     the kernel-width axis of short convolutions

Flax 0.12's own eager sharding fails for a name that is not a mesh axis (and with no mesh at all), so
variables are created with `eager_sharding=False` and `with_axes` places them itself: with no mesh
set (CPU tests, `nnx.eval_shape` outside a mesh) a parameter is a plain array carrying its names; under
`jax.set_mesh(mesh)` it is sharded at creation by the names resolved through the active
`nnx.logical_axis_rules` (a name that is itself a mesh axis stands for that axis; anything else is
replicated) — unless `nnx.use_eager_sharding(False)` is in effect. Either way `nnx.get_partition_spec` returns the logical names (mapped by whatever rules
are active when it is called).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd

LOGICAL_AXES = ("vocab", "embed", "heads", "kv", "mlp", "norm", "lowrank", "conv")


def resolve(names: Sequence[str | None], mesh=None) -> jax.sharding.PartitionSpec:
  """Logical names → a PartitionSpec of `mesh`'s axes (active rules first; unknown names → None)."""
  mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  rules = dict(spmd.get_logical_axis_rules())
  out = []
  for name in names:
    if name is None:
      out.append(None)
    elif name in rules:
      out.append(rules[name])
    else:
      out.append(name if name in mesh.axis_names else None)
  return jax.sharding.PartitionSpec(*out)


def _place(value: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Shard a freshly initialised value on the current mesh.

  A no-op without a mesh, under `nnx.use_eager_sharding(False)` (the trainer's jit init, which shards
  through out_shardings), or when no name resolves to a mesh axis.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not nnx.using_eager_sharding():
    return value
  spec = resolve(names, mesh)
  if all(axis is None for axis in spec):
    return value
  sharding = jax.sharding.NamedSharding(mesh, spec)
  if mesh.are_all_axes_explicit:
    return jax.sharding.reshard(value, sharding)
  return jax.lax.with_sharding_constraint(value, sharding)


def with_axes(init: Callable, names: Sequence[str | None]) -> Callable:
  """`init` whose variables carry the logical axis `names` (one per dimension), sharded on the
  current mesh if one is set. Raises ValueError for a name outside `LOGICAL_AXES`."""
  names = tuple(names)
  for name in names:
    if name is not None and name not in LOGICAL_AXES:
      raise ValueError(f"sharding name must be one of {LOGICAL_AXES} or None, got {name!r}")

  def placed_init(key, shape, dtype=jnp.float32):
    if len(shape) != len(names):
      raise ValueError(f"need one sharding name per dimension of {tuple(shape)}, got {names}")
    return _place(init(key, shape, dtype), names)

  return nnx.with_partitioning(placed_init, names, eager_sharding=False)


def make_param(init: Callable, names: Sequence[str | None], key: jax.Array, shape: tuple[int, ...],
               dtype) -> nnx.Param:
  """An `nnx.Param` created by `init(key, shape, dtype)` and annotated with `names`."""
  return nnx.Param(with_axes(init, names)(key, shape, dtype))
