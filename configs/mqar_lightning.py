"""Lightning Attention-2 (TransNormerLLM linear attention, fixed decays) on the MQAR task of mqar_gla.py.

    python -m train --config configs/mqar_lightning.py

Same width (D = 128), depth (2 layers), vocabulary (8192), data, optimizer and steps as configs/mqar_gla.py.
2 heads of 64, with short convolutions on q/k/v as in configs/mqar_gla.py.
"""

import dataclasses

from configs import mqar_gla
from gla_jax.models import presets
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = mqar_gla.get_config()
  m = base.model
  size = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers)
  model = presets.tiny("lightning", num_heads=m.num_heads, use_short_conv=True, **size)
  return dataclasses.replace(base, name="mqar_lightning", model=model)
