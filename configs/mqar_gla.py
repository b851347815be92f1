"""GLA on multi-query associative recall — the default job, sized for a 2-core CPU (a few minutes).

    python -m train --config configs/mqar_gla.py

2-layer GLA (D=128, 2 heads), vocabulary 512, sequences of 128 tokens holding 16 key-value pairs, queries at
power-law gaps (Zoology's a = 0.01). Accuracy is measured on the 16 query positions only.
"""

from gla_jax.models import presets
from train.config import CheckpointConfig, DataConfig, MQARConfig, OptimConfig, TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(
      name="mqar_gla",
      model=presets.gla_tiny(vocab_size=512, hidden_size=128, num_heads=2, num_hidden_layers=2),
      steps=600,
      optim=OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.1, min_lr_ratio=0.05),
      data=DataConfig(kind="mqar", batch_size=64, seq_len=128, mqar=MQARConfig(num_kv_pairs=16)),
      checkpoint=CheckpointConfig(every=200, keep=2),
      eval_every=100,
      eval_batches=4,
      log_every=10,
  )
