"""Read and write fla checkpoints of every model type we have (a local directory with config.json and
*.safetensors; nothing is downloaded): gla, transformer, retnet, linear_attn, hgrn2, mamba2 and their
hybrids (an `attn` spec); our kinds without an fla model (based, hedgehog, lightning) use the same
format under their own model_type.

    model = load_fla_checkpoint("path/to/gla-340M-15B")                 # our GLAForCausalLM
    model = load_fla_checkpoint(path, dtype="bfloat16", param_dtype="bfloat16")
    save_fla_checkpoint(model, "out/dir")                                # loadable by fla / transformers

Names (docs/models.md) follow our module paths, renamed where fla's differ (the config's
`fla_prefix` / `fla_block_names` / `fla_final_norm`, each mixer's `fla_param_names`). For GLA:
`model.embeddings.weight`, `model.layers.{i}.attn_norm.weight`,
`…attn.{q,k,v,g,o}_proj.weight`, `…attn.gk_proj.0.weight`, `…attn.gk_proj.1.{weight,bias}`,
`…attn.g_norm_swish_gate.weight`, `…mlp_norm.weight`, `…mlp.{gate,up,down}_proj.weight`,
`model.norm.weight`, `lm_head.weight` (absent when tied). torch `nn.Linear.weight` is [out, in]: our
kernels are its transpose; a short conv's [C, 1, W] weight is our [W, C].
Legacy checkpoints: a fused `mlp.gate_proj.weight` [2F, D] (gate = first half, up = second half) is
split; `attn_mode: fused_chunk` (or fused_recurrent) is the same math and reads as "chunk".
A `scan_layers` model (stacked runs, gla_jax/models/scan.py) reads and writes the same per-layer names:
`load_fla_checkpoint(path, scan_layers=True)` stacks them, `save_fla_checkpoint` unstacks.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from gla_jax.layers.mixers import registry
from gla_jax.models import GLAConfig, ModelConfig, TransformerConfig, build_model
from gla_jax.models.lm import CausalLM
from gla_jax.models.scan import stack_layers, unstack_layers

# GLAConfig fields fla's GLAConfig cannot express (the layer's hard-wired defaults)
_GLA_LAYER_FIXED = {"gate_logit_normalizer": 16, "gate_low_rank_dim": 16, "conv_bias": False}


def config_classes() -> dict[str, type]:
  """model_type → our config class, for every kind of the registry."""
  out = {}
  for name in registry.KIND_NAMES:
    cls = registry.config_class(name)
    out.setdefault(cls.model_type, cls)
  return out


# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------


def _decode_floats(value):
  """transformers writes non-finite floats in config.json as {"__float__": "Infinity"} (and -Infinity,
  NaN); read them back as floats, inside lists too."""
  if isinstance(value, dict):
    if set(value) == {"__float__"}:
      return float(value["__float__"])
    return {k: _decode_floats(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_decode_floats(v) for v in value]
  return value


def config_from_fla(fla_config: dict[str, Any], **overrides) -> ModelConfig:
  """A fla config.json dict → our config of its `model_type` (GLAConfig, RetNetConfig, …); `overrides` win.

  Keys that are not config fields (transformers metadata, fla-only loss switches) are ignored.
  Raises ValueError for a model type or an option this package does not implement.
  """
  fla_config = _decode_floats(fla_config)
  model_type = fla_config.get("model_type", "gla")
  classes = config_classes()
  if model_type not in classes:
    raise ValueError(f"config model_type must be one of {sorted(classes)}, got {model_type!r}")
  cls = classes[model_type]
  if fla_config.get("attnres_block_size") is not None:
    raise ValueError("attention residuals (config 'attnres_block_size') are not supported")
  if fla_config.get("hidden_act", "swish") not in ("swish", "silu"):
    raise ValueError(f"hidden_act must be 'swish', got {fla_config['hidden_act']!r}")
  names = {f.name for f in dataclasses.fields(cls)} - set(cls.jax_only)
  kwargs = {k: v for k, v in fla_config.items() if k in names}
  if cls is GLAConfig and kwargs.get("attn_mode") in ("fused_chunk", "fused_recurrent"):
    kwargs["attn_mode"] = "chunk"  # every fla GLA kernel computes the same function
  if cls is TransformerConfig and kwargs.get("rope_theta") is None and "rope_theta" in kwargs:
    raise ValueError("rope_theta=None (no positional encoding) is not supported")
  kwargs.update(overrides)
  return cls(**kwargs)


def config_to_fla(config: ModelConfig, *, torch_dtype: str | None = None) -> dict[str, Any]:
  """Our config → a fla config.json dict (model_type, architectures and the fla fields)."""
  if not isinstance(config, ModelConfig):
    raise ValueError(f"config must be a model config (gla_jax.models.configs), got {type(config).__name__}")
  if isinstance(config, GLAConfig):
    for name, value in _GLA_LAYER_FIXED.items():
      if getattr(config, name) != value:
        raise ValueError(f"fla's GLAConfig cannot express {name}={getattr(config, name)!r} (fla uses {value!r})")
  out = {"model_type": config.model_type, "architectures": [config.architecture]}
  for f in dataclasses.fields(config):
    if f.name in config.jax_only or (isinstance(config, GLAConfig) and f.name in _GLA_LAYER_FIXED):
      continue
    out[f.name] = getattr(config, f.name)
  if config.attn is not None:
    out["attn"] = [spec.to_dict() for spec in config.attn]
  else:
    out.pop("attn")
  out["torch_dtype"] = torch_dtype or str(jnp.dtype(config.param_dtype))
  return out


# ------------------------------------------------------------------------------------------------
# parameter names
# ------------------------------------------------------------------------------------------------


def _fla_name(path: tuple, config) -> tuple[str, str]:
  """Our param path → (fla tensor name, layout) with layout "linear" ([in,out]ᵀ), "conv" or "same"."""
  path = tuple(str(p) for p in path)
  prefix = config.fla_prefix
  if path == ("embeddings", "embedding"):
    return f"{prefix}.embeddings.weight", "same"
  if path == ("norm", "weight"):
    return f"{prefix}.{config.fla_final_norm}.weight", "same"
  if path == ("lm_head", "kernel"):
    return "lm_head.weight", "linear"
  if path == ("lower_bounds",):  # HGRN2's model-level forget-gate lower bounds [L, D]
    return f"{prefix}.lower_bounds", "same"
  if len(path) < 4 or path[0] != "layers":
    raise ValueError(f"no fla name for parameter {'/'.join(path)}")
  layer = int(path[1])
  rest = list(path[2:])
  module, leaf = rest[:-1], rest[-1]
  if module[0] == "attn":
    kind = config.layer_kinds()[layer]
    renames = registry.mixer_class(kind).fla_param_names(config, layer)
    module[1:] = [renames.get(m, m) for m in module[1:]]
  module[0] = config.fla_block_names.get(module[0], module[0])
  if leaf == "kernel":
    leaf, layout = "weight", "linear"
  elif leaf == "weight" and (module[-1].endswith("_conv1d") or module[-1] == "conv1d"):
    layout = "conv"
  else:
    layout = "same"
  return f"{prefix}.layers.{layer}." + ".".join([*module, leaf]), layout


def _to_fla_layout(x: np.ndarray, layout: str) -> np.ndarray:
  if layout == "linear":
    return x.T
  if layout == "conv":  # [W, C] → [C, 1, W]
    return x.T[:, None, :]
  return x


def _from_fla_layout(x: np.ndarray, layout: str) -> np.ndarray:
  if layout == "linear":
    return x.T
  if layout == "conv":  # [C, 1, W] → [W, C]
    return x[:, 0, :].T
  return x


def _flat_params(model: nnx.Module) -> list[tuple[tuple, Any]]:
  """(path, array) of every param in the unscanned layout (`layers/{i}/…`, scan_layers unstacked)."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  if getattr(model.config, "scan_layers", False):
    params = unstack_layers(params, model.config)
  return list(nnx.to_flat_state(nnx.State(params)))


def fla_state_dict(model: CausalLM, dtype=None) -> dict[str, np.ndarray]:
  """The model's parameters under fla's names and torch layouts (lm_head omitted when tied)."""
  out = {}
  for path, value in _flat_params(model):
    name, layout = _fla_name(path, model.config)
    value = np.asarray(jax.device_get(value[...] if isinstance(value, nnx.Variable) else value))
    if dtype is not None:
      value = value.astype(jnp.dtype(dtype))
    out[name] = np.ascontiguousarray(_to_fla_layout(value, layout))
  return out


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------


def _read_tensors(path: str) -> dict[str, np.ndarray]:
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    if glob.glob(os.path.join(path, "*.bin")):
      raise ValueError(f"{path} holds only torch .bin weights; convert them to safetensors first")
    raise ValueError(f"no *.safetensors file in {path}")
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    tensors.update(load_file(f))
  return tensors


def _split_fused_gate(tensors: dict[str, np.ndarray], config) -> None:
  """Legacy fla: mlp.gate_proj.weight [2F, D] holds gate (first half) and up (second half)."""
  F = config.mlp_size
  for name in list(tensors):
    if name.endswith(".mlp.gate_proj.weight") and tensors[name].shape[0] == 2 * F:
      up_name = name.replace(".gate_proj.", ".up_proj.")
      if up_name in tensors:
        raise ValueError(f"{name} has the fused shape {tensors[name].shape} but {up_name} exists too")
      fused = tensors.pop(name)
      tensors[name], tensors[up_name] = fused[:F], fused[F:]


def _drop_tied_copies(tensors: dict[str, np.ndarray], loaded: dict[str, np.ndarray]) -> None:
  """A module fla shares between two names (linear attention's feature_map_q / feature_map_k with
  tie_feature_map_qk) is stored under both; we hold it once, under feature_map_q. The second copy is
  dropped when it equals the first, and left over (an error) when it does not."""
  for name in list(tensors):
    if ".feature_map_k." in name:
      twin = loaded.get(name.replace(".feature_map_k.", ".feature_map_q."))
      if twin is not None and twin.shape == tensors[name].shape and np.array_equal(twin, tensors[name]):
        del tensors[name]


def load_fla_checkpoint(path: str, *, dtype=None, param_dtype=None, **config_overrides) -> CausalLM:
  """A fla checkpoint directory → our model (GLAForCausalLM or TransformerForCausalLM).

  Args:
    path: directory with config.json and one or more *.safetensors files.
    dtype, param_dtype: compute and parameter dtypes (default float32); other config overrides
      (attn_impl=..., remat=...) as keywords.

  Raises ValueError when a tensor is missing, has the wrong shape, or is left over.
  """
  with open(os.path.join(path, "config.json")) as f:
    fla_config = json.load(f)
  if dtype is not None:
    config_overrides["dtype"] = str(jnp.dtype(dtype))
  if param_dtype is not None:
    config_overrides["param_dtype"] = str(jnp.dtype(param_dtype))
  config = config_from_fla(fla_config, **config_overrides)
  tensors = _read_tensors(path)
  _split_fused_gate(tensors, config)
  if config.tie_word_embeddings:
    tensors.pop("lm_head.weight", None)  # tied: the head is the embedding

  flat_config = dataclasses.replace(config, scan_layers=False)  # fla's names are per layer
  abstract = nnx.eval_shape(lambda: build_model(flat_config, rngs=nnx.Rngs(0)))
  flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
  pdt = jnp.dtype(config.param_dtype)
  missing, new_leaves, loaded = [], [], {}
  for path_, var in flat:
    name, layout = _fla_name(path_, config)
    loaded[name] = tensors.get(name)
    if name not in tensors:
      missing.append(name)
      continue
    value = _from_fla_layout(tensors.pop(name), layout)
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"{name}: expected shape {tuple(var.shape)} (ours, after layout change), "
                       f"got {tuple(value.shape)}")
    new_leaves.append((path_, var.replace(jnp.asarray(value).astype(pdt))))
  if missing:
    raise ValueError(f"checkpoint {path} lacks {len(missing)} tensors, e.g. {missing[:5]}")
  _drop_tied_copies(tensors, loaded)
  leftover = [n for n in tensors if not n.endswith("rotary.inv_freq")]
  if leftover:
    raise ValueError(f"checkpoint {path} has {len(leftover)} tensors the model does not use, e.g. {leftover[:5]}")
  params = nnx.to_pure_dict(nnx.from_flat_state(new_leaves))
  if config.scan_layers:
    params = stack_layers(params, config)
  graphdef, _, rest = nnx.split(nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0))), nnx.Param, ...)
  rest = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nnx.to_pure_dict(rest))
  return nnx.merge(graphdef, params, rest)


def save_fla_checkpoint(model: CausalLM, path: str, *, dtype=None) -> None:
  """Write `model` as a fla checkpoint: config.json + model.safetensors (torch layouts, fla names)."""
  os.makedirs(path, exist_ok=True)
  dtype = jnp.dtype(dtype or model.config.param_dtype)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_fla(model.config, torch_dtype=str(dtype)), f, indent=2)
  save_file(fla_state_dict(model, dtype), os.path.join(path, "model.safetensors"),
            metadata={"format": "pt"})
