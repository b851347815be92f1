"""The trainer's steps run the GLA op per shard: on a (2, 2, 2) mesh a recording implementation sees
[B/4, T, H/2, ·] slices, and the train step equals the single-device step."""

import jax
import numpy as np
import pytest

from train.config import MeshConfig
from tests.gla_jax.per_shard_testing import NAME, recording_impl
from tests.train.common import tiny_config
from tests.train.test_sharding import _batches, _setup, _train

needs_8 = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")


@needs_8
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


def _gpus():
  return [d for d in jax.devices() if d.platform == "gpu"]


@pytest.mark.gpu
@pytest.mark.skipif(len(_gpus()) < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("mesh_config", [MeshConfig(data=2, fsdp=1, tensor=1),
                                         MeshConfig(data=1, fsdp=1, tensor=2)], ids=["data2", "tensor2"])
def test_triton_train_step_on_two_gpus_equals_one_gpu(tmp_path, mesh_config):
  """The compiled Pallas Triton kernels inside the trainer's per-shard wrapper (batch or heads split
  over two GPUs) give the one-GPU losses and params (float32 compute)."""
  config = tiny_config(tmp_path, "model.hidden_size=64", "model.attn_impl=triton")
  batches = _batches(config, 3)
  with jax.default_matmul_precision("highest"):  # no TF32 in the projections: compare the sharding only
    mesh2, state2, *_, step2 = _setup(config, mesh_config, _gpus()[:2])
    l2, s2, _ = _train(step2, state2, batches, mesh2)
    mesh1, state1, *_, step1 = _setup(config, MeshConfig(data=1, fsdp=1, tensor=1), _gpus()[:1])
    l1, s1, _ = _train(step1, state1, batches, mesh1)
  print(f"{mesh_config}: losses 2 GPUs {l2} 1 GPU {l1}")
  np.testing.assert_allclose(l2, l1, rtol=1e-4)
  p1, p2 = jax.device_get(s1.params), jax.device_get(s2.params)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5, err_msg=jax.tree_util.keystr(path))
