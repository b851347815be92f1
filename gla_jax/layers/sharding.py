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

Flax 0.12 shards annotated variables eagerly at creation, which needs a mesh whose axes (after
`nnx.logical_axis_rules`) cover every name. `with_axes` asks for eager sharding only when that is so;
otherwise (no mesh — CPU tests, `nnx.eval_shape` — or names without a rule) the names are stored as
metadata only and the trainer shards through `jax.jit(..., out_shardings=...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx
from flax.core import spmd

LOGICAL_AXES = ("vocab", "embed", "heads", "kv", "mlp", "norm", "lowrank", "conv")


def _mesh_resolves(names: Sequence[str | None]) -> bool:
  """True if a mesh is set and every name maps (through the active rules) onto its axes."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return False
  rules = dict(spmd.get_logical_axis_rules())
  for name in names:
    if name is None:
      continue
    target = rules.get(name, name)
    targets = target if isinstance(target, (tuple, list)) else (target,)
    if any(t is not None and t not in mesh.axis_names for t in targets):
      return False
  return True


def with_axes(init: Callable, names: Sequence[str | None]) -> Callable:
  """`init` whose variables carry the logical axis `names` (one per dimension).

  Raises ValueError for a name outside `LOGICAL_AXES`.
  """
  names = tuple(names)
  for name in names:
    if name is not None and name not in LOGICAL_AXES:
      raise ValueError(f"sharding name must be one of {LOGICAL_AXES} or None, got {name!r}")
  return nnx.with_partitioning(init, names, eager_sharding=_mesh_resolves(names))


def make_param(init: Callable, names: Sequence[str | None], key: jax.Array, shape: tuple[int, ...],
               dtype) -> nnx.Param:
  """An `nnx.Param` created by `init(key, shape, dtype)` and annotated with `names`."""
  if len(tuple(names)) != len(shape):
    raise ValueError(f"need one sharding name per dimension of {shape}, got {tuple(names)}")
  return nnx.Param(with_axes(init, names)(key, shape, dtype))
