"""RetNet (multi-scale retention, fixed per-head decays) on the MQAR task of configs/mqar_gla.py.

    python -m train --config configs/mqar_retnet.py

Same width (D = 128), depth (2 layers), vocabulary (8192), data, optimizer and steps as configs/mqar_gla.py.
2 heads (key dim 64, value dim 128 per head: fla's expand_k 1, expand_v 2); fla's RetNet model passes
no short conv to its layers, so there is none here (unlike configs/mqar_gla.py).
"""

import dataclasses

from configs import mqar_gla
from gla_jax.models import presets
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = mqar_gla.get_config()
  m = base.model
  size = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers)
  model = presets.tiny("retnet", num_heads=m.num_heads, **size)
  return dataclasses.replace(base, name="mqar_retnet", model=model)
