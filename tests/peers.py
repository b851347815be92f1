"""Helpers for the optional GPU tests that import peer libraries (fla)."""

from __future__ import annotations

import gc
import os

KEEP_CONFIGS = 2  # ≥ 2: with several configs Triton skips one that fails to compile (out of resources)


def narrow_fla_autotune(keep: int = KEEP_CONFIGS):
  """Make every Triton autotuner (fla's kernels) try only its first `keep` configs.

  fla autotunes each Triton kernel over all its configs on first use, per key (block sizes, K, V, and
  for some kernels B and H): minutes per new shape. Narrowing changes block sizes only, not the math —
  enough for correctness tests (timing belongs to benchmarks/bench_gla.py, which autotunes fully).
  fla decorates its kernels with its own `fla_cache_autotune` (a subclass of Triton's `Autotuner`), not
  `triton.autotune`, so this patches `Autotuner.__init__` for kernels defined later and trims the
  autotuners that already exist. GLA_PARITY_FULL_AUTOTUNE=1 turns it off.
  """
  if os.environ.get("GLA_PARITY_FULL_AUTOTUNE") == "1":
    return
  from triton.runtime.autotuner import Autotuner

  if not getattr(Autotuner.__init__, "_gla_narrowed", False):
    original = Autotuner.__init__

    def init(self, fn, arg_names, configs, *args, **kwargs):
      original(self, fn, arg_names, list(configs)[:keep], *args, **kwargs)

    init._gla_narrowed = True
    Autotuner.__init__ = init
  for obj in gc.get_objects():
    if isinstance(obj, Autotuner) and len(obj.configs) > keep:
      obj.configs = obj.configs[:keep]
