"""Helpers for the optional GPU tests that import peer libraries (fla)."""

from __future__ import annotations

import gc
import math
import os

KEEP_CONFIGS = 2  # ≥ 2: with several configs Triton skips one that fails to compile (out of resources)


def preferred_configs(configs, keep: int):
  """The `keep` configs most likely to be fast: 4 warps first, then 3 stages, then larger tiles.

  For a benchmark that cannot afford fla's full autotune (the first `keep` configs of fla's lists are
  often its smallest: 1 warp, 32×32 tiles). Stable, so ties keep fla's order.
  """
  def rank(c):
    tile = math.prod(x for x in c.kwargs.values() if isinstance(x, int))
    return (abs(math.log2(max(c.num_warps or 4, 1) / 4)), abs((c.num_stages or 3) - 3), -tile)
  return sorted(configs, key=rank)[:keep]


def narrow_fla_autotune(keep: int = KEEP_CONFIGS, prefer: bool = False):
  """Make every Triton autotuner (fla's kernels) try only its first `keep` configs.

  fla autotunes each Triton kernel over all its configs on first use, per key (block sizes, K, V, and
  for some kernels B and H): minutes per new shape. Narrowing changes block sizes only, not the math —
  enough for correctness tests (timing belongs to benchmarks/bench_gla.py, which autotunes fully).
  fla decorates its kernels with its own `fla_cache_autotune` (a subclass of Triton's `Autotuner`), not
  `triton.autotune`, so this patches `Autotuner.__init__` for kernels defined later and trims the
  autotuners that already exist. GLA_PARITY_FULL_AUTOTUNE=1 turns it off. `prefer=True` keeps
  `preferred_configs` instead of the first `keep` (benchmarks/bench_simple_gla.py); the first call in
  a process decides for kernels defined later.
  """
  if os.environ.get("GLA_PARITY_FULL_AUTOTUNE") == "1":
    return
  from triton.runtime.autotuner import Autotuner

  pick = preferred_configs if prefer else (lambda configs, keep: configs[:keep])

  if not getattr(Autotuner.__init__, "_gla_narrowed", False):
    original = Autotuner.__init__

    def init(self, fn, arg_names, configs, *args, **kwargs):
      original(self, fn, arg_names, pick(list(configs), keep), *args, **kwargs)

    init._gla_narrowed = True
    Autotuner.__init__ = init
  for obj in gc.get_objects():
    if isinstance(obj, Autotuner) and len(obj.configs) > keep:
      obj.configs = pick(list(obj.configs), keep)
