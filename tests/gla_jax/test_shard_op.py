"""The GLA op runs per shard under a mesh (gla_jax/layers/shard_op.py), on 8 fake CPU devices.

A recording implementation sees the per-shard shapes; the layer's outputs, cache states and parameter
gradients on the mesh equal the single-device ones; indivisible dimensions fall back to replication;
without a mesh (or rules) nothing is wrapped.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec as P

from gla_jax.layers import GatedLinearAttention
from gla_jax.layers import shard_op
from pallas_kernels.gla import chunk_gla
from tests.gla_jax.per_shard_testing import NAME, assert_trees_close, recording_impl

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")

AXES = ("data", "fsdp", "tensor")
RULES = (("batch", ("data", "fsdp")), ("heads", "tensor"), ("kv", "tensor"))


def _mesh(shape, axis_type="Auto", names=AXES):
  n = int(np.prod(shape))
  return jax.make_mesh(shape, names, axis_types=(getattr(AxisType, axis_type),) * len(shape),
                       devices=jax.devices()[:n])


def _primitives(fn, *args):
  return [e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns]


def _grads_and_outputs(run, graphdef, params, *args):
  """jit(value_and_grad) of Σ out·sin(out) over every output of `run(layer, *args)`."""
  def loss(params):
    outs = run(nnx.merge(graphdef, params), *args)
    return sum(jnp.sum(o * jnp.sin(o)) for o in outs), outs
  (_, outs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return jax.device_get(outs), jax.device_get(grads)


def _on_mesh(mesh, fn, *args):
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    return fn(*args)


# ---------------------------------------------------------------------------------------------- plans


def test_plan_resolves_rules_and_falls_back_for_indivisible_dims():
  mesh = _mesh((2, 2, 2)).abstract_mesh
  with nnx.logical_axis_rules(RULES):
    full = shard_op.plan(8, 4, mesh)
    assert (full.batch, full.heads, full.batch_shards, full.head_shards) == (("data", "fsdp"), ("tensor",), 4, 2)
    odd = shard_op.plan(6, 3, mesh)  # 6 splits over data only; 3 heads do not split over tensor
    assert (odd.batch, odd.heads) == (("data",), ())
    assert shard_op.plan(1, 3, mesh) is None  # one sequence, odd heads: nothing to split → direct call
  with nnx.logical_axis_rules((("batch", "tensor"), ("heads", "tensor"))):
    assert shard_op.plan(8, 4, mesh).heads == ()  # an axis splits one dimension only (the batch first)
  assert shard_op.plan(8, 4, mesh) is None  # no rules, and no mesh axis named batch / heads
  named = _mesh((4, 2), names=("batch", "heads")).abstract_mesh  # names that are mesh axes need no rule
  assert (shard_op.plan(8, 4, named).batch, shard_op.plan(8, 4, named).heads) == (("batch",), ("heads",))
  with nnx.logical_axis_rules(RULES):
    assert shard_op.plan(8, 4, _mesh((1, 1, 1)).abstract_mesh) is None
  assert shard_op.plan(8, 4) is None  # no mesh set


def test_plan_inside_a_shard_map_leaves_its_manual_axes_alone():
  seen = []

  def body(x):
    seen.append(shard_op.plan(8, 4))
    return x

  mesh = _mesh((2, 2, 2))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    jax.make_jaxpr(jax.shard_map(body, in_specs=P("data"), out_specs=P("data"), axis_names={"data"}))(
        jnp.zeros((8,)))
  assert (seen[0].batch, seen[0].heads) == (("fsdp",), ("tensor",))


# ---------------------------------------------------------------------------------------------- the layer


def _prefill_continue_decode(layer, x, seg):
  """Packed prefill (chunk_gla, segment_ids, final state) → continuation from its cache (chunk_gla with
  an initial state) → one decode step (fused_recurrent_gla). Returns every output and the last state."""
  y1, c1 = layer(x[:, :32], segment_ids=seg, return_cache=True)
  y2, c2 = layer(x[:, 32:48], cache=c1)
  y3, c3 = layer(x[:, 48:49], cache=c2)
  return y1, y2, y3, c3.state


def test_layer_on_2x2x2_mesh_equals_single_device_and_runs_per_shard():
  B, H, K, V = 8, 4, 8, 16
  with recording_impl() as calls:
    layer = GatedLinearAttention(64, num_heads=H, num_kv_heads=2, use_short_conv=True, impl=NAME,
                                 chunk_size=16, init_std=0.2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    x = jax.random.normal(jax.random.key(1), (B, 49, 64))
    seg = jnp.asarray(np.repeat([[0] * 11 + [1] * 21], B, axis=0), jnp.int32)
    want = _grads_and_outputs(_prefill_continue_decode, graphdef, params, x, seg)
    assert set(calls) == {((B, 32, H, K), (B, 32, H, V), None, (B, 32)),
                          ((B, 16, H, K), (B, 16, H, V), (B, H, K, V), None)}
    calls.clear()
    mesh = _mesh((2, 2, 2))
    got = _on_mesh(mesh, _grads_and_outputs, _prefill_continue_decode, graphdef, params, x, seg)
    # each device sees its 2 rows and 2 heads (B / (data·fsdp), H / tensor)
    assert set(calls) == {((2, 32, 2, K), (2, 32, 2, V), None, (2, 32)),
                          ((2, 16, 2, K), (2, 16, 2, V), (2, 2, K, V), None)}
    prims = _on_mesh(mesh, _primitives, lambda x: _prefill_continue_decode(layer, x, seg), x)
  assert prims.count("shard_map") == 3  # the decode step's fused_recurrent_gla too
  assert_trees_close(got, want, 1e-5)


def test_indivisible_batch_and_heads_fall_back_to_replication():
  B, H = 6, 3  # on (2, 2, 2): B splits over data only, H not at all
  with recording_impl() as calls:
    layer = GatedLinearAttention(48, num_heads=H, impl=NAME, chunk_size=16, init_std=0.2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    x = jax.random.normal(jax.random.key(2), (B, 32, 48))
    run = lambda layer, x: (layer(x)[0],)
    want = _grads_and_outputs(run, graphdef, params, x)
    calls.clear()
    got = _on_mesh(_mesh((2, 2, 2)), _grads_and_outputs, run, graphdef, params, x)
  assert set(calls) == {((3, 32, 3, 8), (3, 32, 3, 16), None, None)}
  assert_trees_close(got, want, 1e-5)


def test_not_wrapped_without_a_mesh_or_rules():
  layer = GatedLinearAttention(64, num_heads=4, chunk_size=16, rngs=nnx.Rngs(0))
  x = jnp.zeros((8, 16, 64))
  # a new function each time: JAX's trace cache keys on the mesh but not on flax's logical rules
  fwd = lambda: lambda x: layer(x)[0]
  assert "shard_map" not in _primitives(fwd(), x)  # notebooks, single device
  with jax.set_mesh(_mesh((2, 2, 2))):
    assert "shard_map" not in _primitives(fwd(), x)  # no rules: nothing names a mesh axis
  assert "shard_map" not in _on_mesh(_mesh((1, 1, 1)), _primitives, fwd(), x)
  assert "shard_map" in _on_mesh(_mesh((2, 2, 2)), _primitives, fwd(), x)
  # nnx.eval_shape under the mesh: built and called abstractly, per shard
  make = lambda: GatedLinearAttention(64, num_heads=4, chunk_size=16, rngs=nnx.Rngs(0))(x)[0]
  out = _on_mesh(_mesh((2, 2, 2)), nnx.eval_shape, make)
  assert out.shape == (8, 16, 64)


def test_explicit_mesh_inputs_are_resharded_to_the_specs():
  mesh = _mesh((2, 2, 2), "Explicit")
  q = jnp.zeros((8, 16, 4, 16))
  op = functools.partial(shard_op.gla_per_shard, chunk_gla, output_final_state=True, chunk_size=16)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    prims = _primitives(lambda q: op(q, q, q, q), q)
    o, state = jax.eval_shape(lambda q: op(q, q, q, q), q)
  assert "shard_map" in prims and "reshard" in prims
  assert tuple(o.sharding.spec) == (("data", "fsdp"), None, "tensor", None)
  assert tuple(state.sharding.spec) == (("data", "fsdp"), "tensor", None, None)


def test_bad_shapes_raise_the_op_error_not_a_shard_map_error():
  q = jnp.zeros((8, 16, 4, 16))
  with jax.set_mesh(_mesh((2, 2, 2))), nnx.logical_axis_rules(RULES):
    with pytest.raises(ValueError, match="k"):
      jax.eval_shape(lambda q: shard_op.gla_per_shard(chunk_gla, q, q[:, :8], q, q), q)
    with pytest.raises(ValueError, match="segment_ids"):
      jax.eval_shape(lambda q: shard_op.gla_per_shard(chunk_gla, q, q, q, q,
                                                      segment_ids=jnp.zeros((8, 8), jnp.int32)), q)
