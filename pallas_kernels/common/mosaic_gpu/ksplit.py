"""Running a chunk op whose K is wider than one Mosaic GPU launch takes, in launches of ≤ `width` columns.

Both ops decay each row of the state on its own (GLA: per key column; simple GLA: every row alike), so the
op on the columns `cols` of q, k (and of a per-key gate) with the rows `cols` of h0 is exactly that part of
the state, and its output is that part's share of q·S and of the scores q·kᵀ: o is the sum of the parts'
(in float32), the final state their rows stacked.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp


def in_k_parts(launch: Callable, K: int, width: int, q, k, h0, gk=None, *, f32_out: bool, out_dtype,
               want_ht: bool):
  """(o, final state or None) of `launch(K_part, q_part, k_part, gk_part, h0_part, f32_out)`, run once if
  K ≤ width, else once per ≤ width columns of q, k, gk (a per-key gate [..., K] or None) and rows of h0
  ([B, H, K, V] or None), the outputs summed in float32. o is float32 with `f32_out`, else `out_dtype`."""
  if K <= width:
    return launch(K, q, k, gk, h0, f32_out)
  total, states = None, []
  for lo in range(0, K, width):
    cols = slice(lo, min(lo + width, K))
    o, ht = launch(cols.stop - lo, q[..., cols], k[..., cols], None if gk is None else gk[..., cols],
                   None if h0 is None else h0[:, :, cols], True)
    total = o if total is None else total + o
    states.append(ht)
  return (total if f32_out else total.astype(out_dtype)), (jnp.concatenate(states, axis=2) if want_ht else None)
