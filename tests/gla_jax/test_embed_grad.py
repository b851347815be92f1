"""take_rows: the "sorted" embedding gradient equals jnp.take's scatter-add, including ids repeated most
of the time (MQAR's filler) and never-seen rows; the model's embed_grad switch changes nothing else."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.layers.linear import take_rows
from gla_jax.models import build_model, presets


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sorted_gradient_equals_scatter(dtype):
  V, D = 50, 24
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(V, D)), dtype)
  ids = rng.integers(0, V, size=(3, 40))
  ids[:, ::2] = 0  # half the tokens are one id
  ids[0, 5] = V - 1  # the last row, once
  ids = jnp.asarray(ids, jnp.int32)
  g = jnp.asarray(rng.normal(size=(3, 40, D)), dtype)
  out_s, vjp_s = jax.vjp(lambda t: take_rows(t, ids, grad="scatter"), table)
  out_o, vjp_o = jax.vjp(lambda t: take_rows(t, ids, grad="sorted"), table)
  np.testing.assert_array_equal(np.asarray(out_s, np.float32), np.asarray(out_o, np.float32))
  (gs,), (go,) = vjp_s(g), vjp_o(g)
  assert go.dtype == table.dtype
  exact = np.zeros((V, D))
  np.add.at(exact, np.asarray(ids).reshape(-1), np.asarray(g, np.float64).reshape(-1, D))
  if dtype == jnp.float32:
    np.testing.assert_allclose(np.asarray(go), np.asarray(gs), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(go), exact, rtol=1e-5, atol=1e-5)
  else:  # float32 sums rounded once to bf16 (the scatter accumulates in bf16: further off)
    np.testing.assert_allclose(np.asarray(go, np.float32), exact, rtol=8e-3, atol=1e-2)
  unseen = np.setdiff1d(np.arange(V), np.asarray(ids))
  assert unseen.size and np.all(np.asarray(go, np.float32)[unseen] == 0)
  assert float(jnp.abs(go[0].astype(jnp.float32)).max()) > 1.0  # the repeated row got the summed rows


def test_bad_grad_name():
  with pytest.raises(ValueError, match="grad must be one of"):
    take_rows(jnp.zeros((4, 2)), jnp.zeros((3,), jnp.int32), grad="onehot")
  with pytest.raises(ValueError, match="embed_grad"):
    presets.tiny("gla", embed_grad="dense")


def test_model_embed_grad_switch_gives_the_same_gradients():
  base = presets.tiny("gla", vocab_size=64, hidden_size=32, num_hidden_layers=1)
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 4, size=(2, 16)), jnp.int32)  # few ids: many repeats
  grads = []
  for mode in ("scatter", "sorted"):
    model = build_model(dataclasses.replace(base, embed_grad=mode), rngs=nnx.Rngs(0))
    loss = lambda m: jnp.sum(m(ids)[..., :8] ** 2)
    grads.append(nnx.grad(loss)(model))
  a, b = (jax.tree.leaves(nnx.to_pure_dict(g)) for g in grads)
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
