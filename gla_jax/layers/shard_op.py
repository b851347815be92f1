"""Run the GLA op per shard: `jax.shard_map` over the mesh axes that split the batch and the heads.

A Pallas kernel (impl "triton" on GPU, "tpu" on TPU) is an opaque custom call: GSPMD cannot partition
it, so on a multi-device mesh it would gather its inputs and compute the whole op on every device. The
op is independent per batch row and per head, so `gla_per_shard` runs it inside `jax.shard_map` with

    q, k, g [B, T, H, K], v / o [B, T, H, V]   P(batch, None, heads, None)
    segment_ids [B, T]                         P(batch, None)
    initial_state / final state [B, H, K, V]   P(batch, heads, None, None)

and T, K, V unsplit; each device calls the op on its [B/nb, T, H/nh, ·] slice, and no collective is
needed. (Under GQA the layer repeats k, v and the gate to all H query heads before the call, so the
four inputs split alike; kv head j's copies stay on the shard of query heads j·G … j·G + G − 1.) Every impl goes through it (the plain-jnp "xla" impl too): one code path, and XLA gets exactly
the layout the kernels get.

Which mesh axes: the current mesh is `jax.sharding.get_abstract_mesh()` (set it with `jax.set_mesh`;
the legacy `with mesh:` context is not seen). The two logical activation names

    batch   the batch dimension B
    heads   the (query) head dimension H, the same name as the head side of the projections

are resolved like parameter names (`sharding.resolve`): through the active `nnx.logical_axis_rules`
(a rule may name one mesh axis or a tuple of them), else a mesh axis of that very name, else
unsplit. The trainer traces its steps with ("batch", ("data", "fsdp")) and ("heads", "tensor") active
(train/step.py). Without a mesh, on a one-device mesh, or when no name resolves to a mesh axis of
size > 1, the op is called directly (notebooks, `nnx.eval_shape`, single-device runs).

Fallback (documented, never wrong): a mesh axis that does not divide its dimension, or that is
already used by the batch, is dropped for that dimension (greedily, in rule order); the dimension is
then replicated over that axis, i.e. those devices compute the same slice twice. The result is the
same, only less parallel (e.g. decoding one sequence on a data-parallel mesh). Axes already Manual
(inside an enclosing shard_map) are left alone; Explicit-axis inputs are resharded to the specs first.

Rules and mesh are read at trace time; JAX's trace cache keys on the mesh but not on flax's logical
rules, so trace a function under the rules it will always run with (the trainer's steps do).

`check_vma=False`: the body has no collectives, and every output varies exactly over the axes its
out_spec names (the inputs are replicated over the others and the op is deterministic), so there is
nothing for the check to find; with it on, the plain-jnp forms fail to trace (their `lax.scan`s start
from invariant zero carries while the carried state varies per shard). Gradients are checked against
single-device ones in tests/gla_jax/test_shard_op.py, replicated fallbacks included.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec as P

from gla_jax.layers.sharding import resolve
from pallas_kernels import compat
from pallas_kernels.common.checks import check_gla_inputs

BATCH, HEADS = "batch", "heads"  # logical names of the activation dimensions split per shard

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """How one GLA call is split: mesh axes for B and for H (possibly empty), and the mesh."""

  mesh: jax.sharding.AbstractMesh
  batch: tuple[str, ...]
  heads: tuple[str, ...]

  @property
  def batch_shards(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.batch)

  @property
  def head_shards(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.heads)


def _axes_for(name: str, size: int, mesh, taken: set[str]) -> tuple[str, ...]:
  """Mesh axes that split a dimension of `size` named `name`: the resolved rule, minus axes that are
  missing, of size 1, Manual, already `taken`, or that would not divide `size`."""
  rule = resolve((name,), mesh)[0]
  wanted = (rule,) if isinstance(rule, str) else tuple(rule or ())
  manual = set(compat.mesh_axes_of_type(mesh, "Manual"))
  axes, split = [], 1
  for axis in wanted:
    if axis not in mesh.axis_names or axis in manual or axis in taken or mesh.shape[axis] == 1:
      continue
    if size % (split * mesh.shape[axis]):
      log.info("GLA op: %s=%d does not divide by mesh axis %r (size %d) on top of %s; replicating it "
               "over that axis", name, size, axis, mesh.shape[axis], tuple(axes))
      continue
    axes.append(axis)
    split *= mesh.shape[axis]
  return tuple(axes)


def plan(batch_size: int, num_heads: int, mesh=None) -> ShardPlan | None:
  """The split of a [B, ·, H, ·] GLA call on `mesh` (default: the current abstract mesh), or None
  when the op should be called directly (no mesh, or nothing to split)."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if mesh is None or mesh.empty or mesh.size == 1:
    return None
  batch = _axes_for(BATCH, batch_size, mesh, set())
  heads = _axes_for(HEADS, num_heads, mesh, set(batch))
  if not batch and not heads:
    return None
  return ShardPlan(mesh=mesh, batch=batch, heads=heads)


def _consistent(q, k, v, g, initial_state, segment_ids) -> bool:
  """Whether this is a valid call (else the op is called directly and raises its own error)."""
  try:
    check_gla_inputs(q, k, v, g, initial_state=initial_state, segment_ids=segment_ids)
  except ValueError:
    return False
  return True


def gla_per_shard(op: Callable, q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array, *,
                  initial_state: jax.Array | None = None, segment_ids: jax.Array | None = None,
                  output_final_state: bool = False, **options):
  """`op(q, k, v, g, initial_state=, segment_ids=, output_final_state=, **options)` per shard.

  Args:
    op: `chunk_gla`, `fused_recurrent_gla` or anything with their contract, returning
      (o [B, T, H, V], final_state [B, H, K, V] or None).
    q, k, g: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V]; segment_ids: [B, T].
    output_final_state: also return the state after the last token.
    **options: static keywords passed through unchanged (scale, chunk_size, impl).

  Returns:
    What `op` returns on the whole arrays: (o [B, T, H, V], final_state [B, H, K, V] or None). The
    outputs are sharded like the inputs' specs (see the module docstring).
  """
  call = lambda *a, h0, seg: op(*a, initial_state=h0, segment_ids=seg,
                                output_final_state=output_final_state, **options)
  p = None
  if _consistent(q, k, v, g, initial_state, segment_ids):
    p = plan(q.shape[0], q.shape[2])
  if p is None:
    return call(q, k, v, g, h0=initial_state, seg=segment_ids)

  b, h = p.batch or None, p.heads or None
  x_spec, s_spec, h_spec = P(b, None, h, None), P(b, None), P(b, h, None, None)
  args, specs = [q, k, v, g], [x_spec] * 4
  has_h0, has_seg = initial_state is not None, segment_ids is not None
  if has_h0:
    args.append(initial_state)
    specs.append(h_spec)
  if has_seg:
    args.append(segment_ids)
    specs.append(s_spec)

  def per_shard(*a):
    h0 = a[4] if has_h0 else None
    seg = a[4 + has_h0] if has_seg else None
    o, state = call(*a[:4], h0=h0, seg=seg)
    return (o, state) if output_final_state else o

  explicit = set(compat.mesh_axes_of_type(p.mesh, "Explicit"))
  if explicit:  # shard_map requires Explicit inputs to carry its in_specs already
    only = lambda spec: P(*(_keep(e, explicit) for e in spec))
    args = [jax.sharding.reshard(a, only(s)) for a, s in zip(args, specs)]
  manual = set(compat.mesh_axes_of_type(p.mesh, "Manual"))
  out = compat.shard_map(
      per_shard, mesh=p.mesh, in_specs=tuple(specs),
      out_specs=(x_spec, h_spec) if output_final_state else x_spec,
      axis_names=frozenset(a for a in p.mesh.axis_names if a not in manual), check_vma=False)(*args)
  return out if output_final_state else (out, None)


def _keep(entry, axes: set[str]):
  """A PartitionSpec entry restricted to `axes` (None if nothing is left)."""
  names = (entry,) if isinstance(entry, str) else tuple(entry or ())
  kept = tuple(a for a in names if a in axes)
  return kept or None
