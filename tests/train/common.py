"""Tiny configs shared by the trainer tests (CPU, 8 fake devices from tests/conftest.py)."""

from __future__ import annotations

import dataclasses

from gla_jax.models import presets
from train.config import CheckpointConfig, DataConfig, MeshConfig, MQARConfig, OptimConfig, TrainConfig, apply_overrides


def tiny_config(workdir: str, *overrides: str, **fields) -> TrainConfig:
  """A 1-layer GLA (D=32, 2 heads, vocab 64) on MQAR (T=32, 4 pairs), batch 8; `overrides` are --set strings."""
  config = TrainConfig(
      name="tiny",
      model=presets.gla_tiny(hidden_size=32, num_heads=2, num_hidden_layers=1, vocab_size=64),
      steps=6,
      optim=OptimConfig(lr=1e-2, warmup_steps=2),
      data=DataConfig(kind="mqar", batch_size=8, seq_len=32, mqar=MQARConfig(num_kv_pairs=4)),
      mesh=MeshConfig(data=1, fsdp=1, tensor=1),
      checkpoint=CheckpointConfig(every=0, keep=5, async_save=True),
      eval_every=0, eval_batches=1, log_every=1, workdir=str(workdir), progress=False, tensorboard=False,
      plot=False)
  config = dataclasses.replace(config, **fields)
  return apply_overrides(config, list(overrides))
