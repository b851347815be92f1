"""Train state, optimizer, and initialisation straight into the sharded layout.

The state is a plain pytree of arrays (pure dicts, no nnx objects), so optax, orbax and `jax.jit` shardings
all see the same structure:

    TrainState(step int32[], params {path: array}, opt_state optax, rng uint32[2], skipped int32[])

The model's graph (`graphdef`) and its non-parameter variables (`rest`, e.g. RNG counters; empty for the
gla_jax models) stay outside; `nnx.merge(graphdef, params, rest)` rebuilds the module inside the jitted step.

Weight decay (our choice, the usual LM recipe; fla's trainer decays everything): matrices decay, while norm
weights, biases (all 1-D params) and the token embedding (tied or not) do not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train import mesh as mesh_lib
from train.config import OptimConfig


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 [] optimizer steps taken (rejected non-finite steps included)
  params: Any  # pure dict of float arrays (param_dtype)
  opt_state: Any  # optax state, same sharding as params where shapes match
  rng: jax.Array  # uint32 [2] raw key; split once per step (for stochastic layers such as dropout)
  skipped: jax.Array  # int32 [] steps whose loss or gradient was non-finite (update rejected)


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """What is needed to rebuild the module from a params dict inside jit."""

  graphdef: Any
  rest: Any  # pure dict of the non-Param variables (usually empty)
  logical_names: Any  # pure dict, same structure as params: tuple of names or None

  def merge(self, params):
    return nnx.merge(self.graphdef, params, self.rest)


# ------------------------------------------------------------------------------------------------ optimizer


def lr_schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup 0 → lr over warmup_steps, then cosine to lr · min_lr_ratio at total_steps."""
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
      end_value=config.lr * config.min_lr_ratio)


def decay_mask(params: Any) -> Any:
  """True for params that get weight decay: ≥ 2-D per layer and not an embedding table (a scan_layers
  run's params, `runs/…`, have one leading stacked axis that does not count)."""
  def keep(path, x):
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    stacked = 1 if keys and keys[0] == "runs" else 0
    return x.ndim - stacked >= 2 and "embed" not in "/".join(keys).lower()
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  parts = []
  if config.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.clip_norm))
  parts.append(optax.adamw(lr_schedule(config, total_steps), b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decay_mask))
  return optax.chain(*parts)


# ------------------------------------------------------------------------------------------------ init


def abstract_model(build: Callable[[nnx.Rngs], nnx.Module]) -> tuple[ModelDef, Any]:
  """Traces `build` without allocating: the ModelDef and a pure dict of ShapeDtypeStructs for the params."""
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  names = mesh_lib.logical_names(params)
  model_def = ModelDef(graphdef=graphdef, rest=nnx.to_pure_dict(rest), logical_names=names)
  return model_def, nnx.to_pure_dict(params)


def state_shardings(model_def: ModelDef, abstract_params: Any, tx: optax.GradientTransformation,
                    mesh: Mesh) -> TrainState:
  """NamedShardings for every leaf of the TrainState.

  Params follow the logical rules; optimizer leaves with a param's shape take that param's sharding (Adam's
  mu and nu), every other leaf (counts, scalars) is replicated.
  """
  specs = mesh_lib.param_specs(abstract_params, model_def.logical_names, mesh)
  param_sh = mesh_lib.named(mesh, specs)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_sh = _like_params(abstract_opt, abstract_params, param_sh, mesh)
  rep = NamedSharding(mesh, P())
  return TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep, skipped=rep)


def _like_params(tree, abstract_params, param_sh, mesh):
  """Sharding for optimizer-state leaves: a subtree shaped like params gets the params' shardings."""
  param_struct = jax.tree.structure(abstract_params)
  rep = NamedSharding(mesh, P())

  def visit(node):
    if jax.tree.structure(node) == param_struct:
      return param_sh
    if isinstance(node, optax.MaskedNode) or node is None:
      return node
    if isinstance(node, (jax.ShapeDtypeStruct, jax.Array)):
      return rep
    if isinstance(node, tuple) and hasattr(node, "_fields"):  # NamedTuple optax states
      return type(node)(*[visit(c) for c in node])
    if isinstance(node, (tuple, list)):
      return type(node)(visit(c) for c in node)
    if isinstance(node, dict):
      return {k: visit(v) for k, v in node.items()}
    return jax.tree.map(lambda _: rep, node)
  return visit(tree)


def init_state(build: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation, mesh: Mesh,
               seed: int) -> tuple[TrainState, ModelDef, TrainState]:
  """Initialises params and optimizer state already sharded: one jit with out_shardings, so each device
  computes only its own shards (threefry is partitionable) and no device ever holds the full model.

  Returns (state, model_def, state_shardings).
  """
  model_def, abstract_params = abstract_model(build)
  shardings = state_shardings(model_def, abstract_params, tx, mesh)

  def init_fn(key):
    with nnx.use_eager_sharding(False):
      model = build(nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(key, 1)).astype(jnp.uint32),
                      skipped=jnp.zeros((), jnp.int32))

  key = jax.random.key(seed)
  state = jax.jit(init_fn, out_shardings=shardings)(key)
  return state, model_def, shardings


def abstract_state(state_or_shardings: TrainState, abstract: TrainState) -> TrainState:
  """ShapeDtypeStructs carrying target shardings (for orbax restore onto any mesh)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                      state_or_shardings)


def eval_shape_state(build: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation,
                     seed: int = 0) -> TrainState:
  """The TrainState's shapes and dtypes without computing anything."""
  def init_fn(key):
    with nnx.use_eager_sharding(False):
      model = build(nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jnp.zeros((2,), jnp.uint32), skipped=jnp.zeros((), jnp.int32))
  return jax.eval_shape(init_fn, jax.random.key(seed))


def param_count(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
