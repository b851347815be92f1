"""Sampling from a causal LM under `jax.jit`: prefill once, then a `lax.while_loop` of decode steps.

    tokens = generate(model, prompt_ids, max_new_tokens=64, rng=jax.random.key(0),
                      temperature=0.8, top_k=50, top_p=0.95)      # [B, T + 64]

Works with any model that has `prefill(ids, max_len=..., last_only=True)` and `decode_step(ids, cache)` (both model
families here). The model is split into (graphdef, state) and merged inside the jitted function, so a
second call with the same model structure and shapes does not recompile. There is no Python loop per
token. All rows share one prompt length (no left padding).

Every argument is checked before tracing (one ValueError naming it), so nothing inside the jitted loop
can go out of range: a full-attention KV cache is sized statically (`max_len`, default T + max_new_tokens;
recurrent and sliding-window caches are constant-size and have no limit) and
the prompt's token ids must lie in [0, vocab_size).
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_f32 = jnp.float32


def sample_logits(logits: jax.Array, rng: jax.Array | None, *, temperature=1.0, top_k: int | None = None,
                  top_p=None, greedy: bool = False) -> jax.Array:
  """One token per row from logits [B, vocab] → int32 [B].

  greedy: argmax. Otherwise softmax(logits / temperature) restricted to the `top_k` largest logits
  and to the smallest set of tokens whose probability reaches `top_p` (nucleus; the most likely token
  is always kept), sampled with `rng`.
  """
  logits = logits.astype(_f32)
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if rng is None:
    raise ValueError("rng is required unless greedy=True")
  logits = logits / jnp.asarray(temperature, _f32)
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the strictly more likely tokens
    keep = mass_before < jnp.asarray(top_p, _f32)  # the first token always stays
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _int_arg(name: str, x, lo: int, hi: int | None = None) -> int:
  """x as an int in [lo, hi]; bools and floats are rejected (True is not a token count)."""
  try:
    if isinstance(x, (bool, np.bool_)):
      raise TypeError
    n = operator.index(x)
  except TypeError:
    n = None
  if n is None or n < lo or (hi is not None and n > hi):
    where = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    raise ValueError(f"{name} must be an int {where}, got {x!r}")
  return n


def _scalar_arg(name: str, x, ok, want: str) -> float:
  """A concrete real scalar (Python number or 0-d / size-1 array) satisfying `ok`."""
  try:
    if isinstance(x, (bool, np.bool_)) or np.asarray(x).dtype == bool:
      raise TypeError
    v = float(np.asarray(x).reshape(()))
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a real scalar {want}, got {x!r}") from None
  if not (math.isfinite(v) and ok(v)):
    raise ValueError(f"{name} must be {want}, got {x!r}")
  return v


def _check_rng(rng) -> None:
  """A typed key (jax.random.key) of shape () or a raw uint32 [2] key (jax.random.PRNGKey)."""
  if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.shape == ():
    return
  if isinstance(rng, (jax.Array, np.ndarray)) and rng.dtype == np.uint32 and rng.shape == (2,):
    return
  raise ValueError(f"rng must be one PRNG key, e.g. jax.random.key(0), got {rng!r}")


def _cache_is_bounded(model) -> bool:
  """Whether the model's decode cache holds a limited number of tokens (a full-attention KV cache);
  False when every layer's cache is constant-size (recurrent state, SWA's rolling window). Nothing is
  allocated."""
  if not hasattr(model, "init_cache"):
    return True
  return jax.eval_shape(lambda: model.init_cache(1, 1)).max_len is not None


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "max_len", "top_k", "use_top_p", "greedy",
                                             "eos_token_id"))
def _generate(graphdef, state, prompt_ids, rng, temperature, top_p, *, max_new_tokens, max_len, top_k,
              use_top_p, greedy, eos_token_id):
  model = nnx.merge(graphdef, state)
  B, T = prompt_ids.shape
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k,
                             top_p=top_p if use_top_p else None, greedy=greedy)
  logits, cache = model.prefill(prompt_ids, max_len=max_len, last_only=True)
  rng, sub = jax.random.split(rng)
  token = sample(logits[:, -1], sub)  # [B]
  fill = 0 if eos_token_id is None else eos_token_id
  out = jnp.full((B, max_new_tokens), fill, jnp.int32).at[:, 0].set(token)
  done = jnp.zeros((B,), bool) if eos_token_id is None else token == eos_token_id

  def cond(carry):
    i, _, _, _, _, done = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, token, cache, out, rng, done = carry
    logits, cache = model.decode_step(token, cache)
    rng, sub = jax.random.split(rng)
    nxt = sample(logits, sub)
    if eos_token_id is not None:
      nxt = jnp.where(done, eos_token_id, nxt)
      done = done | (nxt == eos_token_id)
    out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
    return i + 1, nxt, cache, out, rng, done

  carry = (jnp.ones((), jnp.int32), token, cache, out, rng, done)
  _, _, _, out, _, _ = jax.lax.while_loop(cond, body, carry)
  return jnp.concatenate([prompt_ids.astype(jnp.int32), out], axis=1)


def generate(model: nnx.Module, prompt_ids: jax.Array, *, max_new_tokens: int, rng: jax.Array | None = None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             greedy: bool = False, eos_token_id: int | None = None, max_len: int | None = None) -> jax.Array:
  """Continue `prompt_ids` [B, T] by `max_new_tokens` tokens → int32 [B, T + max_new_tokens].

  Args:
    model: a `GLAForCausalLM` / `TransformerForCausalLM` (anything with prefill/decode_step).
    prompt_ids: int [B, T], B, T ≥ 1, ids in [0, vocab_size).
    max_new_tokens: int ≥ 1.
    rng: one PRNG key, jax.random.key(seed) (required unless greedy).
    temperature: finite > 0 (a number or a 0-d array); logits are divided by it.
    top_k: keep the k most likely tokens (1 ≤ k ≤ vocab), or None.
    top_p: nucleus mass in (0, 1], or None.
    greedy: argmax decoding (ignores rng, temperature, top_k, top_p).
    eos_token_id: once a row emits it, the row emits only it; the loop stops when every row has.
    max_len: the KV cache's length (full attention), default T + max_new_tokens; a request that would
      pass it (T + max_new_tokens > max_len) raises ValueError before anything runs. Ignored when no
      layer has a full-attention KV cache (GLA and the other recurrent kinds, sliding-window attention:
      their caches are constant-size, so any number of tokens can be generated).
  """
  if not hasattr(prompt_ids, "ndim") or prompt_ids.ndim != 2 or 0 in prompt_ids.shape:
    raise ValueError(f"prompt_ids must be an int array [B, T] with B, T >= 1, got shape "
                     f"{getattr(prompt_ids, 'shape', None)}")
  if not jnp.issubdtype(prompt_ids.dtype, jnp.integer):
    raise ValueError(f"prompt_ids must have an integer dtype, got {prompt_ids.dtype}")
  vocab = model.config.vocab_size
  if not isinstance(prompt_ids, jax.core.Tracer):
    lo, hi = int(np.min(prompt_ids)), int(np.max(prompt_ids))
    if lo < 0 or hi >= vocab:
      raise ValueError(f"prompt_ids must be token ids in [0, vocab_size={vocab}), got values from {lo} to {hi}")
  T = prompt_ids.shape[1]
  max_new_tokens = _int_arg("max_new_tokens", max_new_tokens, 1)
  max_len = T + max_new_tokens if max_len is None else _int_arg("max_len", max_len, 1)
  if not _cache_is_bounded(model):  # recurrent / sliding-window caches: max_len means nothing
    max_len = T + max_new_tokens
  if T + max_new_tokens > max_len:
    raise ValueError(f"max_len={max_len} is too short for the prompt ({T}) + max_new_tokens "
                     f"({max_new_tokens}) = {T + max_new_tokens} tokens")
  if top_k is not None:
    top_k = _int_arg("top_k", top_k, 1, vocab)
  if top_p is not None:
    top_p = _scalar_arg("top_p", top_p, lambda p: 0.0 < p <= 1.0, "None or in (0, 1]")
  if eos_token_id is not None:
    eos_token_id = _int_arg("eos_token_id", eos_token_id, 0, vocab - 1)
  greedy = bool(greedy)
  if rng is not None:
    _check_rng(rng)
  if not greedy:
    if rng is None:
      raise ValueError("rng is required unless greedy=True")
    if not isinstance(temperature, jax.core.Tracer):
      temperature = _scalar_arg("temperature", temperature, lambda t: t > 0,
                                "> 0 (use greedy=True for argmax)")
  if rng is None:
    rng = jax.random.key(0)
  graphdef, state = nnx.split(model)
  return _generate(graphdef, state, prompt_ids, rng, jnp.asarray(temperature, _f32),
                   jnp.asarray(1.0 if top_p is None else top_p, _f32), max_new_tokens=max_new_tokens,
                   max_len=max_len, top_k=top_k, use_top_p=top_p is not None, greedy=greedy,
                   eos_token_id=eos_token_id)
