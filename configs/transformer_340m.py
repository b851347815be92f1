"""Transformer++ 340M (D=1024, 24 layers, 16 heads of 64, vocab 32000, tied): the baseline for gla_340m.

    python -m train --config configs/transformer_340m.py --set data.text.corpus=/path/to/text/dir

Same data, optimizer, batch and mesh as configs/gla_340m.py; only the token mixer differs.
"""

import dataclasses

from configs import gla_340m
from gla_jax.models import presets
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = gla_340m.get_config()
  return dataclasses.replace(base, name="transformer_340m",
                             model=presets.transformer_340m(dtype="bfloat16", param_dtype="float32"))
