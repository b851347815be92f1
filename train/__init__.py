"""Sharded trainer for gla_jax models: mesh, state, step, data (MQAR, text), checkpoints, CLI.

`python -m train --config configs/mqar_gla.py --set key=value ...` (or the `gla-train` console script).
"""
