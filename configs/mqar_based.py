"""Based (Taylor-feature linear attention, feature dim 16) on the MQAR task of configs/mqar_gla.py.

    python -m train --config configs/mqar_based.py

Same width (D = 128), depth (2 layers), vocabulary (8192), data, optimizer and steps as configs/mqar_gla.py.
The tiny preset's 4 heads (value head dim 32), fla's feature_dim 16 (1 + 16 + 136 Taylor features).
"""

import dataclasses

from configs import mqar_gla
from gla_jax.models import presets
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = mqar_gla.get_config()
  m = base.model
  size = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers)
  model = presets.tiny("based", **size)
  return dataclasses.replace(base, name="mqar_based", model=model)
