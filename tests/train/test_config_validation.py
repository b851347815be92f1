"""Issue 13 item 7: every bad config value, config file or multi-host flag is one `gla-train: error:` line and
exit 2 (the README's promise), never a traceback from deep in the model and never a run on nonsense."""

import argparse

import pytest

from gla_jax.models import GLAConfig, TransformerConfig
from train.config import ConfigError, check_platform, load_config, validate
from train.main import check_distributed_args, main

from tests.train.common import tiny_config

MQAR = ["--config", "mqar_gla", "--quiet", "--set", "steps=1", "data.batch_size=8", "data.seq_len=64",
        "data.mqar.num_kv_pairs=4"]


def _cli_error(capsys, argv) -> str:
  """Runs the CLI in-process; it must exit 2 with exactly one stderr line and no traceback."""
  assert main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("gla-train: error: ") and "\n" not in err and "Traceback" not in err, err
  return err


@pytest.mark.parametrize("item, message", [
    ("model.num_heads=3", "must be divisible by num_heads (3)"),
    ("model.chunk_size=17", "chunk_size must be a positive multiple of 16, got 17"),
    ("model.attn_impl=bogus", "model.attn_impl='bogus': expected auto or one of xla"),
    ("model.attn_impl=triton", "model.attn_impl='triton' runs on gpu, not on cpu"),
    ("model.num_kv_heads=0", "num_kv_heads must be an int >= 1"),
    ("model.norm_eps=nan", "norm_eps must be a finite number > 0"),
    ("eval_every=-1", "eval_every=-1: must be >= 0"),
    ("checkpoint.every=-1", "checkpoint.every=-1: must be >= 0"),
    ("optim.lr=nan", "optim.lr=nan: must be a finite number"),
    ("optim.lr=inf", "optim.lr=inf: must be a finite number"),
    ("optim.lr=0", "optim.lr=0.0: must be > 0"),
    ("optim.warmup_steps=-10", "optim.warmup_steps=-10: must be >= 0"),
    ("optim.b1=1.5", "optim.b1=1.5: must be >= 0 and < 1"),
    ("optim.b2=1", "optim.b2=1.0: must be >= 0 and < 1"),
    ("optim.eps=0", "optim.eps=0.0: must be > 0"),
    ("optim.weight_decay=-5", "optim.weight_decay=-5.0: must be >= 0"),
    ("optim.clip_norm=-1", "optim.clip_norm=-1.0: must be >= 0"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio=2.0: must be >= 0 and <= 1"),
    ("seed=-1", "seed=-1: must be >= 0 and <= 4294967295"),
    ("data.text.validation_every=0", "data.text.validation_every=0: must be >= 2"),
    ("data.text.bpe_vocab_size=10", "data.text.bpe_vocab_size=10: must be >= 257"),
])
def test_bad_value_is_one_line_exit_2(capsys, item, message):
  assert message in _cli_error(capsys, MQAR + [item])


def test_config_values_of_wrong_type_from_a_file(tmp_path):
  """A config file is Python: nothing parsed its values, so validate checks the declared types."""
  for fields, message in ((dict(steps="10"), "steps='10': expected int, got str"),
                          (dict(progress=1), "progress=1: expected bool"),
                          (dict(eval_every=True), "eval_every=True: expected int")):
    with pytest.raises(ConfigError, match=message):
      validate(tiny_config(tmp_path, **fields))


@pytest.mark.parametrize("body, message", [
    ("def get_config(:\n", "syntax error at line 1"),
    ("import no_such_module_xyz\n", "loading it raised ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("def get_config():\n  raise RuntimeError('boom\\nsecond line')\n", "get_config() raised RuntimeError: boom"),
    ("from gla_jax.models import GLAConfig\ndef get_config():\n  return GLAConfig(num_heads=3)\n",
     "get_config() raised ValueError: key_dim"),
    ("get_config = 3\n", "defines no get_config()"),
])
def test_broken_config_file_is_one_line_exit_2(tmp_path, capsys, body, message):
  path = tmp_path / "broken.py"
  path.write_text(body)
  with pytest.raises(ConfigError, match=None):
    load_config(str(path))
  assert message in _cli_error(capsys, ["--config", str(path)])


def test_model_configs_check_their_ranges():
  for kw, message in ((dict(num_heads=3), "divisible by num_heads"), (dict(chunk_size=8), "multiple of 16"),
                      (dict(chunk_size=True), "multiple of 16"), (dict(expand_k=0.3), "must be integers"),
                      (dict(gate_logit_normalizer=0), "gate_logit_normalizer"), (dict(conv_size=0), "conv_size"),
                      (dict(hidden_ratio=-1), "hidden_ratio"), (dict(clamp_min=float("nan")), "clamp_min"),
                      (dict(vocab_size=True), "vocab_size"), (dict(attn_impl=""), "attn_impl")):
    with pytest.raises(ValueError, match=message):
      GLAConfig(**kw)
  for kw, message in ((dict(hidden_size=96, num_heads=32), "must be even"), (dict(window_size=0), "window_size"),
                      (dict(rope_theta=-1.0), "rope_theta")):
    with pytest.raises(ValueError, match=message):
      TransformerConfig(**kw)


def test_platform_check(tmp_path):
  check_platform(tiny_config(tmp_path, "model.attn_impl=triton"), "gpu")
  check_platform(tiny_config(tmp_path, "model.attn_impl=xla"), "cpu")
  with pytest.raises(ConfigError, match="runs on tpu, not on gpu"):
    check_platform(tiny_config(tmp_path, "model.attn_impl=tpu"), "gpu")


def _args(**kw):
  return argparse.Namespace(**{"coordinator_address": None, "num_processes": None, "process_id": None, **kw})


def test_multi_host_flags_without_coordinator(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  check_distributed_args(_args())
  check_distributed_args(_args(num_processes=1, process_id=0))
  with pytest.raises(ConfigError, match="--num_processes without --coordinator_address .* would run as one"):
    check_distributed_args(_args(num_processes=2))
  with pytest.raises(ConfigError, match="--process_id"):
    check_distributed_args(_args(process_id=1))
  with pytest.raises(ConfigError, match=r"--process_id=2: must be in \[0, 2\)"):
    check_distributed_args(_args(coordinator_address="h:1", num_processes=2, process_id=2))
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  with pytest.raises(ConfigError, match="would run as one process"):
    check_distributed_args(_args())
