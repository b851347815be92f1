"""Sliding-window attention (kind "swa"): the rolling KV cache of exactly window_size slots.

Forward == an explicit windowed softmax; prefill of any length (shorter, equal, longer than the window)
+ token steps == forward; chunked continuation; decoding under jit (traced offset) far past any max_len;
the ring holds exactly the last W keys; gradients through the cached path == the forward's; cache_bytes
O(window); models whose attention layers are all SWA decode and generate without a limit, a hybrid with a
full-attention layer keeps its limit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.generate import generate
from gla_jax.layers.mixers.attention import rotary
from gla_jax.layers.mixers.swa import RollingKVCache, SlidingWindowAttention
from gla_jax.models import presets
from tests.gla_jax.helpers import make_model, random_ids, rel_err

B, T, W, D = 2, 13, 4, 64


@pytest.fixture(scope="module")
def swa():
  # GQA (4 query heads on 2 kv heads), qk_norm and biases: every option that changes the math
  return SlidingWindowAttention(D, num_heads=4, num_kv_heads=2, window_size=W, qkv_bias=True, qk_norm=True,
                                init_std=0.2, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def x():
  return jax.random.normal(jax.random.key(1), (B, T, D), jnp.float32)


def _reference(m, x):
  """Explicit band: token t attends to tokens max(0, t−W+1) … t (RoPE at absolute positions)."""
  Bx, Tx, _ = x.shape
  H, Hkv, d = m.num_heads, m.num_kv_heads, m.head_dim
  q = m.q_norm(m.q_proj(x).reshape(Bx, Tx, H, d))
  k = m.k_norm(m.k_proj(x).reshape(Bx, Tx, Hkv, d))
  v = m.v_proj(x).reshape(Bx, Tx, Hkv, d)
  pos = jnp.arange(Tx)[None]
  q, k = rotary(q, pos, m.rope_theta), rotary(k, pos, m.rope_theta)
  k, v = jnp.repeat(k, H // Hkv, axis=2), jnp.repeat(v, H // Hkv, axis=2)
  t = np.arange(Tx)
  band = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - W)  # [T (query), T (key)]
  s = jnp.einsum("bthd,bshd->bhts", q, k) * d ** -0.5
  p = jax.nn.softmax(jnp.where(band, s, -jnp.inf), axis=-1)
  return m.o_proj(jnp.einsum("bhts,bshd->bthd", p, v).reshape(Bx, Tx, -1))


def test_forward_is_the_windowed_softmax(swa, x):
  y, cache = swa(x)
  assert cache is None
  assert rel_err(y, _reference(swa, x)) < 1e-5


def test_prefill_then_steps_equal_forward(swa, x):
  full = swa(x)[0]
  prefill = nnx.jit(lambda m, xs, c: m(xs, cache=c, offset=0))
  step = nnx.jit(lambda m, xt, c, t: m.decode_step(xt, c, offset=t))
  for P in (0, 1, W - 1, W, W + 1, 2 * W + 1, T):  # shorter than, equal to and longer than the window
    cache = swa.init_cache(B, max_len=3)  # max_len is ignored: the ring always has W slots
    assert cache.k.shape == (B, W, 2, 16) and cache.max_len is None
    outs = []
    if P:
      y, cache = prefill(swa, x[:, :P], cache)
      outs.append(y)
    for t in range(P, T):
      y, cache = step(swa, x[:, t], cache, t)
      outs.append(y[:, None])
    assert rel_err(jnp.concatenate(outs, axis=1), full) < 1e-5, P


def test_ring_holds_exactly_the_last_window(swa, x):
  P = 2 * W + 3  # a prefill longer than the window
  _, cache = swa(x[:, :P], return_cache=True)  # no cache given: starts from an empty ring
  k = swa.k_norm(swa.k_proj(x).reshape(B, T, 2, 16))
  k = rotary(k, jnp.arange(T)[None], swa.rope_theta)  # [B, T, Hkv, d], absolute positions
  for j in range(W):
    p = (P - 1) - ((P - 1 - j) % W)  # slot j holds position p ≡ j (mod W), one of P−W … P−1
    assert P - W <= p < P
    np.testing.assert_allclose(cache.k[:, j], k[:, p], rtol=1e-6, atol=1e-6)
  # a short prefill leaves the other slots empty (zero) and masked
  _, short = swa(x[:, :2], return_cache=True)
  assert float(jnp.abs(short.k[:, 2:]).max()) == 0.0


def test_chunked_continuation_and_jit(swa, x):
  full = swa(x)[0]
  cache, outs, o = swa.init_cache(B), [], 0
  for n in (2, 5, 1, 3, 2):  # chunks shorter and longer than W, crossing the ring's wrap
    y, cache = swa(x[:, o:o + n], cache=cache, offset=o)
    outs.append(y)
    o += n
  assert rel_err(jnp.concatenate(outs, axis=1), full) < 1e-5

  # a lax.scan of steps with a traced offset (what generate does)
  @nnx.jit
  def scan_decode(m, xs):
    def body(c, xt_t):
      xt, t = xt_t
      y, c = m.decode_step(xt, c, offset=t)
      return c, y
    _, ys = jax.lax.scan(body, m.init_cache(B), (jnp.swapaxes(xs, 0, 1), jnp.arange(xs.shape[1])))
    return jnp.swapaxes(ys, 0, 1)

  assert rel_err(scan_decode(swa, x), full) < 1e-5


def test_gradients_through_the_cache_equal_the_forward(swa, x):
  graphdef, params, rest = nnx.split(swa, nnx.Param, ...)
  cot = jax.random.normal(jax.random.key(2), (B, T, D))

  def forward(p, xx):
    return jnp.sum(nnx.merge(graphdef, p, rest)(xx)[0] * cot)

  def cached(p, xx):  # prefill 6 (> W) then a 7-token continuation, both through the ring
    m = nnx.merge(graphdef, p, rest)
    y1, c = m(xx[:, :6], cache=m.init_cache(B), offset=0)
    y2, _ = m(xx[:, 6:], cache=c, offset=6)
    return jnp.sum(jnp.concatenate([y1, y2], axis=1) * cot)

  g_f = jax.jit(jax.grad(forward, argnums=(0, 1)))(params, x)
  g_c = jax.jit(jax.grad(cached, argnums=(0, 1)))(params, x)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_c), jax.tree.leaves(g_f), strict=True):
    assert float(jnp.abs(b).max()) > 0, jax.tree_util.keystr(path)
    assert rel_err(a, b) < 1e-5, jax.tree_util.keystr(path)


def test_cache_bytes_is_o_window(swa):
  want = 2 * B * W * 2 * 16 * 4  # k and v, [B, W, Hkv, d] float32
  assert swa.cache_bytes(10, B) == swa.cache_bytes(10 ** 6, B) == want
  assert swa.init_cache(B, dtype=jnp.bfloat16).k.dtype == jnp.bfloat16


def test_bad_arguments(swa, x):
  for bad in (None, 0, True, 2.0):
    with pytest.raises(ValueError, match="window_size"):
      SlidingWindowAttention(D, num_heads=2, window_size=bad, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="batch_size"):
    swa.init_cache(0)
  with pytest.raises(ValueError, match="offset must be >= 0"):
    swa(x[:, :1], cache=swa.init_cache(B), offset=-1)
  with pytest.raises(ValueError, match="segment_ids"):
    swa(x, cache=swa.init_cache(B), segment_ids=jnp.zeros((B, T), jnp.int32))
  with pytest.raises(ValueError, match="slots"):
    swa(x, cache=RollingKVCache(k=jnp.zeros((B, W + 1, 2, 16)), v=jnp.zeros((B, W + 1, 2, 16))))


# ------------------------------------------------------------------------------------------- models

def test_swa_model_decodes_and_generates_without_a_limit():
  cfg = presets.transformer_tiny(initializer_range=0.2, num_hidden_layers=1, window_size=W)
  assert cfg.layer_kinds() == ("swa",)
  model = make_model(cfg)
  ids = random_ids((B, 20), cfg.vocab_size, seed=3)
  full = model(ids)
  _, cache = model.prefill(ids[:, :6])  # default max_len = 6 would leave a KV cache no room
  assert cache.max_len is None
  step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
  for t in range(6, 20):
    logits, cache = step(model, ids[:, t], cache)
    assert rel_err(logits, full[:, t]) < 2e-5, t
  # generate: max_len is no limit (ignored) for a model whose every attention layer is SWA
  prompt = ids[:, :5]
  out = generate(model, prompt, max_new_tokens=12, greedy=True, max_len=6)
  assert out.shape == (B, 17)
  np.testing.assert_array_equal(out, generate(model, prompt, max_new_tokens=12, greedy=True))
  np.testing.assert_array_equal(jnp.argmax(model(out)[:, 4:-1], axis=-1), out[:, 5:])


def test_hybrid_with_full_attention_keeps_its_limit():
  full_attn = presets.gla_tiny(num_hidden_layers=3, attn=[{"layers": [1], "num_heads": 2},
                                                          {"layers": [2], "num_heads": 2, "window_size": W}])
  assert full_attn.layer_kinds() == ("gla", "attention", "swa")
  model = make_model(full_attn)
  ids = random_ids((B, 8), full_attn.vocab_size, seed=4)
  _, cache = model.prefill(ids, max_len=10)
  assert cache.max_len == 10
  with pytest.raises(ValueError, match="max_len=8 is too short"):
    generate(model, ids[:, :5], max_new_tokens=4, greedy=True, max_len=8)
  hybrid = make_model(presets.hybrid_tiny())  # GLA + SWA only: unbounded
  assert hybrid.init_cache(B).max_len is None
  out = generate(hybrid, ids[:, :5], max_new_tokens=4, greedy=True, max_len=6)
  assert out.shape == (B, 9)
