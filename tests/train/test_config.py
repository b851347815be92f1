"""Config loading, `--set` overrides, mesh/batch checks and the CLI's error path."""

import jax
import pytest

from train import mesh as mesh_lib
from train.config import (ConfigError, MeshConfig, TrainConfig, apply_overrides, available_configs, load_config,
                          validate)
from train.main import main

from tests.train.common import tiny_config

CONFIGS = ("mqar_gla", "mqar_transformer", "tiny_text_gla", "gla_340m", "gla_1p3b", "transformer_340m")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_validates(name):
  config = load_config(f"configs/{name}.py")
  assert isinstance(config, TrainConfig) and config.name == name
  assert config.model.vocab_size >= 64
  validate(config)
  assert name in available_configs()


def test_overrides_parse_by_declared_type(tmp_path):
  c = tiny_config(tmp_path, "optim.lr=2e-3", "steps=1_000", "grad_accum=2", "checkpoint.async_save=false",
                  "data.kind=synthetic", "model.dtype=bfloat16", "model.remat=true", "model.num_kv_heads=1",
                  "model.num_kv_heads=None", "model.clamp_min=-5", "mesh.tensor=2", "data.mqar.power_a=0.5")
  assert c.optim.lr == 2e-3 and isinstance(c.optim.lr, float)
  assert c.steps == 1000 and c.grad_accum == 2
  assert c.checkpoint.async_save is False and c.model.remat is True
  assert c.data.kind == "synthetic" and c.model.dtype == "bfloat16"
  assert c.model.num_kv_heads is None and c.model.clamp_min == -5.0
  assert c.mesh.tensor == 2 and c.data.mqar.power_a == 0.5


@pytest.mark.parametrize("item, message", [
    ("optim.lrr=1", "unknown key 'lrr' in OptimConfig. Did you mean lr"),
    ("nope=1", "unknown key 'nope'"),
    ("steps=ten", "expected an int"),
    ("optim.lr=fast", "expected a float"),
    ("checkpoint.resume=maybe", "expected a bool"),
    ("data.kind=images", "expected one of mqar, text, synthetic"),
    ("optim=3", "is a group"),
    ("steps.x=3", "has no sub-fields"),
    ("steps", "expected key=value"),
    ("model.num_heads=0", "num_heads must be a positive int"),  # the model config's own check
])
def test_bad_overrides_raise_config_error(tmp_path, item, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    tiny_config(tmp_path, item)


def test_validate_rejects_inconsistent_values(tmp_path):
  with pytest.raises(ConfigError, match="multiple of grad_accum"):
    validate(tiny_config(tmp_path, "grad_accum=3"))
  with pytest.raises(ConfigError, match="seq_len >= 64"):
    validate(tiny_config(tmp_path, "data.mqar.num_kv_pairs=16"))


def test_mesh_shape_resolution_and_errors():
  assert mesh_lib.mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
  assert mesh_lib.mesh_shape(MeshConfig(data=1, fsdp=-1, tensor=1), 8) == (1, 8, 1)
  with pytest.raises(ConfigError, match="do not divide the 8"):
    mesh_lib.mesh_shape(MeshConfig(data=-1, fsdp=3, tensor=1), 8)
  with pytest.raises(ConfigError, match="needs 4 devices but 8"):
    mesh_lib.mesh_shape(MeshConfig(data=2, fsdp=2, tensor=1), 8)
  with pytest.raises(ConfigError, match="at most one axis"):
    mesh_lib.mesh_shape(MeshConfig(data=-1, fsdp=-1, tensor=1), 8)


def test_batch_must_divide_over_data_and_fsdp():
  mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  mesh_lib.check_batch(8, mesh, grad_accum=2)
  with pytest.raises(ConfigError, match="multiple of grad_accum \\* data \\* fsdp = 1 \\* 2 \\* 2 = 4"):
    mesh_lib.check_batch(6, mesh)
  with pytest.raises(ConfigError, match="= 8"):
    mesh_lib.check_batch(12, mesh, grad_accum=2)


def test_cli_reports_errors_without_traceback(capsys):
  assert main(["--config", "mqar_gla", "--set", "optim.lrr=1"]) == 2
  err = capsys.readouterr().err
  assert "gla-train: error: --set optim.lrr: unknown key 'lrr'" in err and "Traceback" not in err
  assert main(["--config", "no_such_config"]) == 2
  assert "available: " in capsys.readouterr().err
  assert main(["--config", "mqar_gla", "--set", "mesh.data=3"]) == 2  # 1 CPU device per mesh? 8 here
  assert "mesh" in capsys.readouterr().err
  assert main(["--config", "mqar_gla", "--set", "mesh.data=-1", "data.batch_size=12"]) == 2
  assert "data.batch_size=12 must be a multiple" in capsys.readouterr().err


def test_print_config_and_list(capsys):
  assert main(["--config", "configs/mqar_gla.py", "--set", "optim.lr=0.5", "--print_config"]) == 0
  out = capsys.readouterr().out
  assert "lr = 0.5" in out and "model: GLAConfig" in out
  assert main(["--list"]) == 0
  assert "mqar_gla" in capsys.readouterr().out


def test_apply_overrides_keeps_original(tmp_path):
  base = tiny_config(tmp_path)
  changed = apply_overrides(base, ["optim.lr=0.5"])
  assert base.optim.lr == 1e-2 and changed.optim.lr == 0.5
