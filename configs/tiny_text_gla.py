"""A tiny GLA byte-level LM on the Python standard library sources (the embedded offline corpus).

    python -m train --config configs/tiny_text_gla.py

~730 .py files of this interpreter's stdlib (~12 MB, hashed) → tfds array_record (built once under
runs/data) → grain: shuffle, byte tokens, documents packed into rows of 256 with EOS and segment_ids.
"""

from gla_jax.models import presets
from train.config import CheckpointConfig, DataConfig, OptimConfig, TextConfig, TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(
      name="tiny_text_gla",
      # 257 byte tokens (256 bytes + EOS), padded to 320 so the vocabulary splits over tensor axes
      model=presets.gla_tiny(vocab_size=320, hidden_size=128, num_heads=2, num_hidden_layers=2),
      steps=500,
      optim=OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.1, min_lr_ratio=0.1),
      data=DataConfig(kind="text", batch_size=16, seq_len=256, text=TextConfig(corpus="stdlib", tokenizer="byte")),
      checkpoint=CheckpointConfig(every=250, keep=2),
      eval_every=100,
      eval_batches=8,
      log_every=10,
  )
