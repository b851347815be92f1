"""Dense and embedding layers with fla's initialisation (N(0, initializer_range), zero bias) and
logical sharding names. Thin wrappers over `nnx.Linear` / `nnx.Embed` (kernel [in, out]: the
transpose of torch's `nn.Linear.weight`)."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.sharding import with_axes


def dense(in_features: int, out_features: int, names: Sequence[str | None], *, use_bias: bool = False,
          init_std: float = 0.02, dtype=None, param_dtype=jnp.float32, preferred_element_type=None,
          rngs: nnx.Rngs) -> nnx.Linear:
  """`nnx.Linear` [in, out] with kernel names `names`, N(0, init_std) kernel and zero bias."""
  names = tuple(names)
  return nnx.Linear(
      in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=with_axes(nnx.initializers.normal(init_std), names),
      bias_init=with_axes(nnx.initializers.zeros_init(), names[-1:]),
      preferred_element_type=preferred_element_type, rngs=rngs)


def embedding(num_embeddings: int, features: int, *, init_std: float = 0.02, dtype=None,
              param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Embed:
  """`nnx.Embed` [vocab, D] ("vocab", "embed"), N(0, init_std)."""
  return nnx.Embed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype,
                   embedding_init=with_axes(nnx.initializers.normal(init_std), ("vocab", "embed")),
                   rngs=rngs)
