"""The ops run per shard under a mesh (gla_jax/layers/per_shard.py), on 8 fake CPU devices.

A recording implementation sees the per-shard shapes; the layer's outputs, cache states and parameter
gradients on the mesh equal the single-device ones; indivisible dimensions fall back to replication;
without a mesh (or rules) nothing is wrapped.
"""

import functools
import importlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec as P

from gla_jax.layers import GatedLinearAttention
import gla_jax.layers.per_shard as ps
from gla_jax.layers.per_shard import per_shard
from pallas_kernels.gla import chunk_gla, fused_recurrent_gla
from tests.gla_jax.per_shard_testing import (NAME, assert_trees_close, linear_attn_standin, recording,
                                             recording_impl, simple_gla_standin)

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
    full = ps.plan(8, 4, mesh)
    assert (full.batch, full.heads, full.batch_shards, full.head_shards) == (("data", "fsdp"), ("tensor",), 4, 2)
    odd = ps.plan(6, 3, mesh)  # 6 splits over data only; 3 heads do not split over tensor
    assert (odd.batch, odd.heads) == (("data",), ())
    assert ps.plan(1, 3, mesh) is None  # one sequence, odd heads: nothing to split → direct call
  with nnx.logical_axis_rules((("batch", "tensor"), ("heads", "tensor"))):
    assert ps.plan(8, 4, mesh).heads == ()  # an axis splits one dimension only (the batch first)
  assert ps.plan(8, 4, mesh) is None  # no rules, and no mesh axis named batch / heads
  named = _mesh((4, 2), names=("batch", "heads")).abstract_mesh  # names that are mesh axes need no rule
  assert (ps.plan(8, 4, named).batch, ps.plan(8, 4, named).heads) == (("batch",), ("heads",))
  with nnx.logical_axis_rules(RULES):
    assert ps.plan(8, 4, _mesh((1, 1, 1)).abstract_mesh) is None
  assert ps.plan(8, 4) is None  # no mesh set


def test_plan_inside_a_shard_map_leaves_its_manual_axes_alone():
  seen = []

  def body(x):
    seen.append(ps.plan(8, 4))
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
  op = functools.partial(per_shard(chunk_gla), output_final_state=True, chunk_size=16)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    prims = _primitives(lambda q: op(q, q, q, q), q)
    o, state = jax.eval_shape(lambda q: op(q, q, q, q), q)
  assert "shard_map" in prims and "reshard" in prims
  assert tuple(o.sharding.spec) == (("data", "fsdp"), None, "tensor", None)
  assert tuple(state.sharding.spec) == (("data", "fsdp"), "tensor", None, None)


def test_explicit_one_device_mesh_runs_the_kernel_in_a_shard_map():
  """Explicit axes put shardings in the avals, which the Pallas kernels cannot lower: under such a mesh a
  call that splits nothing still runs in a (replicated) shard_map; values and gradients are the spec's."""
  from pallas_kernels.gla.triton.ops import chunk_gla_triton
  kernel = per_shard(functools.partial(chunk_gla_triton, interpret=True), ps.GLA_LAYOUT)
  ks = jax.random.split(jax.random.key(3), 4)
  q, k, v, g = (jax.random.normal(kk, (1, 40, 2, 16)) for kk in ks)
  g = jax.nn.log_sigmoid(g)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a)[0] ** 2)
  ref = jax.grad(loss(functools.partial(chunk_gla, impl="naive")), argnums=(0, 1, 2, 3))(q, k, v, g)
  with jax.set_mesh(_mesh((1, 1, 1), "Explicit")):
    assert "shard_map" in _primitives(lambda *a: kernel(*a)[0], q, k, v, g)
    got = jax.jit(jax.grad(loss(kernel), argnums=(0, 1, 2, 3)))(q, k, v, g)
  for a, b in zip(got, ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5 * float(jnp.abs(b).max()))
  with jax.set_mesh(_mesh((1, 1, 1))):  # Auto axes: called directly, as before
    assert "shard_map" not in _primitives(lambda *a: kernel(*a)[0], q, k, v, g)


def test_bad_shapes_raise_the_op_error_not_a_shard_map_error():
  q = jnp.zeros((8, 16, 4, 16))
  with jax.set_mesh(_mesh((2, 2, 2))), nnx.logical_axis_rules(RULES):
    with pytest.raises(ValueError, match="k"):
      jax.eval_shape(lambda q: per_shard(chunk_gla)(q, q[:, :8], q, q), q)
    with pytest.raises(ValueError, match="segment_ids"):
      jax.eval_shape(lambda q: per_shard(chunk_gla)(q, q, q, q,
                                           segment_ids=jnp.zeros((8, 8), jnp.int32)), q)


# ---------------------------------------------------------------------------------------------- any op


def _op(module: str, name: str, standin):
  """The op `module.name`, or while it is not importable (being written) a stand-in of its contract."""
  try:
    return pytest.param(getattr(importlib.import_module(module), name), id=name)
  except Exception:  # noqa: BLE001  (any import failure of a half-written op)
    return pytest.param(standin, id="standin")


SIMPLE_GLA = _op("pallas_kernels.simple_gla", "chunk_simple_gla", simple_gla_standin)
LINEAR_ATTN = _op("pallas_kernels.linear_attn", "chunk_linear_attn", linear_attn_standin)


def _inputs(key, B, T, H, K, V):
  kq, kk, kv, kg, ks = jax.random.split(key, 5)
  q = jax.random.normal(kq, (B, T, H, K))
  k = jax.random.normal(kk, (B, T, H, K))
  v = jax.random.normal(kv, (B, T, H, V))
  return q, k, v, kg, ks


def _vjp_on(mesh, fn, primals):
  """jit(fn)(*primals) and its vjp with a fixed random cotangent, on `mesh` (None: one device)."""
  def run(primals):
    out, pullback = jax.vjp(fn, *primals)
    leaves, treedef = jax.tree.flatten(out)
    cts = [jax.random.normal(jax.random.key(100 + i), x.shape, x.dtype) for i, x in enumerate(leaves)]
    return out, pullback(treedef.unflatten(cts))
  if mesh is None:
    return jax.device_get(jax.jit(run)(primals))
  return jax.device_get(_on_mesh(mesh, jax.jit(run), primals))


@pytest.mark.parametrize("simple_gla", [SIMPLE_GLA])
@pytest.mark.parametrize("gate", ["scalar", "constant"])
def test_simple_gla_per_shard_equals_single_device(simple_gla, gate):
  B, T, H, K, V = 4, 32, 4, 8, 16
  q, k, v, kg, ks = _inputs(jax.random.key(3), B, T, H, K, V)
  h0 = jax.random.normal(ks, (B, H, K, V))
  seg = jnp.asarray(np.repeat([[0] * 9 + [1] * 23], B, axis=0), jnp.int32)
  g = jax.nn.log_sigmoid(jax.random.normal(kg, (B, T, H)) + 2) / 4  # [B, T, H]
  g_gamma = jnp.log(1 - 2.0 ** (-1.0 - 2 * jnp.arange(H)))  # RetNet-like, very different per head
  calls = []
  op = recording(simple_gla, calls)
  gates = dict(g=g) if gate == "scalar" else dict(g_gamma=g_gamma)
  # differentiate w.r.t. q, k, v, the scalar gate and h0 (g_gamma: a constant, no gradient needed)
  fn = lambda q, k, v, h0, *g: per_shard(op, ps.SIMPLE_GLA_LAYOUT)(
      q, k, v, *g, initial_state=h0, segment_ids=seg, output_final_state=True, chunk_size=16,
      impl="naive", **({} if gate == "scalar" else gates))
  primals = (q, k, v, h0) + ((g,) if gate == "scalar" else ())
  want = _vjp_on(None, fn, primals)
  calls.clear()
  got = _vjp_on(_mesh((2, 2, 2)), fn, primals)
  # the per-shard arguments: B / (data·fsdp), H / tensor (g_gamma with the heads)
  assert calls[0]["q"] == (1, T, 2, K) and calls[0]["initial_state"] == (1, 2, K, V)
  assert calls[0]["g"] == ((1, T, 2) if gate == "scalar" else None)
  assert calls[0]["g_gamma"] == (None if gate == "scalar" else (2,))
  assert_trees_close(got, want, 1e-5)


@pytest.mark.parametrize("op_name", ["chunk_simple_gla", "chunk_gla"])
def test_mosaic_gpu_kernels_run_in_the_per_shard_shard_map(op_name):
  """The Mosaic GPU kernels (interpret mode) inside the per-shard wrapper's shard_map (an Explicit one-device
  mesh, where the wrapper always maps): o, the final state and the gradients of q, k, v, g and h0 equal
  the spec's, packed documents included (simple GLA's backward: the kernel's own passes; GLA's: the xla
  vjp). Several CPU devices cannot run them: JAX 0.10's Mosaic GPU interpreter asserts ("Barrier remains
  allocated") when shard_map runs it on more than one device, so the split itself is the generic tests'
  above and the compiled kernels' on several GPUs."""
  B, T, H, K, V = 1, 40, 2, 16, 16
  q, k, v, kg, ks = _inputs(jax.random.key(4), B, T, H, K, V)
  h0 = jax.random.normal(ks, (B, H, K, V))
  seg = jnp.asarray([[0] * 9 + [1] * 31], jnp.int32)
  if op_name == "chunk_simple_gla":
    from pallas_kernels.simple_gla import chunk_simple_gla as op
    layout, g = ps.SIMPLE_GLA_LAYOUT, jax.nn.log_sigmoid(jax.random.normal(kg, (B, T, H)) + 2) / 4
  else:
    layout, op = ps.GLA_LAYOUT, chunk_gla
    g = jax.nn.log_sigmoid(jax.random.normal(kg, (B, T, H, K)) + 2) / 4
  run = lambda impl, wrap: lambda q, k, v, g, h0: wrap(op)(
      q, k, v, g, initial_state=h0, segment_ids=seg, output_final_state=True, impl=impl)
  want = _vjp_on(None, run("naive", lambda f: f), (q, k, v, g, h0))
  kernel = run("mosaic_gpu_interpret", lambda f: per_shard(f, layout))
  with jax.set_mesh(_mesh((1, 1, 1), "Explicit")):
    assert "shard_map" in _primitives(lambda *a: kernel(*a)[0], q, k, v, g, h0)
  got = _vjp_on(_mesh((1, 1, 1), "Explicit"), kernel, (q, k, v, g, h0))
  assert_trees_close(got, want, 2e-5)


def test_g_gamma_splits_with_the_heads():
  """Each shard gets its own heads' g_gamma: an op that echoes g_gamma into o, [B, T, H, V]."""
  def chunk_simple_gla(q, k, v, g=None, *, g_gamma, **_):
    return q[..., :1] * 0 + g_gamma[:, None], None

  q = jnp.zeros((4, 8, 4, 2))
  g_gamma = jnp.arange(4.0)
  with jax.set_mesh(_mesh((2, 2, 2))), nnx.logical_axis_rules(RULES):
    o, _ = jax.jit(per_shard(chunk_simple_gla))(q, q, q, g_gamma=g_gamma)
  np.testing.assert_array_equal(o, jnp.broadcast_to(g_gamma[:, None], (4, 8, 4, 1)))


@pytest.mark.parametrize("linear_attn", [LINEAR_ATTN])
def test_normalized_linear_attn_state_pair_per_shard_equals_single_device(linear_attn):
  B, T, H, K, V = 4, 24, 4, 8, 16
  q, k, v, kz, ks = _inputs(jax.random.key(4), B, T, H, K, V)
  q, k = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1  # a positive feature map for the normaliser
  S0 = jax.random.normal(ks, (B, H, K, V))
  z0 = jax.random.uniform(kz, (B, H, K), minval=0.5, maxval=2.0)
  seg = jnp.asarray(np.repeat([[3] * 10 + [5] * 14], B, axis=0), jnp.int32)
  calls = []
  op = recording(linear_attn, calls)
  fn = lambda q, k, v, S0, z0: per_shard(op, ps.LINEAR_ATTN_LAYOUT)(
      q, k, v, normalize=True, initial_state=(S0, z0), segment_ids=seg, output_final_state=True,
      impl="naive")
  want = _vjp_on(None, fn, (q, k, v, S0, z0))
  calls.clear()
  got = _vjp_on(_mesh((2, 2, 2)), fn, (q, k, v, S0, z0))
  assert calls[0]["initial_state"] == ((1, 2, K, V), (1, 2, K))
  (o, (S, z)), _ = got
  assert o.shape == (B, T, H, V) and S.shape == (B, H, K, V) and z.shape == (B, H, K)
  assert_trees_close(got, want, 1e-5)


def test_heads_not_divisible_replicate_explicitly_or_raise(caplog):
  B, T, H, K, V = 4, 16, 3, 8, 8  # on (2, 2, 2): B splits over data·fsdp, 3 heads not over tensor
  q, k, v, kg, _ = _inputs(jax.random.key(5), B, T, H, K, V)
  g = jax.nn.log_sigmoid(jax.random.normal(kg, (B, T, H)))
  calls = []
  op = recording(simple_gla_standin, calls)
  want = jax.jit(lambda *a: op(*a, chunk_size=16))(q, k, v, g)
  calls.clear()
  with caplog.at_level(logging.WARNING, logger="gla_jax.layers.per_shard"):
    run = jax.jit(lambda *a: per_shard(op, ps.SIMPLE_GLA_LAYOUT)(*a, chunk_size=16))
    got = _on_mesh(_mesh((2, 2, 2)), run, q, k, v, g)
  assert calls == [dict(q=(1, T, 3, K), v=(1, T, 3, V), g=(1, T, 3), g_gamma=None, initial_state=None,
                        segment_ids=None)]
  assert any("heads=3" in r.message and "'tensor'" in r.message for r in caplog.records)
  assert_trees_close(got, want, 1e-5)
  strict = lambda *a: per_shard(op, ps.SIMPLE_GLA_LAYOUT, on_unsplittable="raise")(*a, chunk_size=16)
  with pytest.raises(ValueError, match=r"heads=3 does not divide by mesh axis 'tensor'"):
    _on_mesh(_mesh((2, 2, 2)), jax.eval_shape, strict, q, k, v, g)
  # nothing splits (one row, 3 heads): still inside a shard_map, on replicated inputs, never a bare call
  one = lambda q: per_shard(op, ps.SIMPLE_GLA_LAYOUT)(q, q, q[..., :V], q[..., 0], chunk_size=16)[0]
  prims = _on_mesh(_mesh((2, 2, 2)), _primitives, one, q[:1])
  assert "shard_map" in prims
  strict_one = lambda q: per_shard(op, ps.SIMPLE_GLA_LAYOUT, on_unsplittable="raise")(q, q, q, q[..., 0])
  with pytest.raises(ValueError, match=r"batch=1 does not divide"):
    _on_mesh(_mesh((2, 2, 2)), jax.eval_shape, strict_one, q[:1])


def test_layouts_registry_and_usage_errors():
  assert ps.layout_of(chunk_gla) is ps.GLA_LAYOUT
  assert ps.layout_of(functools.partial(chunk_gla, chunk_size=16)) is ps.GLA_LAYOUT
  assert ps.layout_of(recording(fused_recurrent_gla, [])) is ps.GLA_LAYOUT  # by name
  for (op,), layout in ((SIMPLE_GLA.values, ps.SIMPLE_GLA_LAYOUT),
                        (LINEAR_ATTN.values, ps.LINEAR_ATTN_LAYOUT)):
    if op not in (simple_gla_standin, linear_attn_standin):
      assert ps.layout_of(op) is layout
  with pytest.raises(ValueError, match="no layout registered"):
    per_shard(lambda q: q)
  with pytest.raises(ValueError, match="distinct lowercase"):
    ps.OpLayout(positional=("q",), inputs={"q": "bbtk"}, out="bthv")
  with pytest.raises(ValueError, match="on_unsplittable"):
    per_shard(chunk_gla, on_unsplittable="gather")
  q = jnp.zeros((8, 16, 4, 16))
  with pytest.raises(ValueError, match="'extra' holds an array"):  # an array the layout does not name
    per_shard(chunk_gla)(q, q, q, q, extra=q)
  # a shape that does not fit the layout, which the op itself accepts: ours, under a mesh only
  lenient = lambda q, k, v, g, **kw: (v, None)
  with jax.set_mesh(_mesh((2, 2, 2))), nnx.logical_axis_rules(RULES):
    with pytest.raises(ValueError, match="do not fit"):
      jax.eval_shape(lambda q: per_shard(lenient, ps.GLA_LAYOUT)(q, q, q[:, :, :2], q), q)
  assert per_shard(lenient, ps.GLA_LAYOUT)(q, q, q[:, :, :2], q)[0].shape == (8, 16, 2, 16)
