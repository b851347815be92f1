"""HGRN2 (gated linear RNN with outer-product state expansion) on the MQAR task of configs/mqar_gla.py.

    python -m train --config configs/mqar_hgrn2.py

Same width (D = 128), depth (2 layers), vocabulary (8192), data, optimizer and steps as configs/mqar_gla.py.
2 heads (expand_ratio 64), short convolutions on q/f/i as in configs/mqar_gla.py, no lower bound
(the tiny preset's: 2 layers).
"""

import dataclasses

from configs import mqar_gla
from gla_jax.models import presets
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = mqar_gla.get_config()
  m = base.model
  size = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers)
  model = presets.tiny("hgrn2", expand_ratio=m.hidden_size // m.num_heads, use_short_conv=True, **size)
  return dataclasses.replace(base, name="mqar_hgrn2", model=model)
