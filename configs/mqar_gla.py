"""GLA on multi-query associative recall (MQAR; Zoology's setting: vocabulary 8192, 2-layer models).

    python -m train --config configs/mqar_gla.py

Sequences of 256 tokens open with 16 key-value pairs; each key is asked again later at a power-law gap
(a = 0.01) and the model must answer with its value. Loss and accuracy count the 16 query positions only
(chance ≈ 1/4096). 2-layer GLA, D = 128, 2 heads (head dims 32/64), short causal convolutions on q/k/v
(fla's `use_short_conv`; they let a value token see the key just before it). 256 sequences per step.

A GPU job (a few minutes); on a 2-core CPU one step takes ~10 s — try
`--set data.batch_size=32 data.seq_len=64 data.mqar.num_kv_pairs=4` there, or the text LM
(configs/tiny_text_gla.py).
"""

from gla_jax.models import presets
from train.config import CheckpointConfig, DataConfig, MQARConfig, OptimConfig, TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(
      name="mqar_gla",
      model=presets.gla_tiny(vocab_size=8192, hidden_size=128, num_heads=2, num_hidden_layers=2,
                             use_short_conv=True),
      steps=2000,
      optim=OptimConfig(lr=3e-3, warmup_steps=100, weight_decay=0.1, min_lr_ratio=0.05),
      data=DataConfig(kind="mqar", batch_size=256, seq_len=256, mqar=MQARConfig(num_kv_pairs=16)),
      checkpoint=CheckpointConfig(every=500, keep=2),
      eval_every=250,
      eval_batches=4,
      log_every=50,
  )
