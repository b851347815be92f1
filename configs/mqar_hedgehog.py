"""Hedgehog (learned softmax-mimicking feature map, normalised) on the MQAR task of configs/mqar_gla.py.

    python -m train --config configs/mqar_hedgehog.py

Same width (D = 128), depth (2 layers), vocabulary (8192), data, optimizer and steps as configs/mqar_gla.py.
2 heads of 64 (Hedgehog features: 128 per head).
"""

import dataclasses

from configs import mqar_gla
from gla_jax.models import presets
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = mqar_gla.get_config()
  m = base.model
  size = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers)
  model = presets.tiny("hedgehog", num_heads=m.num_heads, **size)
  return dataclasses.replace(base, name="mqar_hedgehog", model=model)
