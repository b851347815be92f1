"""benchmarks/scaling.py on the 8 fake CPU devices (tests/conftest.py): the tiny GLA on fsdp=8, data=8 and
data=4 × tensor=2 trains with the same losses (float32) as one device on the same global batch, and the
report has every mesh, the baseline and the efficiency column."""

import json
import os
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import scaling  # noqa: E402
from train.config import MeshConfig  # noqa: E402


def test_meshes_and_cli_errors():
  assert scaling.default_meshes(8) == [MeshConfig(data=1, fsdp=8, tensor=1), MeshConfig(data=8, fsdp=1, tensor=1),
                                       MeshConfig(data=4, fsdp=1, tensor=2)]
  assert len(scaling.default_meshes(3)) == 2  # no tensor=2 mesh on an odd count
  assert scaling.parse_args(["--meshes", "none"]).meshes == ["none"]
  assert scaling.parse_mesh("data=2,fsdp=2") == MeshConfig(data=2, fsdp=2, tensor=1)
  assert scaling.mesh_name(MeshConfig(data=4, fsdp=1, tensor=2)) == "data=4,tensor=2"
  for bad in (["--meshes", "pipe=2"], ["--meshes", "data=0"], ["--batch-per-device", "0"], ["--impl", "cuda"]):
    with pytest.raises(SystemExit):
      scaling.parse_args(bad)
  cfg = scaling.model_config(scaling.parse_args(["--remat", "--set", "num_hidden_layers=1"]), "gla_1p3b")
  assert cfg.remat and cfg.remat_policy == "full" and cfg.num_hidden_layers == 1 and cfg.dtype == "bfloat16"


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs the 8 fake CPU devices of tests/conftest.py")
def test_scaling_report_and_losses_match_one_device(tmp_path):
  common = ["--model", "gla_tiny", "--set", "num_hidden_layers=1", "--seq", "32", "--batch-per-device", "1",
            "--dtype", "float32", "--impl", "xla", "--steps", "1", "--warmup", "0", "--loss-steps", "3",
            "--lr", "1e-2", "--warmup-steps", "1", "--devices", "8", "--out", str(tmp_path)]
  first = scaling.main(common + ["--meshes", "fsdp=8", "data=4,tensor=2"])  # + the baseline and the reference
  assert [r["run"] for r in first["models"][0]["runs"]] == ["fsdp=8", "data=4,tensor=2", "baseline (1 device)"]
  # a second call (as on the GPU, one call per mesh) runs data=8 and keeps the rest from the first
  report = scaling.main(common + ["--meshes", "data=8", "--reuse", str(tmp_path / "scaling.json")])
  (m,) = report["models"]
  runs = {r["run"]: r for r in m["runs"]}
  assert set(runs) == {"fsdp=8", "data=8", "data=4,tensor=2", "baseline (1 device)"}
  for name, r in runs.items():
    assert "error" not in r, (name, r.get("error"))
    assert r["efficiency"] > 0 and r["tokens_per_s_per_device"] > 0 and r["compiled_bytes"] > 0
    assert r["batch"] == (1 if name.startswith("baseline") else 8) and len(r["losses"]) == 3
  assert runs["baseline (1 device)"]["efficiency"] == pytest.approx(1.0)
  assert not runs["data=8"].get("reused") and runs["fsdp=8"]["reused"] and runs["baseline (1 device)"]["reused"]
  check = m["loss_check"]
  assert check["ok"] and check["rtol"] == 1e-5 and set(check["per_mesh"]) == set(runs) - {"baseline (1 device)"}
  ref = np.asarray(check["reference_losses"])
  assert ref[0] != ref[1] != ref[2]  # the updates change the loss: the comparison covers the optimizer step
  for name in check["per_mesh"]:
    np.testing.assert_allclose(runs[name]["losses"], ref, rtol=1e-5, err_msg=name)
  on_disk = json.loads((tmp_path / "scaling.json").read_text())
  assert [r["run"] for r in on_disk["models"][0]["runs"]] == [r["run"] for r in m["runs"]]
  table = (tmp_path / "scaling.md").read_text()
  assert "| efficiency |" in table and "Loss check (PASS" in table
  for name in runs:
    assert f"| {name} |" in table


def test_loss_check_skipped_is_reported(tmp_path):
  args = scaling.parse_args(["--no-loss-check"])
  assert scaling.loss_check(args, None, [None] * 8, [], [], {}) == {"skipped": "--no-loss-check"}
  report = {"info": {"devices": 8, "device": "cpu", "date": "d", "jax": "j", "dtype": "bfloat16", "impl": "auto",
                     "remat": "none", "loss_chunk": 1024, "steps": 1, "warmup": 0},
            "models": [{"model": "gla_340m", "params": 3.4e8, "batch_per_device": 8, "seq": 2048,
                        "global_batch": 64, "loss_check": {"skipped": "--no-loss-check"},
                        "runs": [{"run": "fsdp=8", "batch": 64, "error": "XlaRuntimeError: RESOURCE_EXHAUSTED"}]}]}
  text = scaling.markdown(report)
  assert "failed: XlaRuntimeError: RESOURCE_EXHAUSTED" in text and "Loss check skipped: --no-loss-check." in text
