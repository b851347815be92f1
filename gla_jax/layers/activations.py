"""Elementwise activations by fla's names (`fla.modules.activations.ACT2FN`), computed in float32.

fla's Triton activations load in float32 and store in the input dtype; `get_activation(name)` returns a
function with the same behaviour. Used for GLA's optional q/k feature map and the output-gate function.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _gelu_tanh(x):
  # fla's `fast_gelu_impl` (tanh approximation, constant 0.79788456 = sqrt(2/pi))
  return x * 0.5 * (1.0 + jnp.tanh(0.79788456 * x * (1.0 + 0.044715 * x * x)))


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "logsigmoid": jax.nn.log_sigmoid,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sqrelu": lambda x: jnp.square(jax.nn.relu(x)),
    "gelu": _gelu_tanh,
}

ACTIVATION_NAMES = tuple(_ACTIVATIONS)


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """fla's activation `name`, evaluated in float32 and returned in the input's dtype."""
  if name not in _ACTIVATIONS:
    raise ValueError(f"activation must be one of {ACTIVATION_NAMES}, got {name!r}")
  fn = _ACTIVATIONS[name]

  def act(x: jax.Array) -> jax.Array:
    return fn(x.astype(jnp.float32)).astype(x.dtype)

  return act
