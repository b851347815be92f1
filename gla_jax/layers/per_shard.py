"""Run any op of the linear-attention family per shard: `jax.shard_map` over the mesh axes that split
the batch and the heads.

A Pallas kernel (impl "triton" on GPU, "tpu" on TPU) is an opaque custom call: GSPMD cannot partition
it, so on a multi-device mesh it would gather its inputs and compute the whole op on every device. The
ops (chunk_gla, chunk_simple_gla, chunk_linear_attn and their fused_recurrent forms) are independent per
batch row and per head, so `per_shard(op, layout)` runs `op` inside `jax.shard_map`, each device on its
[B/nb, T, H/nh, ·] slice, with no collective. The layout names every array argument's dimensions by
letter (the repo's letters: B batch, T time, H heads, K key dim, V value dim); `b` splits over the batch
axes, `h` over the heads axes, every other letter stays whole:

    q, k, GLA's g, o   "bthk" / "bthv"   P(batch, None, heads)
    simple-GLA's g     "bth"             P(batch, None, heads)       (a log decay per token and head)
    g_gamma            "h"               P(heads)                    (per-head arrays split with the heads)
    states             "bhkv" / "bhk"    P(batch, heads)             (S, and the pair (S, z))
    segment_ids        "bt"              P(batch)
    None                                 P(): the whole array on every device

`GLA_LAYOUT`, `SIMPLE_GLA_LAYOUT`, `LINEAR_ATTN_LAYOUT` hold these for the three ops and `LAYOUTS` maps
each op's name to its layout, so `per_shard(chunk_simple_gla)(q, k, v, g_gamma=g_gamma)` needs no spec.
(Under GQA the layer repeats k, v and the gate to all H query heads before the call, so the inputs split
alike; kv head j's copies stay on the shard of query heads j·G … j·G + G − 1.) Every impl goes through
it (the plain-jnp "xla" impl too): one code path, and XLA gets exactly the layout the kernels get.

Which mesh axes: the current mesh is `jax.sharding.get_abstract_mesh()` (set it with `jax.set_mesh`;
the legacy `with mesh:` context is not seen). The two logical activation names

    batch   the batch dimension B
    heads   the (query) head dimension H, the same name as the head side of the projections

are resolved like parameter names (`sharding.resolve`): through the active `nnx.logical_axis_rules`
(a rule may name one mesh axis or a tuple of them), else a mesh axis of that very name, else
unsplit. The trainer traces its steps with ("batch", ("data", "fsdp")) and ("heads", "tensor") active
(train/step.py). Without a mesh, on a one-device mesh, or when neither name resolves to a mesh axis of
size > 1 (axes already Manual, inside an enclosing shard_map, do not count), the op is called directly
(notebooks, `nnx.eval_shape`, single-device runs): nothing asked for a split — except under a mesh with
Explicit axes (`jax.make_mesh`'s default), whose shardings in the avals the Pallas kernels cannot lower:
there the op always runs in a shard_map (replicated when nothing splits).

Unsplittable dimensions (`on_unsplittable`): under a mesh no kernel runs on implicitly gathered inputs.
A mesh axis that does not divide its dimension (e.g. decoding one sequence on a data-parallel mesh) is,
with "replicate" (the default), dropped for that dimension (greedily, in rule order) with a warning
logged at trace time naming the dimension and the axis; the dimension is then replicated over that
axis inside the shard_map, i.e. those devices compute the same slice twice: the same result, less
parallel. When no axis is left the op still runs in the shard_map on replicated inputs, never as a
bare call. With "raise" it is a ValueError instead. An axis already used by the batch is silently left
to it (an axis splits one dimension only). Explicit-axis inputs are resharded to the specs first.

Rules and mesh are read at trace time; JAX's trace cache keys on the mesh but not on flax's logical
rules, so trace a function under the rules it will always run with (the trainer's steps do).

`check_vma=False`: the body has no collectives, and every output varies exactly over the axes its
out_spec names (the inputs are replicated over the others and the op is deterministic), so there is
nothing for the check to find; with it on, the plain-jnp forms fail to trace (their `lax.scan`s start
from invariant zero carries while the carried state varies per shard). Gradients are checked against
single-device ones in tests/gla_jax/test_per_shard.py, replicated fallbacks included.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
from jax.sharding import PartitionSpec as P

from gla_jax.layers.sharding import resolve
from pallas_kernels import compat

BATCH, HEADS = "batch", "heads"  # logical names of the activation dimensions split per shard
SPLIT_LETTERS = {"b": BATCH, "h": HEADS}  # layout letter → the logical name whose mesh axes split it
ON_UNSPLITTABLE = ("replicate", "raise")

log = logging.getLogger(__name__)

# A layout: a string of dimension letters ("bthk"), None (replicated), or a pytree of them that is a
# prefix of the argument's pytree (a string covering a subtree applies to each array in it, by its
# first rank letters: "bhkv" covers S [B, H, K, V] and the pair (S, z [B, H, K])).
Layout = Any


def _is_layout_leaf(x) -> bool:
  return x is None or isinstance(x, str)


def _is_array(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


@dataclasses.dataclass(frozen=True)
class OpLayout:
  """The per-dimension layout of one op's array arguments and outputs.

  Fields:
    positional: names of the positional parameters, in order (`("q", "k", "v", "g")`).
    inputs: layout per parameter name (positional or keyword). A keyword argument not listed here is
      static (scale, chunk_size, impl, …) and passed through unchanged; it must not hold an array.
    out: layout of the output pytree (a prefix of it: "bhkv" covers a state that is None, S or (S, z)).

  Example:
    >>> OpLayout(positional=("q", "k", "v"), inputs={"q": "bthk", "k": "bthk", "v": "bthv"},
    ...          out=("bthv", "bhkv"))
  """

  positional: tuple[str, ...]
  inputs: Mapping[str, Layout]
  out: Layout

  def __post_init__(self):
    object.__setattr__(self, "positional", tuple(self.positional))
    object.__setattr__(self, "inputs", dict(self.inputs))
    missing = [n for n in self.positional if n not in self.inputs]
    if missing:
      raise ValueError(f"OpLayout: positional parameters {missing} have no entry in inputs")
    for where, layout in [*self.inputs.items(), ("out", self.out)]:
      for leaf in jax.tree.leaves(layout, is_leaf=_is_layout_leaf):
        if leaf is not None and not (isinstance(leaf, str) and re.fullmatch(r"[a-z]*", leaf)
                                     and len(set(leaf)) == len(leaf)):
          raise ValueError(f"OpLayout: {where}'s layout must be a string of distinct lowercase "
                           f"dimension letters (or None), got {leaf!r}")


_STATE = "bhkv"  # S [B, H, K, V]; as a prefix also (S, z [B, H, K])
GLA_LAYOUT = OpLayout(
    positional=("q", "k", "v", "g"),
    inputs={"q": "bthk", "k": "bthk", "v": "bthv", "g": "bthk", "initial_state": _STATE,
            "segment_ids": "bt"},
    out=("bthv", _STATE))
SIMPLE_GLA_LAYOUT = OpLayout(
    positional=("q", "k", "v", "g"),
    inputs={"q": "bthk", "k": "bthk", "v": "bthv", "g": "bth", "g_gamma": "h",
            "initial_state": _STATE, "segment_ids": "bt"},
    out=("bthv", _STATE))
LINEAR_ATTN_LAYOUT = OpLayout(
    positional=("q", "k", "v"),
    inputs={"q": "bthk", "k": "bthk", "v": "bthv", "initial_state": _STATE, "segment_ids": "bt"},
    out=("bthv", _STATE))
LAYOUTS: dict[str, OpLayout] = {
    "chunk_gla": GLA_LAYOUT, "fused_recurrent_gla": GLA_LAYOUT,
    "chunk_simple_gla": SIMPLE_GLA_LAYOUT, "fused_recurrent_simple_gla": SIMPLE_GLA_LAYOUT,
    "chunk_linear_attn": LINEAR_ATTN_LAYOUT, "fused_recurrent_linear_attn": LINEAR_ATTN_LAYOUT,
}


def _op_name(op) -> str | None:
  fn = op.func if isinstance(op, functools.partial) else op
  return getattr(fn, "__name__", None)


def layout_of(op: Callable) -> OpLayout:
  """The layout registered in `LAYOUTS` under `op`'s name (a functools.partial: its function's)."""
  name = _op_name(op)
  if name not in LAYOUTS:
    raise ValueError(f"per_shard: no layout registered for op {name or op!r}; pass one "
                     f"(an OpLayout) or use one of {sorted(LAYOUTS)}")
  return LAYOUTS[name]


# ---------------------------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """How one call is split: mesh axes for B and for H (possibly empty: replicated), and the mesh."""

  mesh: jax.sharding.AbstractMesh
  batch: tuple[str, ...]
  heads: tuple[str, ...]

  @property
  def batch_shards(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.batch)

  @property
  def head_shards(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.heads)

  def spec(self, letters: str | None) -> P:
    """The PartitionSpec of an array laid out as `letters` (trailing unsplit dimensions left out)."""
    axes = {"b": self.batch or None, "h": self.heads or None}
    entries = [axes.get(c) for c in letters or ""]
    while entries and entries[-1] is None:
      entries.pop()
    return P(*entries)


def _wanted(name: str, mesh) -> tuple[str, ...]:
  """The mesh axes the rules give logical `name`, minus missing, size-1 and Manual ones."""
  rule = resolve((name,), mesh)[0]
  manual = set(compat.mesh_axes_of_type(mesh, "Manual"))
  return tuple(a for a in ((rule,) if isinstance(rule, str) else tuple(rule or ()))
               if a in mesh.axis_names and a not in manual and mesh.shape[a] > 1)


def _axes_for(name: str, size: int | None, mesh, taken: set[str], on_unsplittable: str,
              what: str) -> tuple[str, ...]:
  """Mesh axes that split a dimension of `size` named `name`: the wanted axes, minus those already
  `taken` and those that would not divide `size` (warned about, or raised for)."""
  if size is None:
    return ()
  axes, split = [], 1
  for axis in _wanted(name, mesh):
    if axis in taken:
      log.info("%s: mesh axis %r already splits the batch; not splitting %s over it", what, axis, name)
      continue
    if size % (split * mesh.shape[axis]):
      msg = (f"{what}: {name}={size} does not divide by mesh axis {axis!r} (size {mesh.shape[axis]}) "
             f"on top of {tuple(axes)}")
      if on_unsplittable == "raise":
        raise ValueError(f"{msg}; pass on_unsplittable='replicate' to compute it replicated over "
                         "that axis, or choose sizes the mesh divides")
      log.warning("%s; replicating %s over that axis (each of its devices computes the same slice)",
                  msg, name)
      continue
    axes.append(axis)
    split *= mesh.shape[axis]
  return tuple(axes)


def _split(batch_size, num_heads, mesh, on_unsplittable, what) -> ShardPlan | None:
  """The split, a plan with no axes (replicate explicitly), or None (no mesh, nothing asked)."""
  if on_unsplittable not in ON_UNSPLITTABLE:
    raise ValueError(f"on_unsplittable must be one of {ON_UNSPLITTABLE}, got {on_unsplittable!r}")
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if mesh is None or mesh.empty:
    return None
  # Explicit axes put shardings in the avals, which the Pallas kernels cannot lower (measured: "Length of
  # sharding.spec (2) must be equal to aval's ndim (1)" on an H200): such calls always run in a shard_map,
  # where the axes are Manual, replicated when nothing splits.
  explicit = bool(compat.mesh_axes_of_type(mesh, "Explicit"))
  if mesh.size == 1 or not ((batch_size is not None and _wanted(BATCH, mesh)) or
                            (num_heads is not None and _wanted(HEADS, mesh))):
    return ShardPlan(mesh=mesh, batch=(), heads=()) if explicit else None
  batch = _axes_for(BATCH, batch_size, mesh, set(), on_unsplittable, what)
  heads = _axes_for(HEADS, num_heads, mesh, set(batch), on_unsplittable, what)
  return ShardPlan(mesh=mesh, batch=batch, heads=heads)


def plan(batch_size: int | None, num_heads: int | None, mesh=None, *,
         on_unsplittable: str = "replicate") -> ShardPlan | None:
  """The split of a [B, ·, H, ·] call on `mesh` (default: the current abstract mesh), or None when
  nothing splits (no mesh, no rule, or no axis divides; `per_shard` then replicates explicitly if a
  rule asked for a split). A size of None: the call has no such dimension."""
  p = _split(batch_size, num_heads, mesh, on_unsplittable, "per_shard")
  return p if p is not None and (p.batch or p.heads) else None


# ---------------------------------------------------------------------------------------------- calls


class _Mismatch(Exception):
  """The arguments do not fit the layout: the op is called directly to raise its own error."""


class _Letters:
  """The letters of one argument's array leaves (a wrapper, so that it is a leaf of any pytree)."""

  def __init__(self, letters: list):
    self.letters = letters


def _leaf_letters(layout, value, name: str) -> list[str | None]:
  """Letters per array leaf of one argument (None: replicated)."""
  if value is None:
    return []
  if layout is None:
    return [None] * len(jax.tree.leaves(value))
  if isinstance(layout, str):
    if _is_array(value):  # the argument itself: one letter per dimension
      if value.ndim != len(layout):
        raise _Mismatch(f"{name} has rank {value.ndim}, its layout {layout!r} {len(layout)}")
      return [layout]
    out = []
    for leaf in jax.tree.leaves(value):  # a subtree: each array takes the first rank letters
      if not _is_array(leaf) or leaf.ndim > len(layout):
        raise _Mismatch(f"{name}: {leaf!r} does not fit layout {layout!r}")
      out.append(layout[:leaf.ndim])
    return out
  try:
    parts = jax.tree.map(lambda lay, sub: _Letters(_leaf_letters(lay, sub, name)), layout, value,
                         is_leaf=_is_layout_leaf)
  except (ValueError, TypeError) as e:  # the argument's structure does not match the layout's
    raise _Mismatch(f"{name}: {e}") from None
  return [c for part in jax.tree.leaves(parts) for c in part.letters]


@dataclasses.dataclass
class _Bound:
  """One call split into array leaves (traced through the shard_map) and everything else (static)."""

  values: dict[str, Any]  # every argument by name
  arrays: list  # the array leaves, in argument then pytree order
  letters: list  # their layouts (None: replicated)
  sizes: dict[str, int]  # letter → dimension size, consistent over all arrays

  def rebuild(self, layout: OpLayout, arrays) -> tuple[tuple, dict]:
    """(args, kwargs) of the op with the array leaves replaced by `arrays`."""
    it = iter(arrays)
    values = {}
    for name, value in self.values.items():
      if name in layout.inputs:
        value = jax.tree.map(lambda _: next(it), value)
      values[name] = value
    n = next((i for i, p in enumerate(layout.positional) if p not in values), len(layout.positional))
    args = tuple(values.pop(p) for p in layout.positional[:n])
    return args, values


def _bind(layout: OpLayout, what: str, args, kwargs) -> _Bound:
  if len(args) > len(layout.positional):
    raise ValueError(f"{what}: takes at most {len(layout.positional)} positional arguments "
                     f"{layout.positional}, got {len(args)}")
  values = dict(zip(layout.positional, args))
  for name, value in kwargs.items():
    if name in values:
      raise ValueError(f"{what}: got {name!r} both positionally and as a keyword")
    if name not in layout.inputs and any(_is_array(x) for x in jax.tree.leaves(value)):
      raise ValueError(f"{what}: argument {name!r} holds an array but the layout gives it no entry; "
                       "give it one (dimension letters, or None to replicate it)")
    values[name] = value
  bound = _Bound(values=values, arrays=[], letters=[], sizes={})
  conflicts = []
  for name, value in values.items():
    if name not in layout.inputs:
      continue
    leaves = jax.tree.leaves(value)
    letters = _leaf_letters(layout.inputs[name], value, name)
    for leaf, ls in zip(leaves, letters):
      if not _is_array(leaf):
        raise _Mismatch(f"{name} holds {leaf!r}, not an array")
      for c, n in zip(ls or "", leaf.shape):
        if bound.sizes.setdefault(c, n) != n:
          conflicts.append(f"{name}'s {c}={n} (elsewhere {bound.sizes[c]})")
    bound.arrays += leaves
    bound.letters += letters
  if conflicts:
    raise _Mismatch("inconsistent dimensions: " + ", ".join(conflicts))
  return bound


def per_shard(op: Callable, layout: OpLayout | None = None, *,
              on_unsplittable: str = "replicate") -> Callable:
  """`op` run per shard under the current mesh: B over the "batch" axes, H over the "heads" axes.

  Args:
    op: chunk_gla, chunk_simple_gla, chunk_linear_attn, a fused_recurrent form, or anything with
      one of their contracts, returning (o [B, T, H, V], final state or None).
    layout: the op's `OpLayout`; default `layout_of(op)` (by the op's name, see `LAYOUTS`).
    on_unsplittable: "replicate" (warn at trace time and compute that dimension replicated over the
      axis that does not divide it) or "raise" (ValueError).

  Returns:
    A function with `op`'s signature returning what `op` returns on the whole arrays, the outputs
    sharded by the layout's `out` (see the module docstring).

  Example:
    >>> with jax.set_mesh(mesh), nnx.logical_axis_rules((("batch", "data"), ("heads", "tensor"))):
    ...   o, ht = per_shard(chunk_simple_gla)(q, k, v, g_gamma=g_gamma, output_final_state=True)
  """
  layout = layout_of(op) if layout is None else layout
  if on_unsplittable not in ON_UNSPLITTABLE:
    raise ValueError(f"on_unsplittable must be one of {ON_UNSPLITTABLE}, got {on_unsplittable!r}")
  what = f"per_shard({_op_name(op)})"

  def call(*args, **kwargs):
    try:
      bound = _bind(layout, what, args, kwargs)
    except _Mismatch as e:
      return _direct_or_raise(op, what, e, args, kwargs)
    p = _split(bound.sizes.get("b"), bound.sizes.get("h"), None, on_unsplittable, what)
    if p is None:
      return op(*args, **kwargs)
    specs = [p.spec(ls) for ls in bound.letters]
    explicit = set(compat.mesh_axes_of_type(p.mesh, "Explicit"))
    arrays = bound.arrays
    if explicit:  # shard_map requires Explicit inputs to carry its in_specs already
      only = lambda spec: P(*(_keep(e, explicit) for e in spec))
      arrays = [jax.sharding.reshard(a, only(s)) for a, s in zip(arrays, specs)]

    def body(*shards):
      a, kw = bound.rebuild(layout, shards)
      return op(*a, **kw)

    out_specs = jax.tree.map(p.spec, layout.out, is_leaf=_is_layout_leaf)
    manual = set(compat.mesh_axes_of_type(p.mesh, "Manual"))
    return compat.shard_map(
        body, mesh=p.mesh, in_specs=tuple(specs), out_specs=out_specs,
        axis_names=frozenset(a for a in p.mesh.axis_names if a not in manual),
        check_vma=False)(*arrays)

  return call


def _direct_or_raise(op, what, mismatch, args, kwargs):
  """A call that does not fit the layout: the op's own error if it raises one, else ours under a mesh."""
  out = op(*args, **kwargs)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size == 1 or not (_wanted(BATCH, mesh) or _wanted(HEADS, mesh)):
    return out  # nothing asked for a split: a direct call is what would have run anyway
  raise ValueError(f"{what}: the arguments do not fit the op's layout, so it cannot run per shard: "
                   f"{mismatch}")


def _keep(entry, axes: set[str]):
  """A PartitionSpec entry restricted to `axes` (None if nothing is left)."""
  names = (entry,) if isinstance(entry, str) else tuple(entry or ())
  kept = tuple(a for a in names if a in axes)
  return kept or None
