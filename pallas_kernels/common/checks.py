"""Input checks shared by the ops. Every failure is a ValueError naming the argument and what was expected."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

FLOAT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class CallInfo:
  """Static facts about one call of a GLA-style op; what dispatch decides on."""

  B: int
  T: int
  H: int
  K: int
  V: int
  dtype: jnp.dtype  # q/k/v dtype
  has_initial_state: bool
  has_segment_ids: bool
  chunk_size: int


def _shape(x, name: str) -> tuple[int, ...]:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"{name} must be an array, got {type(x).__name__}")
  return tuple(x.shape)


def check_gla_inputs(q, k, v, g, *, scale=None, initial_state=None, segment_ids=None,
                     chunk_size: int | None = None) -> CallInfo:
  """Checks the GLA op contract (DESIGN.md §2) and returns the call's static facts."""
  qs, ks, vs, gs = (_shape(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"), (g, "g")))
  if len(qs) != 4:
    raise ValueError(f"q must have shape [B, T, H, K] (rank 4), got shape {qs}")
  B, T, H, K = qs
  if ks != qs:
    raise ValueError(f"k must have the shape of q {qs} = [B, T, H, K], got {ks}")
  if gs != qs:
    raise ValueError(f"g must have the shape of q {qs} = [B, T, H, K], got {gs}")
  if len(vs) != 4 or vs[:3] != (B, T, H):
    raise ValueError(f"v must have shape [B, T, H, V] = [{B}, {T}, {H}, V], got {vs}")
  V = vs[3]
  if T < 1 or K < 1 or V < 1 or B < 1 or H < 1:
    raise ValueError(f"every dimension must be >= 1, got q {qs} and v {vs}")
  for x, name in ((q, "q"), (k, "k"), (v, "v"), (g, "g")):
    if jnp.dtype(x.dtype) not in FLOAT_DTYPES:
      raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
  if g.dtype not in (jnp.dtype(jnp.float32), q.dtype):
    raise ValueError(f"g must be float32 or the inputs' dtype {q.dtype}, got {g.dtype}")
  if scale is not None:
    if isinstance(scale, jax.Array) or not isinstance(scale, (int, float)) or not scale > 0:
      raise ValueError(f"scale must be a positive Python number or None, got {scale!r}")
  if initial_state is not None:
    hs = _shape(initial_state, "initial_state")
    if hs != (B, H, K, V):
      raise ValueError(f"initial_state must have shape [B, H, K, V] = {(B, H, K, V)}, got {hs}")
    if jnp.dtype(initial_state.dtype) not in FLOAT_DTYPES:
      raise ValueError(f"initial_state must be a float array (float32 preferred), got {initial_state.dtype}")
  if segment_ids is not None:
    ss = _shape(segment_ids, "segment_ids")
    if ss != (B, T):
      raise ValueError(f"segment_ids must have shape [B, T] = {(B, T)}, got {ss}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"segment_ids must have an integer dtype, got {segment_ids.dtype}")
  if chunk_size is not None:
    if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size % 16:
      raise ValueError(f"chunk_size must be a positive multiple of 16, got {chunk_size!r}")
  return CallInfo(B=B, T=T, H=H, K=K, V=V, dtype=jnp.dtype(q.dtype),
                  has_initial_state=initial_state is not None,
                  has_segment_ids=segment_ids is not None, chunk_size=chunk_size or 64)


def default_scale(scale: float | None, K: int) -> float:
  return float(K) ** -0.5 if scale is None else float(scale)
