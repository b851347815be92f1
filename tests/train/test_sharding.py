"""Sharded training on 8 fake CPU devices: params laid out by the logical rules, and a (2, 2, 2) mesh step
that equals the single-device step; gradient accumulation; rejection of non-finite steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gla_jax.models import build_model
from train import mesh as mesh_lib
from train import state as state_lib
from train import step as step_lib
from train.config import MeshConfig
from train.data.mqar import StepIndexedSource

from tests.train.common import tiny_config

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")


def _setup(config, mesh_cfg, devices):
  mesh = mesh_lib.make_mesh(mesh_cfg, devices)
  tx = state_lib.make_optimizer(config.optim, config.steps)
  build = lambda rngs: build_model(config.model, rngs=rngs)
  state, model_def, shardings = state_lib.init_state(build, tx, mesh, seed=0)
  step = step_lib.make_train_step(model_def, tx, mesh, shardings, config.grad_accum)
  return mesh, state, model_def, shardings, step


def _batches(config, n):
  src = StepIndexedSource("mqar", global_batch=config.data.batch_size, seq_len=config.data.seq_len,
                          vocab_size=config.model.vocab_size, seed=0, num_kv_pairs=config.data.mqar.num_kv_pairs)
  return [src.next() for _ in range(n)]


def _flat(tree):
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: x is None or isinstance(x, tuple))
  return {jax.tree_util.keystr(k): v for k, v in leaves}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  # heads=2, key dim 32, value dim 64, MLP 256, vocab 64: every sharded dim divides by 2
  return tiny_config(tmp_path_factory.mktemp("shard"), "model.hidden_size=64")


@pytest.fixture(scope="module")
def mesh8(tiny):
  """One (2, 2, 2) setup shared by the tests below (its step is compiled once); `fresh()` gives a new copy
  of the initial state (the step donates its input)."""
  mesh, state, model_def, shardings, step = _setup(tiny, MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  host = jax.device_get(state)
  fresh = lambda: jax.device_put(host, shardings)
  return mesh, fresh, model_def, shardings, step


def test_params_are_sharded_as_the_rules_say(mesh8):
  mesh, fresh, model_def, _, _ = mesh8
  state = fresh()
  params, names = _flat(state.params), _flat(model_def.logical_names)
  expected_axis = dict(mesh_lib.LOGICAL_RULES)
  sharded_dims = 0
  for path, x in params.items():
    spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
    logical = names[path]
    assert logical is not None and len(logical) == x.ndim, path
    want = tuple(expected_axis.get(n) for n in logical)
    assert spec == want, (path, logical, spec)
    shard_shape = x.addressable_shards[0].data.shape
    for dim, axis in enumerate(spec):  # each device really holds only its slice
      assert shard_shape[dim] == x.shape[dim] // (mesh.shape[axis] if axis else 1), (path, shard_shape)
      sharded_dims += axis is not None
  assert sharded_dims >= 8
  emb = [p for p in params if "embed" in p and "embedding" in p][0]
  assert params[emb].sharding.spec == P("tensor", "fsdp")  # ("vocab", "embed")
  mlp = [p for p in params if "up_proj" in p and "kernel" in p][0]
  assert params[mlp].sharding.spec == P("fsdp", "tensor")  # ("embed", "mlp")
  # Adam moments follow their params; the step count is replicated
  mu = state.opt_state[1][0].mu
  for path, x in _flat(mu).items():
    assert x.sharding.spec == params[path].sharding.spec, path


def test_rules_replicate_what_does_not_divide():
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=2, tensor=4), jax.devices()[:8])
  assert mesh_lib.logical_to_spec(("vocab", "embed"), (257, 64), mesh) == P(None, "fsdp")
  assert mesh_lib.logical_to_spec(("heads", "kv"), (8, 8), mesh) == P("tensor")  # one mesh axis per array
  assert mesh_lib.logical_to_spec(("norm",), (64,), mesh) == P()
  assert mesh_lib.logical_to_spec(("lowrank", "mystery"), (16, 64), mesh) == P()


def _train(step, state, batches, mesh):
  losses = []
  for b in batches:
    state, m = step(state, mesh_lib.global_batch(b, mesh))
    losses.append(float(m["loss"]))
  return losses, state, m


def test_2x2x2_mesh_step_equals_single_device_step(tiny, mesh8):
  batches = _batches(tiny, 3)
  mesh, fresh, _, _, step = mesh8
  l8, s8, _ = _train(step, fresh(), batches, mesh)
  mesh1, s1, _, _, step1 = _setup(tiny, MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  l1, s1, _ = _train(step1, s1, batches, mesh1)
  np.testing.assert_allclose(l8, l1, rtol=2e-5)
  assert l1[2] < l1[0]  # it trains (lr 1e-2)
  p1, p8 = jax.device_get(s1.params), jax.device_get(s8.params)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))


def test_gradient_accumulation_equals_one_big_batch(tiny, mesh8):
  batches = _batches(tiny, 2)
  mesh, fresh, model_def, shardings, step = mesh8
  tx = state_lib.make_optimizer(tiny.optim, tiny.steps)
  step4 = step_lib.make_train_step(model_def, tx, mesh, shardings, grad_accum=2)
  out = []
  for fn in (step, step4):
    _, state, m = _train(fn, fresh(), batches, mesh)
    out.append((float(m["loss"]), float(m["grad_norm"]), jax.device_get(state.params)))
  (l1, g1, p1), (l2, g2, p2) = out
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  np.testing.assert_allclose(g2, g1, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-6)


def test_non_finite_step_is_rejected_and_counted(tiny, mesh8):
  mesh, fresh, _, _, step = mesh8
  state = fresh()
  batch = mesh_lib.global_batch(_batches(tiny, 1)[0], mesh)
  before = jax.device_get(state)
  flat = _flat(state.params)
  poisoned_path = [p for p in flat if "up_proj" in p][0]
  poisoned = jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[0, 0].set(jnp.nan) if jax.tree_util.keystr(path) == poisoned_path else x, state.params)
  state = state.replace(params=poisoned)
  state, m = step(state, batch)
  assert int(m["update_ok"]) == 0 and int(state.skipped) == 1 and int(state.step) == 1
  after = jax.device_get(state)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before.params), jax.tree.leaves(after.params)):
    if jax.tree_util.keystr(path) == poisoned_path:
      a = a.copy()
      a[0, 0] = np.nan
    np.testing.assert_array_equal(b, a)  # unchanged (NaN stays where it was put)
  assert int(after.opt_state[1][0].count) == int(before.opt_state[1][0].count)
  # a finite step after restoring the param goes through
  state = state.replace(params=jax.device_put(before.params, jax.tree.map(lambda x: x.sharding, state.params)))
  state, m = step(state, batch)
  assert int(m["update_ok"]) == 1 and int(state.skipped) == 1


def test_eval_step_matches_train_loss(tiny, mesh8):
  mesh, fresh, model_def, shardings, step = mesh8
  state = fresh()
  batch = mesh_lib.global_batch(_batches(tiny, 1)[0], mesh)
  eval_step = step_lib.make_eval_step(model_def, mesh, shardings.params)
  sums = step_lib.summarize_eval([jax.device_get(eval_step(state.params, batch))])
  _, m = step(state, batch)
  np.testing.assert_allclose(sums["loss"], float(m["loss"]), rtol=1e-5)
  np.testing.assert_allclose(sums["perplexity"], np.exp(sums["loss"]), rtol=1e-5)
  assert sums["tokens"] == tiny.data.batch_size * tiny.data.mqar.num_kv_pairs


def test_init_never_materialises_the_full_model_on_one_device(tiny):
  """Each device holds 1/4 of the fsdp x tensor sharded matrices right after init (no gather)."""
  mesh, state, *_ = _setup(tiny, MeshConfig(data=1, fsdp=2, tensor=4), jax.devices()[:8])
  x = [v for p, v in _flat(state.params).items() if "up_proj" in p][0]
  assert x.sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in x.addressable_shards} == {(x.shape[0] // 2, x.shape[1] // 4)}
