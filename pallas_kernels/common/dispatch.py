"""One registry for every op of the family: an `Op` owns its input check and its implementations.

An op (chunk_gla, chunk_simple_gla, chunk_linear_attn, their fused_recurrent forms) is an `Op`:

* `check(*args, **kwargs) -> info` validates a call against the op's contract **once** and returns its
  static facts (a hashable dataclass such as `checks.CallInfo`); every failure is a ValueError that
  names the argument.
* implementations: `Implementation(name, fn, platforms, check)`; `fn(info, *args, **kwargs)` is called
  with the already-checked call, `check(info)` says why it cannot serve that call (or None).
* backends: kernel modules named by a dotted path and an attribute (`"pallas_kernels.gla.triton:IMPL"`),
  imported on first use. A backend module defines its `Implementation` object and never imports the op
  module back, so importing an op never imports Triton or Mosaic code.
* `auto` order per platform. A backend is listed there only once it has been qualified on that
  platform's hardware (the TPU kernels, never run on a TPU, stay explicit-only: `impl="tpu"`).

`impl="auto"` takes the first implementation of the platform's list that supports the call (and whose
`auto_check`, if any, passes: a table of measured shapes, say); an explicit `impl` that cannot serve a
call raises with the reason — there is no silent fallback.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import compat

ALL_PLATFORMS = frozenset({"cpu", "gpu", "tpu"})


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One way to compute an op."""

  name: str
  fn: Callable  # fn(info, *args, **kwargs): the op's positional and keyword contract, already checked
  platforms: frozenset[str] = ALL_PLATFORMS  # where it runs compiled (interpret mode does not count)
  check: Callable[[Any], str | None] = lambda info: None  # why it cannot serve a call, or None
  # impl="auto" only: why auto should pass over a call the impl can serve (e.g. a shape where it was not
  # measured faster than the next one in the order), or None. Explicit calls ignore it.
  auto_check: Callable[[Any], str | None] | None = None


def _numpy_to_jax(tree):
  """NumPy arrays become jax arrays once, before the check, so every implementation (`.at`, kernels)
  sees one kind of input; NumPy scalars (a `scale`) and Python values are left as they are."""
  return jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, tree)


def reference(fn: Callable) -> Callable:
  """An implementation `fn(info, q, k, v, g, ...)` over a reference form `fn(q, k, v, g, **kw)` (the
  naive / associative / parallel forms of an op): they check their own inputs and do not chunk."""
  def run(info, q, k, v, g=None, *, chunk_size=None, **kw):
    del info, chunk_size
    o, ht = fn(q, k, v, g, **kw)
    return o.astype(v.dtype), ht
  return run


def associative_check(info) -> str | None:
  """The associative-scan references materialise every state: refuse calls past 2**28 state entries."""
  n = info.B * info.T * info.H * info.K * info.V
  if n > 2**28:
    return f"the associative scan materialises every state: B·T·H·K·V = {n} > 2**28"
  return None


def current_platform() -> str:
  """The platform dispatch decides for ("cpu", "gpu" or "tpu"); tests patch `Op.platform`."""
  return compat.backend_platform()


class Op:
  """A named op: its input check, its implementations, and the `auto` order per platform.

  Example:
    >>> op = Op("chunk_gla", check=check_gla_inputs, auto_order={"gpu": ("triton", "xla")},
    ...         backends={"triton": "pallas_kernels.gla.triton:IMPLEMENTATION"})
    >>> op.register(Implementation("xla", chunk_gla_xla))
    >>> o, ht = op(q, k, v, g, impl="auto")
  """

  def __init__(self, name: str, *, check: Callable[..., Any],
               auto_order: Mapping[str, Sequence[str]], backends: Mapping[str, str] | None = None,
               default_auto: Sequence[str] = ("xla",)):
    self.name = name
    self.check = check
    self.auto_order = {p: tuple(names) for p, names in auto_order.items()}
    self.default_auto = tuple(default_auto)
    self.backends = dict(backends or {})
    self.registry: dict[str, Implementation] = {}
    self.platform: Callable[[], str] = current_platform

  def register(self, impl: Implementation) -> Implementation:
    self.registry[impl.name] = impl
    return impl

  def lookup(self, name: str) -> Implementation | None:
    """The implementation called `name`, importing its backend module on first use (None if absent)."""
    if name not in self.registry and name in self.backends:
      module, _, attr = self.backends[name].partition(":")
      try:
        mod = importlib.import_module(module)
      except ModuleNotFoundError as e:  # the backend is not part of this build
        if e.name is None or not module.startswith(e.name):
          raise
        return None
      self.registry[name] = getattr(mod, attr)
    return self.registry.get(name)

  def available_impls(self) -> tuple[str, ...]:
    """Every implementation name the op accepts besides "auto"."""
    names = dict.fromkeys((*self.registry, *self.backends))
    return tuple(n for n in names if self.lookup(n) is not None)

  def select(self, info, impl: str = "auto", platform: str | None = None) -> Implementation:
    """The implementation that serves a checked call; ValueError (with the reason) if none can."""
    platform = platform or self.platform()
    if impl == "auto":
      reasons = []
      for name in self.auto_order.get(platform, self.default_auto):
        candidate = self.lookup(name)
        if candidate is None or platform not in candidate.platforms:
          continue
        reason = candidate.check(info)
        if reason is None and candidate.auto_check is not None:
          reason = candidate.auto_check(info)
        if reason is None:
          return candidate
        reasons.append(f"{name}: {reason}")
      raise ValueError(f"{self.name}: impl='auto' found no implementation for this call on "
                       f"{platform}: {reasons}")
    if not isinstance(impl, str):
      raise ValueError(f"{self.name}: impl must be a string, got {impl!r}")
    candidate = self.lookup(impl)
    if candidate is None:
      raise ValueError(f"{self.name}: impl must be 'auto' or one of {self.available_impls()}, "
                       f"got {impl!r}")
    if platform not in candidate.platforms:
      raise ValueError(f"{self.name}: impl={impl!r} runs on {sorted(candidate.platforms)}, "
                       f"not on {platform}")
    reason = candidate.check(info)
    if reason is not None:
      raise ValueError(f"{self.name}: impl={impl!r} cannot serve this call: {reason}")
    return candidate

  def __call__(self, *args, impl: str = "auto", **kwargs):
    args, kwargs = _numpy_to_jax((args, kwargs))
    info = self.check(*args, **kwargs)
    return self.select(info, impl).fn(info, *args, **kwargs)

  def __repr__(self) -> str:
    return f"Op({self.name!r}, impls={tuple(self.registry)}, backends={tuple(self.backends)})"
