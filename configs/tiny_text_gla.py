"""A tiny GLA byte-level LM on the Python standard library sources — the default job (CPU, a few minutes).

    python -m train --config configs/tiny_text_gla.py        # or just: python -m train

The corpus is this interpreter's stdlib `.py` files (~730 files, ~12 MB; the sorted list and contents are
hashed into the dataset name) → a tfds array_record dataset, built once under runs/data (~1 s) → grain:
shuffle, byte tokens, documents packed into rows of 256 with EOS and segment_ids. 2-layer GLA, D = 64,
2 heads; 300 steps of 8 x 256 tokens.
"""

from gla_jax.models import presets
from train.config import CheckpointConfig, DataConfig, OptimConfig, TextConfig, TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(
      name="tiny_text_gla",
      # 257 byte tokens (256 bytes + EOS), padded to 320 so the vocabulary splits over tensor axes
      model=presets.gla_tiny(vocab_size=320, hidden_size=64, num_heads=2, num_hidden_layers=2),
      steps=300,
      optim=OptimConfig(lr=3e-3, warmup_steps=30, weight_decay=0.1, min_lr_ratio=0.1),
      data=DataConfig(kind="text", batch_size=8, seq_len=256, text=TextConfig(corpus="stdlib", tokenizer="byte")),
      checkpoint=CheckpointConfig(every=100, keep=2),
      eval_every=100,
      eval_batches=8,
      log_every=10,
  )
