"""benchmarks/profile_train.py on CPU: the HLO attribution (source frames, matmul detection, categories) and
one profiled step of the tiny preset end to end (a subprocess: the script sets XLA_FLAGS at import)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import profile_train  # noqa: E402


def _project_fn(a, b):
  return jnp.tanh(a @ b).sum()


def test_hlo_ops_names_the_source_and_the_matmul():
  a = jnp.ones((64, 64))
  ops = profile_train.hlo_ops(jax.jit(_project_fn).lower(a, a).compile().as_text())
  assert ops, "no instruction parsed"
  here = [o for o in ops.values() if o["file"] and o["file"].endswith("test_profile_train.py")]
  assert here and all(o["function"] == "_project_fn" for o in here)
  dots = [o for o in ops.values() if o["matmul"]]
  assert dots and all(profile_train.category(o, "") == "matmul" for o in dots)
  assert not ops.get("a.1", {"matmul": False})["matmul"]  # a parameter is not a matmul


def test_categories():
  base = {"opcode": "fusion", "target": None, "kind": "kLoop", "op_name": "", "stack": [], "file": None,
          "line": None, "function": None, "matmul": False}
  cat = lambda kernel="", **kw: profile_train.category({**base, **kw}, kernel)
  assert cat(opcode="custom-call", target="__gpu$xla.gpu.triton") == "mixer kernels"
  assert cat(opcode="custom-call", target="mosaic_gpu") == "mixer kernels"
  assert cat(opcode="custom-call", target="__cublas$lt$matmul", matmul=True) == "matmul"
  assert cat("nvjet_sm90_tst_192x128") == "matmul"
  assert cat(file="/x/pallas_kernels/common/chunking.py") == "mixer (XLA glue)"
  assert cat(file="/x/gla_jax/layers/norm.py") == "norm"
  loss_stack = [("/x/optax/losses/_classification.py", 1, "f"), ("/x/train/losses.py", 2, "g")]
  assert cat(file="/x/optax/losses/_classification.py", stack=loss_stack) == "loss"
  assert cat(file="/x/optax/transforms/_adding.py", stack=[("/x/optax/transforms/_adding.py", 1, "f")]) == "optimizer"
  assert cat(file="/x/gla_jax/layers/mlp.py") == "other"
  assert profile_train.category(None, "some_kernel") == "other"


def test_profiles_a_tiny_step(tmp_path):
  out = tmp_path / "prof.json"
  cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "profile_train.py"), "--model", "gla_tiny", "--batch", "2",
         "--seq", "64", "--steps", "1", "--warmup", "1", "--trace-dir", str(tmp_path / "trace"), "--out", str(out)]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                     env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res["n_ops"] > 0 and res["device_busy_ms"] > 0 and res["wall_ms_median"] > 0
  assert abs(sum(res["categories"].values()) - res["device_busy_ms"]) < 1e-6 * max(res["device_busy_ms"], 1)
  assert "matmul" in res["categories"] and res["loss_chunk"] == 1024
  assert any(r_["source"].startswith("gla_jax/") for r_ in res["top_ops"])
  bad = subprocess.run(cmd[:2] + ["--steps", "0"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
  assert bad.returncode != 0 and "--steps must be >= 1" in bad.stderr
