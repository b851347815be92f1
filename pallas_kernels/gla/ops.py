"""The public GLA ops and the dispatch among their implementations.

Each implementation registers an `Implementation`: its function (the `chunk_gla` keyword contract), the
platforms it runs on compiled, and a `check` that says why it cannot serve a call (or None). Kernel
modules ("triton", "tpu") are imported on first use and register themselves. `impl="auto"` walks the
platform's preference list and takes the first implementation that supports the call; an explicit
`impl` that cannot serve the call raises a ValueError with the reason — there is no silent fallback.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable


from pallas_kernels import compat
from pallas_kernels.common.checks import CallInfo, check_gla_inputs
from pallas_kernels.gla.chunk import chunk_gla_jnp
from pallas_kernels.gla.fused_recurrent import fused_recurrent_gla_xla
from pallas_kernels.gla.naive import naive_associative_gla, naive_parallel_gla, naive_recurrent_gla

ALL_PLATFORMS = frozenset({"cpu", "gpu", "tpu"})


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One way to compute the GLA op."""

  name: str
  fn: Callable  # fn(q, k, v, g, *, scale, initial_state, output_final_state, segment_ids, chunk_size)
  platforms: frozenset[str] = ALL_PLATFORMS  # where it runs compiled (interpret mode does not count)
  check: Callable[[CallInfo], str | None] = lambda info: None  # why it cannot serve a call, or None


_REGISTRY: dict[str, Implementation] = {}
# kernel modules, imported on first use; each calls `register` at import time
_KERNEL_MODULES = {"triton": "pallas_kernels.gla.triton", "tpu": "pallas_kernels.gla.tpu"}
# preference of impl="auto", per platform
AUTO_ORDER = {"gpu": ("triton", "xla"), "tpu": ("tpu", "xla"), "cpu": ("xla",)}


def register(impl: Implementation) -> None:
  _REGISTRY[impl.name] = impl


def current_platform() -> str:
  """The platform dispatch decides for ("cpu", "gpu" or "tpu"); tests patch this."""
  return compat.backend_platform()


def _lookup(name: str) -> Implementation | None:
  if name not in _REGISTRY and name in _KERNEL_MODULES:
    try:
      importlib.import_module(_KERNEL_MODULES[name])
    except ModuleNotFoundError as e:  # the kernel module is not part of this build
      if e.name != _KERNEL_MODULES[name]:
        raise
  return _REGISTRY.get(name)


def available_impls() -> tuple[str, ...]:
  """Every implementation name `chunk_gla` accepts besides "auto"."""
  return tuple(n for n in (*_REGISTRY, *_KERNEL_MODULES) if _lookup(n) is not None)


def select_impl(info: CallInfo, impl: str = "auto", platform: str | None = None) -> Implementation:
  """The implementation that serves a call; ValueError if the named one cannot."""
  platform = platform or current_platform()
  if impl == "auto":
    reasons = []
    for name in AUTO_ORDER.get(platform, ("xla",)):
      candidate = _lookup(name)
      if candidate is None or platform not in candidate.platforms:
        continue
      reason = candidate.check(info)
      if reason is None:
        return candidate
      reasons.append(f"{name}: {reason}")
    raise ValueError(f"impl='auto' found no implementation for this call on {platform}: {reasons}")
  if not isinstance(impl, str):
    raise ValueError(f"impl must be a string, got {impl!r}")
  candidate = _lookup(impl)
  if candidate is None:
    raise ValueError(f"impl must be 'auto' or one of {available_impls()}, got {impl!r}")
  if platform not in candidate.platforms:
    raise ValueError(f"impl={impl!r} runs on {sorted(candidate.platforms)}, not on {platform}")
  reason = candidate.check(info)
  if reason is not None:
    raise ValueError(f"impl={impl!r} cannot serve this call: {reason}")
  return candidate


def chunk_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
              segment_ids=None, chunk_size=64, impl="auto"):
  """Gated linear attention, chunkwise (fla's `chunk_gla` contract).

      S_t = diag(exp g_t) · S_{t-1} + k_tᵀ v_t ;   o_t = scale · q_t · S_t

  Args:
    q, k: [B, T, H, K] queries and keys (float32, bfloat16 or float16; one dtype with v).
    v: [B, T, H, V] values.
    g: [B, T, H, K] log forget gates (≤ 0), float32 or the inputs' dtype.
    scale: defaults to K ** -0.5.
    initial_state: [B, H, K, V], the state before t = 0 (float32 preferred).
    output_final_state: also return the state after the last token.
    segment_ids: [B, T] int; the state restarts at every change of id (packed documents);
      `initial_state` applies to each row's first segment.
    chunk_size: tokens per chunk (a multiple of 16).
    impl: "auto" or a name from `available_impls()`.

  Returns:
    o [B, T, H, V] in v's dtype, and final_state [B, H, K, V] float32 (None unless requested).
    Differentiable w.r.t. q, k, v, g and initial_state.

  Example:
    >>> B, T, H, K, V = 2, 256, 4, 64, 128
    >>> kq, kk, kv, kg = jax.random.split(jax.random.key(0), 4)
    >>> q = jax.random.normal(kq, (B, T, H, K), jnp.bfloat16)
    >>> k = jax.random.normal(kk, (B, T, H, K), jnp.bfloat16)
    >>> v = jax.random.normal(kv, (B, T, H, V), jnp.bfloat16)
    >>> g = jax.nn.log_sigmoid(jax.random.normal(kg, (B, T, H, K))) / 16
    >>> o, state = chunk_gla(q, k, v, g, output_final_state=True)
  """
  info = check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state,
                          segment_ids=segment_ids, chunk_size=chunk_size)
  fn = select_impl(info, impl).fn
  return fn(q, k, v, g, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, segment_ids=segment_ids, chunk_size=chunk_size)


def fused_recurrent_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                        segment_ids=None, impl="auto"):
  """Gated linear attention token by token: for short sequences and decoding (T = 1 has its own path).

  Same arguments, returns and gradients as `chunk_gla` (without `chunk_size`). `impl`: "auto" or
  "xla" (one `lax.scan`; its gradient keeps a state per token, so train long sequences with `chunk_gla`).
  """
  check_gla_inputs(q, k, v, g, scale=scale, initial_state=initial_state, segment_ids=segment_ids)
  if impl not in ("auto", "xla"):
    raise ValueError(f"impl for fused_recurrent_gla must be 'auto' or 'xla', got {impl!r}")
  return fused_recurrent_gla_xla(q, k, v, g, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state, segment_ids=segment_ids)


# ------------------------------------------------------------------------------------------------
# built-in implementations
# ------------------------------------------------------------------------------------------------


def _reference(fn):
  def run(q, k, v, g, *, chunk_size=None, **kw):
    del chunk_size  # references do not chunk
    o, ht = fn(q, k, v, g, **kw)
    return o.astype(v.dtype), ht
  return run


def _parallel_check(info: CallInfo) -> str | None:
  if info.T > 1024:
    return f"the T×T parallel reference holds a [T, T, K] tensor per head; T={info.T} > 1024"
  return None


def _associative_check(info: CallInfo) -> str | None:
  n = info.B * info.T * info.H * info.K * info.V
  if n > 2**28:
    return f"the associative scan materialises every state: B·T·H·K·V = {n} > 2**28"
  return None


register(Implementation("xla", chunk_gla_jnp))
register(Implementation("naive", _reference(naive_recurrent_gla)))
register(Implementation("associative", _reference(naive_associative_gla), check=_associative_check))
register(Implementation("parallel", _reference(naive_parallel_gla), check=_parallel_check))

