"""Remat (activation checkpointing) policies by name: `ModelConfig.remat_policy`.

The JAX policies (`jax.checkpoint_policies.<name>`) plus one of ours:

* "dots_and_op_out": keep every matmul output *and* each linear-attention mixer's op output `o`
  (named `OP_OUT` with `checkpoint_name` by the mixers), so the backward recomputes only elementwise
  work: not the chunk kernel's forward, which "dots_saveable" re-runs to rebuild `o`.

Why the scanned presets use a policy at all: under `scan_layers`, what the backward needs from each layer
leaves the forward loop as a stacked residual, so every intermediate autodiff keeps is materialised,
float32 upcasts included. Unscanned, XLA fuses most of those into the backward's consumers instead. For
GLA-340M at 16 × 2048 (bf16 compute) the scanned step without remat keeps ≈ 4.3 GiB per layer (≈ 105 GiB
for 24 layers: XLA asked for 101.5 GiB on an H200 and ran out of memory), with "dots_saveable" ≈ 0.77 GiB
and with "dots_and_op_out" ≈ 0.83 GiB per layer (+ o in bf16) — counted from the traced backward's
residuals (jax.vjp; tests/gla_jax/test_remat.py checks the ratio on a small model). Unscanned, the same
step compiled to 45 GB without remat and 30.5 GB with "dots_saveable" (H200, benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Callable

import jax

OP_OUT = "mixer_op_out"  # checkpoint_name of a linear-attention mixer's op output o [B, T, H, V]

POLICIES = ("full", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
            "dots_and_op_out", "none")


def policy(name: str) -> Callable | None:
  """The jax.checkpoint policy called `name` (None for "full": save nothing, recompute everything)."""
  if name not in POLICIES or name == "none":
    raise ValueError(f"remat_policy must be one of {POLICIES[:-1]} here (\"none\" means no remat), got {name!r}")
  if name == "full":
    return None
  if name == "dots_and_op_out":
    cp = jax.checkpoint_policies
    return cp.save_from_both_policies(cp.dots_saveable, cp.save_only_these_names(OP_OUT))
  return getattr(jax.checkpoint_policies, name)
