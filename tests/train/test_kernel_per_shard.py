"""The trainer's steps run the GLA op per shard: on a (2, 2, 2) mesh a recording implementation sees
[B/4, T, H/2, ·] slices, and the train step equals the single-device step."""

import jax
import numpy as np
import pytest

from train.config import MeshConfig
from tests.gla_jax.per_shard_testing import NAME, recording_impl
from tests.train.common import tiny_config
from tests.train.test_sharding import _batches, _setup, _train

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")


def test_train_step_runs_the_op_per_shard_and_equals_single_device(tmp_path):
  # 2 heads of K=16, V=32; batch 8, T=32
  config = tiny_config(tmp_path, "model.hidden_size=64", f"model.attn_impl={NAME}")
  B, T = config.data.batch_size, config.data.seq_len
  batches = _batches(config, 2)
  with recording_impl() as calls:
    mesh, state, *_, step = _setup(config, MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    l8, s8, _ = _train(step, state, batches, mesh)
    assert {c[:2] for c in calls} == {((B // 4, T, 1, 16), (B // 4, T, 1, 32))}
    calls.clear()
    mesh1, state1, *_, step1 = _setup(config, MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    l1, s1, _ = _train(step1, state1, batches, mesh1)
    assert {c[:2] for c in calls} == {((B, T, 2, 16), (B, T, 2, 32))}  # one device: not wrapped
  np.testing.assert_allclose(l8, l1, rtol=2e-5)
  p1, p8 = jax.device_get(s1.params), jax.device_get(s8.params)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))
