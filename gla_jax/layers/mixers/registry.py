"""The mixer kinds: one name → its layer class and its model config class (docs/models.md).

    registry.mixer_class("retnet")     → MultiScaleRetention
    registry.config_class("retnet")    → RetNetConfig (a whole model of that kind; `tiny()` preset)
    registry.KIND_NAMES                → every kind, in table order

Modules are imported on first use ("module:attribute" paths), so importing the registry imports no
mixer. A model config's `layer_kinds()` names the kind of each layer (its native kind, softmax attention
or SWA for the layers its `attn` spec lists); the trunk (gla_jax/models/lm.py) builds each layer with
`mixer_class(kind).from_config(config, layer_idx, rngs=...)`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class MixerKind:
  """One kind: where its layer and its model config live, and what its tiny preset sets."""

  name: str
  mixer: str  # "module:Class" of the layer (a base.Mixer)
  config: str  # "module:Class" of the model config (a configs.base.ModelConfig)
  paper: str  # for the README's table
  op: str  # the op it runs on
  tiny: tuple[tuple[str, Any], ...] = ()  # config fields of presets.tiny(kind) beyond the config's own


_M = "gla_jax.layers.mixers"
_C = "gla_jax.models.configs"
KINDS: dict[str, MixerKind] = {k.name: k for k in (
    MixerKind("gla", f"{_M}.gla:GatedLinearAttention", f"{_C}.gla:GLAConfig",
              "Yang et al. 2024, GLA", "chunk_gla"),
    MixerKind("attention", f"{_M}.attention:Attention", f"{_C}.transformer:TransformerConfig",
              "Touvron et al. 2023 (Transformer++)", "dot_product_attention"),
    MixerKind("swa", f"{_M}.swa:SlidingWindowAttention", f"{_C}.transformer:TransformerConfig",
              "Beltagy et al. 2020 (sliding window)", "dot_product_attention",
              tiny=(("window_size", 32),)),
    MixerKind("retnet", f"{_M}.retnet:MultiScaleRetention", f"{_C}.retnet:RetNetConfig",
              "Sun et al. 2023, RetNet", "chunk_simple_gla(g_gamma)"),
    MixerKind("lightning", f"{_M}.lightning:LightningAttention", f"{_C}.lightning:LightningConfig",
              "Qin et al. 2024, Lightning Attention-2", "chunk_simple_gla(g_gamma)"),
    MixerKind("linear_attn", f"{_M}.linear_attn:LinearAttention", f"{_C}.linear_attn:LinearAttentionConfig",
              "Katharopoulos et al. 2020", "chunk_linear_attn"),
    MixerKind("based", f"{_M}.based:BasedLinearAttention", f"{_C}.based:BasedConfig",
              "Arora et al. 2024, Based", "chunk_linear_attn"),
    MixerKind("hedgehog", f"{_M}.hedgehog:HedgehogAttention", f"{_C}.hedgehog:HedgehogConfig",
              "Zhang et al. 2024, Hedgehog", "chunk_linear_attn"),
    MixerKind("hgrn2", f"{_M}.hgrn2:HGRN2Attention", f"{_C}.hgrn2:HGRN2Config",
              "Qin et al. 2024, HGRN2", "chunk_gla"),
    MixerKind("mamba2", f"{_M}.mamba2:Mamba2", f"{_C}.mamba2:Mamba2Config",
              "Dao & Gu 2024, Mamba-2", "chunk_simple_gla(g)"),
)}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def _load(path: str):
  module, attr = path.split(":")
  return getattr(importlib.import_module(module), attr)


def kind(name: str) -> MixerKind:
  """The `MixerKind` called `name`; ValueError naming the kinds otherwise."""
  if name not in KINDS:
    raise ValueError(f"unknown mixer kind {name!r}; expected one of {', '.join(KIND_NAMES)}")
  return KINDS[name]


def mixer_class(name: str):
  """The layer class of kind `name` (imported on first use)."""
  return _load(kind(name).mixer)


def config_class(name: str):
  """The model config class of kind `name` (imported on first use)."""
  return _load(kind(name).config)
