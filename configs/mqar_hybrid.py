"""GLA/SWA hybrid on the MQAR task of configs/mqar_gla.py: the GLA model with layer 1 sliding-window attention.

    python -m train --config configs/mqar_hybrid.py

Layer 0 is the GLA layer of configs/mqar_gla.py (short convolutions, 2 heads); layer 1 is softmax
attention over the last 64 tokens (2 heads of 64; fla's `attn` spec {"layers": [1], "num_heads": 2,
"window_size": 64}). Same data, optimizer and steps. Decoding keeps GLA's state and a rolling KV cache of 64
slots: no length limit.
"""

import dataclasses

from configs import mqar_gla
from train.config import TrainConfig


def get_config() -> TrainConfig:
  base = mqar_gla.get_config()
  model = dataclasses.replace(base.model, attn={"layers": [1], "num_heads": 2, "window_size": 64})
  return dataclasses.replace(base, name="mqar_hybrid", model=model)
