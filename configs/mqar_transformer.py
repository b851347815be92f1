"""Transformer++ (RoPE softmax attention + SwiGLU) on the same MQAR task as configs/mqar_gla.py.

    python -m train --config configs/mqar_transformer.py

The attention baseline for the recall comparison: same width, depth, data, optimizer and steps.
"""

import dataclasses

from configs import mqar_gla
from gla_jax.models import presets
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = mqar_gla.get_config()
  m = base.model
  model = presets.transformer_tiny(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_heads=m.num_heads,
                                   num_hidden_layers=m.num_hidden_layers)
  return dataclasses.replace(base, name="mqar_transformer", model=model)
