"""Sliding-window attention (window 64, itself included) on the MQAR task of configs/mqar_gla.py.

    python -m train --config configs/mqar_swa.py

Same width (D = 128), depth (2 layers), vocabulary (8192), data, optimizer and steps as configs/mqar_gla.py.
The local-attention baseline: a pair more than 64 tokens before its query is out of reach, so
recall of the long power-law gaps must fail; decoding keeps a rolling KV cache of 64 slots.
"""

import dataclasses

from configs import mqar_gla
from gla_jax.models import presets
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = mqar_gla.get_config()
  m = base.model
  size = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers)
  model = presets.tiny("swa", window_size=64, num_heads=m.num_heads, **size)
  return dataclasses.replace(base, name="mqar_swa", model=model)
