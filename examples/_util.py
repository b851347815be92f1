"""Small helpers shared by the example notebooks (examples/*.ipynb)."""

from __future__ import annotations

from gla_jax.layers.mixers import registry


def available_kinds() -> tuple[list[str], dict[str, str]]:
  """The mixer kinds of `registry.KIND_NAMES` whose layer and config import here, and why the others do not.

  Returns (kinds in table order, {kind: one-line reason} for those that failed to import).

  Example:
    >>> kinds, missing = available_kinds()
    >>> "gla" in kinds
    True
  """
  kinds, missing = [], {}
  for name in registry.KIND_NAMES:
    try:
      registry.mixer_class(name)
      registry.config_class(name)
    except (ImportError, AttributeError) as e:  # a kind whose module has not landed in this checkout
      missing[name] = f"{type(e).__name__}: {e}"
      continue
    kinds.append(name)
  return kinds, missing


def param_count(module) -> int:
  """Number of parameters (nnx.Param leaves) of an NNX module."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
