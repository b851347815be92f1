"""GLA 1.3B (fla-hub/gla-1.3B shape: D=2048, 24 layers, 4 heads, vocab 32000, untied) with the paper's recipe.

    python -m train --config configs/gla_1p3b.py --set data.text.corpus=/path/to/text/dir

Recipe (GLA paper §5.1): AdamW, peak lr 3e-4, cosine to 10%, warmup 1000 steps, weight decay 0.01, clip 1.0,
1M tokens per step (512 x 2048), 100B tokens = 100k steps; bf16 compute, float32 params, per-block remat.
Mesh: ZeRO-3 over every device; grad_accum=32 is sized for 8 x 80 GB GPUs (2 sequences per GPU per
micro-batch); change it with the device count.
"""

from gla_jax.models import presets
from train.config import CheckpointConfig, DataConfig, MeshConfig, OptimConfig, TextConfig, TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(
      name="gla_1p3b",
      model=presets.gla_1p3b(dtype="bfloat16", param_dtype="float32", remat=True),
      steps=100_000,
      grad_accum=32,
      mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
      optim=OptimConfig(lr=3e-4, warmup_steps=1000, min_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.01,
                        clip_norm=1.0),
      data=DataConfig(kind="text", batch_size=512, seq_len=2048,
                      text=TextConfig(corpus="stdlib", tokenizer="bpe", bpe_vocab_size=32000)),
      checkpoint=CheckpointConfig(every=1000, keep=3),
      eval_every=2000,
      eval_batches=16,
      log_every=10,
  )
