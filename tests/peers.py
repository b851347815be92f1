"""Helpers for the optional GPU tests that import peer libraries (fla)."""

from __future__ import annotations

import os
import sys


def narrow_fla_autotune():
  """Make fla's `@triton.autotune(configs=[...])` keep only the first config.

  fla autotunes every Triton kernel over all its configs on first use, per shape and dtype — minutes
  per shape. Narrowing changes block sizes only, not the math. Must run before fla is imported;
  GLA_PARITY_FULL_AUTOTUNE=1 turns it off.
  """
  if os.environ.get("GLA_PARITY_FULL_AUTOTUNE") == "1" or any(m.startswith("fla") for m in sys.modules):
    return
  import triton
  if getattr(triton.autotune, "_gla_narrowed", False):
    return
  original = triton.autotune

  def first_config_only(configs, key, *args, **kwargs):
    return original(configs[:1], key, *args, **kwargs)

  first_config_only._gla_narrowed = True
  triton.autotune = first_config_only
