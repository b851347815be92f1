"""Decoding: token-by-token decode logits = full-sequence logits; prefill + decode = forward;
generate() under jit (greedy = argmax of the full forward; top-k / top-p / eos behaviour)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.generate import generate, sample_logits
from gla_jax.models import presets
from tests.gla_jax.helpers import make_model, random_ids, rel_err

CASES = {
    "gla": presets.gla_tiny(initializer_range=0.2, chunk_size=16, num_hidden_layers=1),
    "gla_conv_gqa": presets.gla_tiny(initializer_range=0.2, chunk_size=16, num_hidden_layers=1,
                                     num_heads=4, num_kv_heads=2, use_short_conv=True),
    "transformer": presets.transformer_tiny(initializer_range=0.2),
    "transformer_window_gqa": presets.transformer_tiny(initializer_range=0.2, num_hidden_layers=1,
                                                       num_heads=4, num_kv_heads=2, window_size=5),
}


@pytest.mark.parametrize("name", ["gla_conv_gqa", "transformer", "transformer_window_gqa"])
def test_prefill_then_decode_equals_forward(name):
  cfg = CASES[name]
  model = make_model(cfg)
  B, T, P = 2, 21, 9  # prompt of P tokens, then T − P decode steps
  ids = random_ids((B, T), cfg.vocab_size, seed=7)
  full = nnx.jit(lambda m, x: m(x))(model, ids)
  prefill = nnx.jit(lambda m, x: m.prefill(x, max_len=T))
  step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
  logits, cache = prefill(model, ids[:, :P])
  last, last_cache = nnx.jit(lambda m, x: m.prefill(x, max_len=T, last_only=True))(model, ids[:, :P])
  assert last.shape == (B, 1, cfg.vocab_size) and rel_err(last, logits[:, -1:]) < 1e-6  # generate's prefill
  assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(last_cache), jax.tree.leaves(cache)))
  outs = [logits]
  for t in range(P, T):
    tok = ids[:, t] if t % 2 else ids[:, t:t + 1]  # both [B] and [B, 1] are accepted
    step_logits, cache = step(model, tok, cache)
    assert step_logits.shape == (B, cfg.vocab_size)
    outs.append(step_logits[:, None])
  decoded = jnp.concatenate(outs, axis=1)
  assert int(cache.offset) == T
  assert rel_err(decoded, full) < 2e-5
  # the whole sequence through decode_step from an empty cache, too
  cache = model.init_cache(B, T)
  logits0, cache = step(model, ids[:, 0], cache)
  assert rel_err(logits0, full[:, 0]) < 2e-5
  # the history matters (a wrong state would show): change token 0, later logits move
  changed = ids.at[:, P - 2].set((ids[:, P - 2] + 1) % cfg.vocab_size)
  other = nnx.jit(lambda m, x: m(x))(model, changed)
  assert rel_err(other[:, P:], full[:, P:]) > 1e-3


def test_gla_cache_is_constant_size():
  model = make_model(CASES["gla_conv_gqa"])
  c = model.init_cache(3)
  layer = c.layers[0]
  attn = model.layers[0].attn
  assert layer.state.shape == (3, attn.num_heads, attn.head_k_dim, attn.head_v_dim)
  assert layer.state.dtype == jnp.float32
  assert layer.conv[0].shape == (3, 3, attn.key_dim)  # the q stream's conv tail
  with pytest.raises(ValueError, match="max_len"):
    make_model(presets.transformer_tiny()).init_cache(2)


@pytest.mark.parametrize("name", ["gla", "transformer"])
def test_generate_greedy_equals_argmax_of_forward(name):
  cfg = CASES[name]
  model = make_model(cfg)
  prompt = random_ids((2, 5), cfg.vocab_size, seed=8)
  out = generate(model, prompt, max_new_tokens=6, greedy=True)
  assert out.shape == (2, 11) and out.dtype == jnp.int32
  np.testing.assert_array_equal(out[:, :5], prompt)
  logits = nnx.jit(lambda m, x: m(x))(model, out)  # teacher-forced: each new token is the argmax
  np.testing.assert_array_equal(out[:, 5:], jnp.argmax(logits[:, 4:-1], axis=-1))
  # top_k=1 sampling is greedy whatever the temperature
  out_k1 = generate(model, prompt, max_new_tokens=6, rng=jax.random.key(1), temperature=3.0, top_k=1)
  np.testing.assert_array_equal(out_k1, out)


def test_generate_eos_and_sampling_differs_by_rng():
  cfg = CASES["gla"]
  model = make_model(cfg)
  prompt = random_ids((2, 5), cfg.vocab_size, seed=8)  # the shapes of the greedy test: no recompile
  a = generate(model, prompt, max_new_tokens=6, rng=jax.random.key(1))
  b = generate(model, prompt, max_new_tokens=6, rng=jax.random.key(2))
  assert not np.array_equal(a, b)
  greedy = generate(model, prompt, max_new_tokens=6, greedy=True)
  eos = int(greedy[0, 7])  # row 0 emits this at its third new token
  out = generate(model, prompt, max_new_tokens=6, greedy=True, eos_token_id=eos)
  first = int(np.argmax(np.asarray(out[0, 5:]) == eos))
  assert first <= 2 and np.all(np.asarray(out[0, 5 + first:]) == eos)
  np.testing.assert_array_equal(out[0, :5 + first], greedy[0, :5 + first])
  with pytest.raises(ValueError, match="rng"):
    generate(model, prompt, max_new_tokens=2)
  with pytest.raises(ValueError, match="top_p"):
    generate(model, prompt, max_new_tokens=2, rng=jax.random.key(0), top_p=1.5)


def test_sample_logits_top_k_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4096))
  keys = jax.random.key(0)
  k2 = sample_logits(logits, keys, top_k=2)
  assert set(np.unique(k2)) == {0, 1}
  p = sample_logits(logits, keys, top_p=0.7)  # 0.5 < 0.7 ≤ 0.8: tokens 0 and 1
  assert set(np.unique(p)) == {0, 1}
  p1 = sample_logits(logits, keys, top_p=0.81)  # needs token 2 as well
  assert set(np.unique(p1)) == {0, 1, 2}
  full = np.bincount(np.asarray(sample_logits(logits, keys)), minlength=4) / 4096
  np.testing.assert_allclose(full, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  np.testing.assert_array_equal(sample_logits(logits[:2], None, greedy=True), [0, 0])
