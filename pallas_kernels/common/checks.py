"""Input checks shared by the ops. Every failure is a ValueError naming the argument and what was expected."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

GATE_KINDS = ("none", "constant", "scalar", "vector")
FLOAT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
MAX_CHUNK_SIZE = 1024  # the chunk forms hold [C, C] scores and [C, K] factors per chunk: 16384 took 8.7 GB


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
  gate: str = "vector"  # gate kind (GATE_KINDS): "vector" per key (GLA), "scalar" per token and head,
  #                       "constant" per head (g_gamma), "none" (no decay)
  g_dtype: jnp.dtype | None = None  # dtype of g (None without a per-token gate)
  normalize: bool = False  # chunk_linear_attn(normalize=True)


def _shape(x, name: str) -> tuple[int, ...]:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"{name} must be an array, got {type(x).__name__}")
  return tuple(x.shape)


def check_gla_inputs(q, k, v, g, *, scale=None, initial_state=None, segment_ids=None,
                     chunk_size: int | None = None, output_final_state=False) -> CallInfo:
  """Checks the GLA op contract (docs/ops.md) and returns the call's static facts."""
  B, T, H, K, V = _check_qkv(q, k, v)
  gs = _shape(g, "g")
  if gs != (B, T, H, K):
    raise ValueError(f"g must have the shape of q {(B, T, H, K)} = [B, T, H, K], got {gs}")
  if g.dtype not in (jnp.dtype(jnp.float32), q.dtype):
    raise ValueError(f"g must be float32 or the inputs' dtype {q.dtype}, got {g.dtype}")
  _check_common(B, T, H, K, V, scale=scale, initial_state=initial_state, segment_ids=segment_ids,
                chunk_size=chunk_size, output_final_state=output_final_state)
  return CallInfo(B=B, T=T, H=H, K=K, V=V, dtype=jnp.dtype(q.dtype),
                  has_initial_state=initial_state is not None,
                  has_segment_ids=segment_ids is not None, chunk_size=chunk_size or 64,
                  gate="vector", g_dtype=jnp.dtype(g.dtype))


def _check_qkv(q, k, v) -> tuple[int, int, int, int, int]:
  qs, ks, vs = (_shape(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
  if len(qs) != 4:
    raise ValueError(f"q must have shape [B, T, H, K] (rank 4), got shape {qs}")
  B, T, H, K = qs
  if ks != qs:
    raise ValueError(f"k must have the shape of q {qs} = [B, T, H, K], got {ks}")
  if len(vs) != 4 or vs[:3] != (B, T, H):
    raise ValueError(f"v must have shape [B, T, H, V] = [{B}, {T}, {H}, V], got {vs}")
  V = vs[3]
  if T < 1 or K < 1 or V < 1 or B < 1 or H < 1:
    raise ValueError(f"every dimension must be >= 1, got q {qs} and v {vs}")
  for x, name in ((q, "q"), (k, "k"), (v, "v")):
    if jnp.dtype(x.dtype) not in FLOAT_DTYPES:
      raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}{_f64_hint(x)}")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
  return B, T, H, K, V


def _f64_hint(x) -> str:
  """float64 (x64 mode) is not a dtype of the kernels: say so rather than only 'got float64'."""
  return " (float64 is not supported, also under jax_enable_x64: cast with .astype(jnp.float32))" \
      if x.dtype == np.float64 else ""


def _float_dtype_error(x, name: str) -> str | None:
  if jnp.dtype(x.dtype) in FLOAT_DTYPES:
    return None
  return (f"{name} must be a float array: float32, bfloat16 or float16 (float32 preferred), "
          f"got {x.dtype}{_f64_hint(x)}")


def check_scale(scale) -> None:
  """scale is static (a kernel constant): a finite real > 0 given as a Python or NumPy scalar, or None."""
  if scale is None:
    return
  real = isinstance(scale, (int, float, np.integer, np.floating)) and not isinstance(scale, bool)
  if not (real and math.isfinite(scale) and scale > 0):
    raise ValueError("scale must be a positive finite real number (a Python or NumPy scalar, not an "
                     f"array or a bool) or None, got {scale!r}")


def check_flag(value, name: str) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be a bool, got {value!r}")


def _check_common(B, T, H, K, V, *, scale, initial_state, segment_ids, chunk_size,
                  output_final_state=False):
  check_scale(scale)
  check_flag(output_final_state, "output_final_state")
  if initial_state is not None:
    hs = _shape(initial_state, "initial_state")
    if hs != (B, H, K, V):
      raise ValueError(f"initial_state must have shape [B, H, K, V] = {(B, H, K, V)}, got {hs}")
    if (error := _float_dtype_error(initial_state, "initial_state")) is not None:
      raise ValueError(error)
  if segment_ids is not None:
    ss = _shape(segment_ids, "segment_ids")
    if ss != (B, T):
      raise ValueError(f"segment_ids must have shape [B, T] = {(B, T)}, got {ss}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"segment_ids must have an integer dtype, got {segment_ids.dtype}")
  if chunk_size is not None:
    if (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 16
        or chunk_size % 16 or chunk_size > MAX_CHUNK_SIZE):
      raise ValueError(f"chunk_size must be a positive multiple of 16 and at most {MAX_CHUNK_SIZE} "
                       f"(the chunk forms hold [C, C] tiles per chunk), got {chunk_size!r}")


def check_simple_gla_inputs(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                            segment_ids=None, chunk_size: int | None = None,
                            output_final_state=False) -> CallInfo:
  """Checks the simple-GLA op contract (docs/ops.md): q, k [B, T, H, K], v [B, T, H, V], and at most
  one of g [B, T, H] (a log decay per token and head, ≤ 0) and g_gamma [H] (a constant log decay per
  head). Returns the call's static facts with `gate` "scalar", "constant" or "none"."""
  B, T, H, K, V = _check_qkv(q, k, v)
  if g is not None and g_gamma is not None:
    raise ValueError("pass at most one of g ([B, T, H] log decay per token) and g_gamma ([H] constant "
                     "log decay per head), got both")
  gate, g_dtype = "none", None
  if g is not None:
    gs = _shape(g, "g")
    if gs != (B, T, H):
      raise ValueError(f"g must have shape [B, T, H] = {(B, T, H)} (one log decay per token and head), "
                       f"got {gs}")
    if jnp.dtype(g.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(q.dtype)):
      raise ValueError(f"g must be float32 or the inputs' dtype {q.dtype}, got {g.dtype}")
    gate, g_dtype = "scalar", jnp.dtype(g.dtype)
  if g_gamma is not None:
    gg = _shape(g_gamma, "g_gamma")
    if gg != (H,):
      raise ValueError(f"g_gamma must have shape [H] = ({H},) (one log decay per head), got {gg}")
    if (error := _float_dtype_error(g_gamma, "g_gamma")) is not None:
      raise ValueError(error)
    gate, g_dtype = "constant", jnp.dtype(g_gamma.dtype)
  _check_common(B, T, H, K, V, scale=scale, initial_state=initial_state, segment_ids=segment_ids,
                chunk_size=chunk_size, output_final_state=output_final_state)
  return CallInfo(B=B, T=T, H=H, K=K, V=V, dtype=jnp.dtype(q.dtype),
                  has_initial_state=initial_state is not None,
                  has_segment_ids=segment_ids is not None, chunk_size=chunk_size or 64,
                  gate=gate, g_dtype=g_dtype)


def check_linear_attn_inputs(q, k, v, *, scale=None, normalize=False, initial_state=None,
                             segment_ids=None, chunk_size: int | None = None,
                             output_final_state=False) -> CallInfo:
  """Checks the linear-attention op contract (docs/ops.md): q, k [B, T, H, K], v [B, T, H, V]; the
  state is S [B, H, K, V], or with `normalize=True` the pair (S, z [B, H, K])."""
  B, T, H, K, V = _check_qkv(q, k, v)
  check_flag(normalize, "normalize")
  S0 = initial_state
  if initial_state is not None and normalize:
    if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
      raise ValueError("with normalize=True, initial_state must be the pair (S [B, H, K, V], "
                       f"z [B, H, K]), got {type(initial_state).__name__}")
    S0, z0 = initial_state
    zs = _shape(z0, "initial_state[1] (z)")
    if zs != (B, H, K):
      raise ValueError(f"initial_state[1] (z) must have shape [B, H, K] = {(B, H, K)}, got {zs}")
    if (error := _float_dtype_error(z0, "initial_state[1] (z)")) is not None:
      raise ValueError(error)
  elif isinstance(initial_state, (tuple, list)):
    raise ValueError("with normalize=False, initial_state must be one array S [B, H, K, V], got a "
                     f"{type(initial_state).__name__}")
  _check_common(B, T, H, K, V, scale=scale, initial_state=S0, segment_ids=segment_ids,
                chunk_size=chunk_size, output_final_state=output_final_state)
  return CallInfo(B=B, T=T, H=H, K=K, V=V, dtype=jnp.dtype(q.dtype),
                  has_initial_state=initial_state is not None,
                  has_segment_ids=segment_ids is not None, chunk_size=chunk_size or 64,
                  gate="none", normalize=normalize)


def default_scale(scale: float | None, K: int) -> float:
  return float(K) ** -0.5 if scale is None else float(scale)
