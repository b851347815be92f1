"""Mamba-2 (SSD: scalar per-head decays, no MLP blocks) on the MQAR task of configs/mqar_gla.py.

    python -m train --config configs/mqar_mamba2.py

Same width (D = 128), depth (2 layers), vocabulary (8192), data, optimizer and steps as configs/mqar_gla.py.
The tiny preset's heads (head_dim 16, state_size 32, expand 2: 16 heads); its blocks have no MLP, so
the model is smaller than the others at the same width.
"""

import dataclasses

from configs import mqar_gla
from gla_jax.models import presets
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = mqar_gla.get_config()
  m = base.model
  size = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers)
  model = presets.tiny("mamba2", **size)
  return dataclasses.replace(base, name="mqar_mamba2", model=model)
