"""benchmarks/bench_train.py's CLI (variants, --compare-fla) and the fla child's argument handling, on CPU
(no torch here: the fla child must skip cleanly)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_train  # noqa: E402
import bench_train_fla  # noqa: E402


def test_variants_and_defaults():
  args = bench_train.parse_args(["--loss-chunk", "0", "1024", "--remat-policy", "full", "dots_saveable"])
  assert bench_train.variants_of(args) == [(0, "full"), (0, "dots_saveable"), (1024, "full"),
                                           (1024, "dots_saveable")]
  assert bench_train.variants_of(bench_train.parse_args([])) == [(1024, "none")]  # the old CLI: no remat
  assert bench_train.variants_of(bench_train.parse_args(["--remat"])) == [(1024, "full")]
  # no remat flag: the model config's own (the scanned large presets need remat)
  from gla_jax.models import presets  # pylint: disable=g-import-not-at-top
  assert bench_train.variants_of(bench_train.parse_args([]), presets.gla_340m()) == [(1024, "dots_and_op_out")]
  assert bench_train.variants_of(bench_train.parse_args([]), presets.gla_tiny()) == [(1024, "none")]
  cfg = bench_train.variant_config(bench_train.model_config(bench_train.parse_args([]), "auto"), "none")
  assert cfg.remat is False and cfg.dtype == "bfloat16"
  with pytest.raises(SystemExit):
    bench_train.parse_args(["--remat-policy", "everything"])
  with pytest.raises(SystemExit):
    bench_train.parse_args(["--loss-chunk", "-1"])


def test_fla_spec_and_worker_skip_without_torch(tmp_path):
  args = bench_train.parse_args(["--model", "gla_340m", "--fla-configs", "3"])
  spec = bench_train.fla_spec(bench_train.model_config(args, "auto"), 16, 2048, 30, 3, args.fla_configs)
  c = spec["config"]
  assert c["architectures"] == ["GLAForCausalLM"] and c["hidden_size"] == 1024 and c["fuse_cross_entropy"]
  assert "dtype" not in c and "remat_policy" not in c and spec["optim"]["clip_norm"] == 1.0
  spec_path, out = tmp_path / "spec.json", tmp_path / "fla.json"
  spec_path.write_text(json.dumps(spec))
  worker = os.path.join(ROOT, "benchmarks", "bench_train_fla.py")
  rc = subprocess.run([sys.executable, worker, str(spec_path), str(out)], capture_output=True).returncode
  assert rc == 0
  rec = json.loads(out.read_text())
  try:
    import torch  # noqa: F401
  except ImportError:
    assert rec == {"skipped": "torch is not installed"}
  assert bench_train_fla.main([str(spec_path)]) == 2  # wrong argument count: usage, exit 2
  (tmp_path / "bad.json").write_text("{}")
  assert bench_train_fla.main([str(tmp_path / "bad.json"), str(out)]) == 2


def test_triton_cache_round_trip(tmp_path, monkeypatch):
  src = tmp_path / "src"
  (src / "HASH").mkdir(parents=True)
  (src / "HASH" / "k.autotune.json").write_text("{}")
  (src / "HASH" / "k.cubin").write_text("x")
  monkeypatch.setenv("TRITON_CACHE_DIR", str(src))
  assert bench_train_fla.triton_cache_out(str(tmp_path / "c.tgz")) == 1
  monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "dst"))
  bench_train_fla.triton_cache_in(str(tmp_path / "c.tgz"))
  assert (tmp_path / "dst" / "HASH" / "k.autotune.json").is_file()


def test_table_with_fla_result(capsys):
  ours = [{"impl": "auto", "loss_chunk": 1024, "remat_policy": "none", "batch": 16, "seq": 2048,
           "step_s_median": 0.2, "tokens_per_s": 163840.0, "model_flops_per_s": 1e14, "mfu": 0.1, "mfu_6n": 0.1,
           "compiled_bytes": 4e10, "peak_bytes_in_use": 4.1e10, "compile_s": 50.0, "init_s": 9.0,
           "fla_step_over_ours": 1.25},
          {"impl": "auto", "loss_chunk": 0, "remat_policy": "none", "batch": 16, "error": "RESOURCE_EXHAUSTED"}]
  fla = {"fla": "0.6.0", "batch": 16, "seq": 2048, "step_s_median": 0.25, "tokens_per_s": 131072.0,
         "peak_bytes_in_use": 4.04e10, "first_step_s": 411.0, "fla_configs": 0}
  bench_train.print_table(ours, fla, 2048)
  text = capsys.readouterr().out
  assert "1.25×" in text and "fla ÷ ours = 1.25×" in text and "failed: RESOURCE_EXHAUSTED" in text
  bench_train.print_table(ours[:1], {"skipped": "torch is not installed"}, 2048)
  assert "torch is not installed" in capsys.readouterr().out
