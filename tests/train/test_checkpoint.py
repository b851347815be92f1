"""Checkpoints: restore onto a different mesh, exact resume, SIGTERM → save and stop."""

import os
import signal

import jax
import numpy as np
import pytest

from train import mesh as mesh_lib
from train import state as state_lib
from train.checkpoint import Checkpointer
from train.config import MeshConfig
from train.trainer import Trainer

from tests.train.common import tiny_config

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")


def test_save_on_one_mesh_restore_on_another(tmp_path):
  config = tiny_config(tmp_path / "run", "model.hidden_size=64", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
  trainer = Trainer(config, devices=jax.devices()[:8])
  summary = trainer.run(until=2)
  assert summary["step"] == 2 and os.path.isdir(os.path.join(tmp_path, "run", "checkpoints", "2"))
  saved = jax.device_get(trainer.state)
  trainer.close()

  for mcfg, devs in ((MeshConfig(data=1, fsdp=4, tensor=1), jax.devices()[:4]),
                     (MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])):
    other = Trainer(tiny_config(tmp_path / "run", "model.hidden_size=64", f"mesh.data={mcfg.data}",
                                f"mesh.fsdp={mcfg.fsdp}", f"mesh.tensor={mcfg.tensor}"), devices=devs)
    other.restore()
    assert other.resumed_from == 2
    restored = other.state
    for a, b, sh in zip(jax.tree.leaves(saved), jax.tree.leaves(restored), jax.tree.leaves(other.shardings)):
      np.testing.assert_array_equal(np.asarray(b), a)
      assert b.sharding == sh  # laid out for the new mesh
    up = [v for k, v in jax.tree_util.tree_leaves_with_path(restored.params) if "up_proj" in jax.tree_util.keystr(k)][0]
    assert up.sharding.mesh.devices.size == len(devs)
    other.close()


def test_exact_resume_gives_the_same_losses(tmp_path):
  steps = 6
  full = Trainer(tiny_config(tmp_path / "full", f"steps={steps}", "mesh.data=2"), devices=jax.devices()[:2])
  summary_full = full.run()
  losses_full = summary_full["losses"]
  full.close()
  assert len(losses_full) == steps

  first = Trainer(tiny_config(tmp_path / "split", f"steps={steps}", "mesh.data=2"), devices=jax.devices()[:2])
  part1 = first.run(until=3)
  first.close()
  assert part1["final_eval"] is None and len(part1["losses"]) == 3
  second = Trainer(tiny_config(tmp_path / "split", f"steps={steps}", "mesh.data=2"), devices=jax.devices()[:2])
  part2 = second.run()
  assert part2["start_step"] == 3 and second.resumed_from == 3
  second.close()
  assert part1["losses"] + part2["losses"] == losses_full  # bit-for-bit
  assert part2["final_eval"] == summary_full["final_eval"]


def test_sigterm_saves_and_stops(tmp_path):
  config = tiny_config(tmp_path, "mesh.data=2")  # same program as the resume test: a compile-cache hit
  trainer = Trainer(config, devices=jax.devices()[:2])

  def on_log(step, row):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  summary = trainer.run(on_log=on_log)
  trainer.close()
  assert summary["stopped_by_signal"] and summary["step"] == 2 and summary["final_eval"] is None
  assert Checkpointer(os.path.join(tmp_path, "checkpoints")).latest_step() == 2
  assert signal.getsignal(signal.SIGTERM) is not None  # handler restored


def test_checkpointer_keeps_the_latest_n(tmp_path):
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  ck = Checkpointer(str(tmp_path), keep=2, async_save=False)
  tree = {"w": jax.numpy.arange(4.0)}
  for s in (1, 2, 3):
    ck.save(s, tree, {"step": s, "data_state": [{"step": s}]})
  ck.wait()
  assert ck.all_steps() == [2, 3]
  abstract = state_lib.abstract_state({"w": mesh_lib.replicated(mesh)}, jax.eval_shape(lambda: tree))
  restored, meta = ck.restore(None, abstract)
  assert meta["step"] == 3 and np.array_equal(restored["w"], np.arange(4.0))
  ck.close()
