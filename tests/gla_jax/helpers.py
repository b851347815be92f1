"""Shared helpers for the gla_jax tests: tiny configs, random ids, relative errors, and gradients of a
random linear functional of the logits for both our model and the fla-named reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gla_jax.convert.fla import _fla_name, _to_fla_layout, fla_state_dict
from gla_jax.models import build_model
from tests.gla_jax import fla_reference


def rel_err(a, b) -> float:
  """max |a − b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def random_ids(shape, vocab, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)


def packed_segments(B, T, cuts):
  """segment_ids [B, T] with documents starting at `cuts` (same for every row)."""
  seg = np.zeros((B, T), np.int32)
  for c in cuts:
    seg[:, c:] += 1
  return jnp.asarray(seg)


def make_model(config, seed=0):
  return build_model(config, rngs=nnx.Rngs(seed))


def named_grads(model, grads_state) -> dict[str, np.ndarray]:
  """Our gradient state → {fla name: gradient in torch layout}."""
  named = {}
  for path, var in nnx.to_flat_state(grads_state):
    name, layout = _fla_name(path, model.config)
    named[name] = _to_fla_layout(np.asarray(var[...]), layout)
  return named


def fla_params(model) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v, jnp.float32) for k, v in fla_state_dict(model).items()}


def forward_both(model, ids, segment_ids, kind):
  """(our logits, reference logits), one jit for both."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def run(params, sd):
    ours = nnx.merge(graphdef, params, rest)(ids, segment_ids=segment_ids)
    return ours, fla_reference.forward(sd, model.config, ids, segment_ids, kind=kind)

  return run(params, fla_params(model))


def grads_both(model, ids, segment_ids, cot, kind):
  """Gradients of sum(logits · cot) w.r.t. every parameter, ours and the reference's, by fla name."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def ours(p):
    return jnp.sum(nnx.merge(graphdef, p, rest)(ids, segment_ids=segment_ids) * cot)

  def ref(sd):
    return jnp.sum(fla_reference.forward(sd, model.config, ids, segment_ids, kind=kind) * cot)

  g_ours, g_ref = jax.jit(lambda p, sd: (jax.grad(ours)(p), jax.grad(ref)(sd)))(params, fla_params(model))
  return named_grads(model, g_ours), {k: np.asarray(v) for k, v in g_ref.items()}
