"""GLA 340M (fla-hub/gla-340M shape: D=1024, 24 layers, 4 heads, vocab 32000, tied) with the paper's recipe.

    python -m train --config configs/gla_340m.py --set data.text.corpus=/path/to/text/dir
    python -m train --config configs/gla_340m.py --set data.kind=synthetic steps=50   # throughput only

Recipe (GLA paper §5.1): AdamW, peak lr 3e-4, cosine to 10%, warmup 0.5B tokens, weight decay 0.01, clip 1.0,
0.5M tokens per step (256 x 2048), 15B tokens = 30k steps; bf16 compute, float32 params and optimizer state.
Mesh: ZeRO-3 over every device (fsdp=-1); grad_accum=16 (16 x 2048 tokens per micro-batch and step) fits
one 80 GB GPU; on N GPUs divide it by N (the batch must divide by grad_accum * data * fsdp).
"""

from gla_jax.models import presets
from train.config import CheckpointConfig, DataConfig, MeshConfig, OptimConfig, TextConfig, TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(
      name="gla_340m",
      model=presets.gla_340m(dtype="bfloat16", param_dtype="float32"),
      steps=30_000,
      grad_accum=16,
      mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
      optim=OptimConfig(lr=3e-4, warmup_steps=1000, min_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.01,
                        clip_norm=1.0),
      data=DataConfig(kind="text", batch_size=256, seq_len=2048,
                      text=TextConfig(corpus="stdlib", tokenizer="bpe", bpe_vocab_size=32000)),
      checkpoint=CheckpointConfig(every=1000, keep=3),
      eval_every=1000,
      eval_batches=16,
      log_every=10,
  )
