"""Decoding limits and input checks (issue 13, items 5 and 9): a KV cache is never written past its
max_len silently (ValueError eagerly, NaN logits under jit, a static check in generate); token ids out of
[0, vocab) raise when concrete and are clamped under jit; generate's arguments get one clear error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.generate import generate
from gla_jax.models import presets
from tests.gla_jax.helpers import make_model, random_ids, rel_err

TF = presets.transformer_tiny(initializer_range=0.2, num_hidden_layers=1)
GLA = presets.gla_tiny(initializer_range=0.2, chunk_size=16, num_hidden_layers=1)
B, T, P = 2, 12, 8


@pytest.fixture(scope="module")
def tf():
  return make_model(TF)


@pytest.fixture(scope="module")
def gla():
  return make_model(GLA)


def test_decode_past_the_cache_raises_eagerly(tf):
  ids = random_ids((B, T), TF.vocab_size, seed=3)
  full = tf(ids)
  _, cache = tf.prefill(ids[:, :P])  # default max_len = P: no room to decode
  assert cache.max_len == P
  with pytest.raises(ValueError, match=r"max_len=8"):
    tf.decode_step(ids[:, P], cache)
  _, cache = tf.prefill(ids[:, :P], max_len=P + 2)
  for t in (P, P + 1):  # inside the cache: exact
    logits, cache = tf.decode_step(ids[:, t], cache)
    assert rel_err(logits, full[:, t]) < 2e-5
  with pytest.raises(ValueError, match=r"position 10 .*max_len=10"):
    tf.decode_step(ids[:, P + 2], cache)
  with pytest.raises(ValueError, match="max_len"):
    tf.forward_with_cache(ids[:, :3], tf.init_cache(B, 2))
  with pytest.raises(ValueError, match="max_len must be an int >= the prompt length 8"):
    tf.prefill(ids[:, :P], max_len=P - 1)
  with pytest.raises(ValueError, match="rows"):
    tf.decode_step(ids[:1, P], cache)


def test_decode_past_the_cache_under_jit_is_nan(tf):
  ids = random_ids((B, T), TF.vocab_size, seed=3)
  full = tf(ids)
  prefill = nnx.jit(lambda m, x: m.prefill(x, max_len=P + 1))
  step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
  _, cache = prefill(tf, ids[:, :P])
  logits, cache = step(tf, ids[:, P], cache)  # fills the last position: still exact
  assert rel_err(logits, full[:, P]) < 2e-5
  for t in (P + 1, P + 2):  # past it: NaN for every row, and it stays NaN
    logits, cache = step(tf, ids[:, t], cache)
    assert np.all(np.isnan(np.asarray(logits)))


def test_gla_cache_has_no_limit(gla):
  ids = random_ids((B, T), GLA.vocab_size, seed=4)
  full = gla(ids)
  _, cache = gla.prefill(ids[:, :P])
  assert cache.max_len is None
  for t in range(P, T):
    logits, cache = gla.decode_step(ids[:, t], cache)
  assert rel_err(logits, full[:, T - 1]) < 2e-5


def test_generate_checks_max_len_statically(tf):
  prompt = random_ids((B, 5), TF.vocab_size, seed=8)
  want = generate(tf, prompt, max_new_tokens=4, greedy=True)
  np.testing.assert_array_equal(generate(tf, prompt, max_new_tokens=4, greedy=True, max_len=16), want)
  with pytest.raises(ValueError, match=r"max_len=8 is too short .* = 9 tokens"):
    generate(tf, prompt, max_new_tokens=4, greedy=True, max_len=8)
  with pytest.raises(ValueError, match="max_len"):
    generate(tf, prompt, max_new_tokens=4, greedy=True, max_len=9.0)


def test_out_of_vocab_ids_raise_eagerly_and_clamp_under_jit(tf, gla):
  V = TF.vocab_size
  ids = random_ids((B, 6), V, seed=5)
  for model in (tf, gla):
    for bad in (V, -1):
      with pytest.raises(ValueError, match=rf"input_ids must be token ids in \[0, vocab_size={V}\)"):
        model(ids.at[0, 2].set(bad))
    _, cache = model.prefill(ids, max_len=8)
    with pytest.raises(ValueError, match="vocab_size"):
      model.decode_step(jnp.array([0, V + 5], jnp.int32), cache)
  fwd = nnx.jit(lambda m, x: m(x))
  got = fwd(tf, ids.at[0, 2].set(V + 100).at[1, 3].set(-7))  # clamped: V + 100 → V − 1, −7 → 0
  want = tf(ids.at[0, 2].set(V - 1).at[1, 3].set(0))
  assert np.all(np.isfinite(np.asarray(got))) and rel_err(got, want) < 1e-6


def test_empty_batch_names_the_ids(tf, gla):
  for model in (tf, gla):
    with pytest.raises(ValueError, match=r"input_ids must be an int array \[B, T\] with B, T >= 1"):
      model(jnp.zeros((0, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"prompt_ids must be an int array \[B, T\] with B, T >= 1"):
      generate(model, jnp.zeros((0, 3), jnp.int32), max_new_tokens=2, greedy=True)


@pytest.mark.parametrize("kw, match", [
    (dict(prompt_ids=jnp.full((2, 5), 256, jnp.int32)), r"prompt_ids must be token ids in \[0, vocab_size=256\)"),
    (dict(temperature=jnp.array(0.0)), "temperature must be > 0"),
    (dict(temperature=jnp.array([1.0, 2.0])), "temperature must be a real scalar"),
    (dict(temperature=float("nan")), "temperature must be > 0"),
    (dict(rng=0), "rng must be one PRNG key"),
    (dict(rng=jax.random.split(jax.random.key(0))), "rng must be one PRNG key"),
    (dict(max_new_tokens=True), "max_new_tokens must be an int >= 1"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be an int >= 1"),
    (dict(top_k=True), r"top_k must be an int in \[1, 256\]"),
    (dict(top_p=jnp.array(1.5)), r"top_p must be None or in \(0, 1\]"),
    (dict(eos_token_id=256), r"eos_token_id must be an int in \[0, 255\]"),
])
def test_generate_argument_errors(gla, kw, match):
  args = dict(prompt_ids=random_ids((2, 5), GLA.vocab_size, seed=8), max_new_tokens=3,
              rng=jax.random.key(0))
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    generate(gla, **args)


def test_generate_accepts_array_and_numpy_scalars(gla):
  prompt = random_ids((2, 5), GLA.vocab_size, seed=8)
  a = generate(gla, prompt, max_new_tokens=3, rng=jax.random.key(1), temperature=0.8)
  b = generate(gla, np.asarray(prompt), max_new_tokens=np.int64(3), rng=jax.random.key(1),
               temperature=jnp.array(0.8), top_k=np.int32(256))
  np.testing.assert_array_equal(a, b)
  legacy = generate(gla, prompt, max_new_tokens=3, rng=jax.random.PRNGKey(1))  # raw uint32[2] keys work
  assert legacy.shape == (2, 8)
