"""Two `jax.distributed` CPU processes on localhost (2 devices each) train the tiny model together: both see
the same losses, which equal a one-process run over 4 devices with the same global batch.

Marked slow (two extra Python processes that each import JAX and compile: ~1 CPU-minute, too much for the
CI budget); run it with `python -m pytest --runslow tests/train/test_distributed.py`."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from train.trainer import Trainer

from tests.train.common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent("""
    import json, sys
    from train import mesh as mesh_lib
    mesh_lib.init_distributed(sys.argv[1], 2, int(sys.argv[2]))
    import jax
    from train.trainer import Trainer
    from tests.train.common import tiny_config
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    config = tiny_config(sys.argv[3], "steps=3", "mesh.data=-1", "mesh.fsdp=2")
    trainer = Trainer(config)
    summary = trainer.run()
    trainer.close()
    print("RESULT " + json.dumps({"losses": summary["losses"], "eval": summary["final_eval"],
                                  "process": jax.process_index()}))
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (fake) devices for the reference run")
def test_two_processes_train_like_one(tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i), str(tmp_path / "multi")], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("distributed workers timed out")
    assert p.returncode == 0, out[-3000:]
    outputs.append(json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][7:]))
  assert {o["process"] for o in outputs} == {0, 1}
  assert outputs[0]["losses"] == outputs[1]["losses"] and len(outputs[0]["losses"]) == 3
  assert os.path.isdir(tmp_path / "multi" / "checkpoints" / "3")

  single = Trainer(tiny_config(tmp_path / "single", "steps=3", "mesh.data=-1", "mesh.fsdp=2"),
                   devices=jax.devices()[:4])
  reference = single.run()
  single.close()
  np.testing.assert_allclose(outputs[0]["losses"], reference["losses"], rtol=1e-5)
  np.testing.assert_allclose(outputs[0]["eval"]["loss"], reference["final_eval"]["loss"], rtol=1e-5)
