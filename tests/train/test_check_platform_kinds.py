"""`train.config.check_platform` for every model kind: `model.attn_impl` must name an implementation of the
op the config's native kind runs (registry.MixerKind.op) that runs on the platform."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from gla_jax.layers.mixers import registry
from gla_jax.models import presets
from train.config import ConfigError, check_platform

from tests.train.common import tiny_config

OP_OBJECTS = {"chunk_gla": ("pallas_kernels.gla.ops", "CHUNK_GLA"),
              "chunk_simple_gla": ("pallas_kernels.simple_gla.ops", "CHUNK_SIMPLE_GLA"),
              "chunk_linear_attn": ("pallas_kernels.linear_attn.ops", "CHUNK_LINEAR_ATTN")}


def _train_config(tmp_path, model, impl):
  # bypass the model config's own check (attention configs reject unknown names at construction): the
  # platform check must stand on its own
  model = dataclasses.replace(model, attn_impl="auto")
  object.__setattr__(model, "attn_impl", impl)
  return tiny_config(tmp_path, model=model)


def _op_name(kind: str) -> str:
  return registry.kind(kind).op.split("(")[0]


@pytest.mark.parametrize("kind", registry.KIND_NAMES)
def test_every_kind(tmp_path, kind):
  model = presets.tiny(kind)
  assert type(model).kind in ("attention", "swa") or type(model).kind == kind
  for platform in ("cpu", "gpu", "tpu"):
    check_platform(_train_config(tmp_path, model, "auto"), platform)
  check_platform(_train_config(tmp_path, model, "xla"), "cpu")
  if _op_name(kind) == "dot_product_attention":
    check_platform(_train_config(tmp_path, model, "cudnn"), "gpu")
    with pytest.raises(ConfigError, match="'cudnn' needs an NVIDIA GPU, this is cpu"):
      check_platform(_train_config(tmp_path, model, "cudnn"), "cpu")
    with pytest.raises(ConfigError, match=r"'triton': expected one of auto, xla, cudnn \(softmax attention"):
      check_platform(_train_config(tmp_path, model, "triton"), "gpu")
    return
  module, attr = OP_OBJECTS[_op_name(kind)]
  op = getattr(importlib.import_module(module), attr)
  for impl in op.available_impls():  # each implementation passes exactly on its platforms
    for platform in ("cpu", "gpu", "tpu"):
      config = _train_config(tmp_path, model, impl)
      if platform in op.lookup(impl).platforms:
        check_platform(config, platform)
      else:
        with pytest.raises(ConfigError, match=rf"runs on .*not on {platform}"):
          check_platform(config, platform)
  with pytest.raises(ConfigError, match=rf"expected auto or one of xla.* \(the implementations of {op.name}, "):
    check_platform(_train_config(tmp_path, model, "cudnn"), "gpu")  # an attention impl, not this op's


def test_hybrid_checks_the_native_op(tmp_path):
  model = presets.hybrid_tiny()  # GLA layers + one SWA layer: attn_impl is chunk_gla's
  check_platform(_train_config(tmp_path, model, "triton"), "gpu")
  with pytest.raises(ConfigError, match="runs on gpu, not on cpu"):
    check_platform(_train_config(tmp_path, model, "triton"), "cpu")
  with pytest.raises(ConfigError, match=r"expected auto or one of .*of chunk_gla, the op of GLAConfig's kind 'gla'"):
    check_platform(_train_config(tmp_path, model, "cudnn"), "gpu")


def test_swa_transformer_is_attention(tmp_path):
  model = presets.tiny("swa")
  assert model.layer_kinds() == ("swa", "swa")
  check_platform(_train_config(tmp_path, model, "xla"), "tpu")
  with pytest.raises(ConfigError, match="needs an NVIDIA GPU"):
    check_platform(_train_config(tmp_path, model, "cudnn"), "tpu")
