"""`scan_layers`: runs of identical layers stored with stacked params and run by one `lax.scan` each.

With `config.scan_layers` the trunk (gla_jax/models/lm.py) groups consecutive layers that build the same
Block — same mixer kind, same static options — into runs (`layer_runs(config)`). A run of n layers is ONE
Block whose params have a leading axis of size n (logical axis name "layers", replicated by train/mesh.py),
initialised under one `nnx.vmap` and applied by one `jax.lax.scan`, so tracing, compiling and initialising
cost about the same at 2 layers as at 24 (each parameter's init is one batched kernel per run, not one per
layer). Per-layer data goes in as scanned inputs:

    GLA, RetNet, Mamba-2, Transformer, … (24 layers)    one run (0 … 23)
    GLA with SWA at layers 5, 11 (a hybrid)             (0 … 4) (5) (6 … 10) (11) (12 … 23)
    HGRN2 with use_lower_bound                          (0) (1 … L−1): fla applies no bound at layer 0;
                                                        layer i's row of the model's lower bounds is data
    Lightning                                           one run per layer: its decay is a static (numpy)
                                                        function of layer_idx in lightning.py, so layers
                                                        differ statically (correct, but no stacking gain)

Param layouts (pure dicts as `nnx.to_pure_dict` gives them): unscanned `layers/{i}/<block params>`,
scanned `runs/{r}/<block params>` with every leaf [n_r, …]; the rest (embeddings, norm, lm_head,
lower_bounds) is the same in both. `stack_layers` / `unstack_layers` convert between them (fla checkpoints
go through the unscanned layout, gla_jax/convert/fla.py). Decode caches follow the params: a scanned
model's `ModelCache.layers` holds one cache per run, each leaf [n_r, …] (`ModelCache.stacked`).

Example:
    >>> cfg = presets.gla_tiny(num_hidden_layers=4, scan_layers=True)
    >>> layer_runs(cfg)
    ((0, 1, 2, 3),)
    >>> flat = unstack_layers(nnx.to_pure_dict(nnx.state(CausalLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)), cfg)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gla_jax.layers import remat as remat_lib

LAYERS_AXIS = "layers"  # logical name of the stacked axis (train/mesh.py replicates it)

# mixer kinds whose math depends on the static layer index beyond what `_layer_key` lists: every layer
# of such a kind is a run of its own (Lightning: lightning_decay(num_heads, layer_idx, num_layers))
INDEX_DEPENDENT_KINDS = ("lightning",)


def _layer_key(config, i: int) -> tuple:
  """What decides layer i's static structure: its kind, its attention spec (hybrids), and for the kinds
  that read their index, the part of it they read."""
  kind = config.layer_kinds()[i]
  key: tuple = (kind, config.attn_spec(i))
  if kind in INDEX_DEPENDENT_KINDS:
    key += (i,)
  if kind == "hgrn2" and getattr(config, "use_lower_bound", False):
    key += (i == 0,)  # HGRN2Attention.use_lower_bound is False at layer 0 (fla's)
  return key


def layer_runs(config) -> tuple[tuple[int, ...], ...]:
  """Consecutive layers with the same static structure, in order: ((0, 1, …), (k, …), …).

  Every layer index appears once; a run's layers all build the same Block graph (tests check it for
  every mixer kind)."""
  runs: list[list[int]] = []
  prev = None
  for i in range(config.num_hidden_layers):
    key = _layer_key(config, i)
    if runs and key == prev:
      runs[-1].append(i)
    else:
      runs.append([i])
    prev = key
  return tuple(tuple(r) for r in runs)


# ------------------------------------------------------------------------------------------------
# building and applying a stacked run
# ------------------------------------------------------------------------------------------------


def stacked_module(make: Callable[[nnx.Rngs], nnx.Module], n: int, *, rngs: nnx.Rngs) -> nnx.Module:
  """n modules `make(rngs)` as one module whose variables have a leading axis n named "layers"
  (one nnx.vmap over n split keys: each parameter is initialised by one batched kernel)."""
  def one(key):
    return make(nnx.Rngs(params=key))
  keys = jax.random.split(rngs.params(), n)
  return nnx.vmap(one, in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS})(keys)


@functools.lru_cache(maxsize=256)
def _template_cached(make: Callable, config, layer_idx: int) -> nnx.Module:
  return nnx.eval_shape(lambda: make(config, layer_idx, nnx.Rngs(0)))


def template(make: Callable, config, layer_idx: int) -> nnx.Module:
  """An abstract (shapes only) unstacked module `make(config, layer_idx, rngs)`: the graph a scan body
  merges each layer's slice into, and what per-layer statics (init_cache) are read from. Cached."""
  try:
    return _template_cached(make, config, layer_idx)
  except TypeError:  # an unhashable config: build it each time (a trace-time cost only)
    return nnx.eval_shape(lambda: make(config, layer_idx, nnx.Rngs(0)))


def remat_wrap(fn: Callable, config) -> Callable:
  """`fn` (pure) rematerialised per config.remat / remat_policy, as lm.py's `_remat` does per block."""
  policy = getattr(config, "remat_policy", "full")
  if not config.remat or policy == "none":
    return fn
  chosen = remat_lib.policy(policy)
  return jax.checkpoint(fn, prevent_cse=False, **({} if chosen is None else {"policy": chosen}))


def scan_run(stacked: nnx.Module, layer: nnx.Module, carry, xs, body: Callable, *, remat_config=None):
  """lax.scan of `body(layer_module, carry, x) -> (carry, y)` over the n layers of `stacked`.

  `layer`: the unstacked template (its graph); `xs`: per-layer inputs, leaves [n, …] (or None leaves).
  With `remat_config` the per-layer step is rematerialised by its remat / remat_policy.
  Returns (carry, ys with leaves [n, …]).
  """
  graphdef = nnx.graphdef(layer)
  params = nnx.to_pure_dict(nnx.state(stacked))

  def step(c, layer_params, x):
    return body(nnx.merge(graphdef, layer_params), c, x)

  if remat_config is not None:
    step = remat_wrap(step, remat_config)
  return jax.lax.scan(lambda c, px: step(c, *px), carry, (params, xs))


def stack_cache(cache: Any, n: int) -> Any:
  """One layer's (empty) cache → the run's: every leaf repeated on a new leading axis of size n."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (n, *x.shape)), cache)


def cache_slice_shapes(cache: Any) -> Any:
  """A stacked cache → the same cache type over ShapeDtypeStructs without the leading axis (to read
  static properties such as KVCache.max_len without computing anything)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), cache)


# ------------------------------------------------------------------------------------------------
# param layouts
# ------------------------------------------------------------------------------------------------


def _child(tree: Mapping, i: int):
  """tree[i], also when the keys are strings (a restored checkpoint's)."""
  if i in tree:
    return tree[i]
  if str(i) in tree:
    return tree[str(i)]
  raise ValueError(f"the params have no layer/run {i} (keys {sorted(map(str, tree))[:8]})")


def stack_layers(params: Mapping, config) -> dict:
  """Unscanned pure params (`layers/{i}/…`) → the scanned layout of `config` (`runs/{r}/…`, [n_r, …]).

  Works for params, gradients or Adam moments alike (any pure dict with the params' structure); numpy
  leaves stay numpy. Raises ValueError when the layout is not the unscanned one.
  """
  if "layers" not in params or "runs" in params:
    raise ValueError("stack_layers needs unscanned params (a 'layers' entry, no 'runs'); got keys "
                     f"{sorted(params)} (already scanned? see model.scan_layers)")
  layers = params["layers"]
  runs = {}
  for r, run in enumerate(layer_runs(config)):
    per_layer = [_child(layers, i) for i in run]
    runs[r] = jax.tree.map(lambda *xs: _stack(xs), *per_layer)
  out = {k: v for k, v in params.items() if k != "layers"}
  out["runs"] = runs
  return out


def unstack_layers(params: Mapping, config) -> dict:
  """Scanned pure params (`runs/{r}/…`, leaves [n_r, …]) → the unscanned layout (`layers/{i}/…`).

  The inverse of `stack_layers`; raises ValueError when the layout is not the scanned one of `config`.
  """
  if "runs" not in params or "layers" in params:
    raise ValueError("unstack_layers needs scanned params (a 'runs' entry, no 'layers'); got keys "
                     f"{sorted(params)} (not scanned? see model.scan_layers)")
  layers = {}
  for r, run in enumerate(layer_runs(config)):
    stacked = _child(params["runs"], r)
    for leaf in jax.tree.leaves(stacked):
      if leaf.shape[:1] != (len(run),):
        raise ValueError(f"run {r} (layers {run[0]}…{run[-1]}) needs leaves [{len(run)}, …], got "
                         f"{tuple(leaf.shape)}: the params are of another config")
    for j, i in enumerate(run):
      layers[i] = jax.tree.map(lambda x, j=j: _index(x, j), stacked)
  out = {k: v for k, v in params.items() if k != "runs"}
  out["layers"] = layers
  return out


def _stack(xs):
  """Leaves of n layers → one [n, …] leaf (jax arrays, numpy arrays, or ShapeDtypeStructs)."""
  if all(isinstance(x, jax.ShapeDtypeStruct) for x in xs):
    return jax.ShapeDtypeStruct((len(xs), *xs[0].shape), xs[0].dtype, sharding=None)
  if all(isinstance(x, np.ndarray) for x in xs):
    return np.stack(xs)
  return jnp.stack(xs)


def _index(x, j: int):
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
  return x[j]
