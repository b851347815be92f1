"""Sampling from a causal LM under `jax.jit`: prefill once, then a `lax.while_loop` of decode steps.

    tokens = generate(model, prompt_ids, max_new_tokens=64, rng=jax.random.key(0),
                      temperature=0.8, top_k=50, top_p=0.95)      # [B, T + 64]

Works with any model that has `prefill(ids, max_len=...)` and `decode_step(ids, cache)` (both model
families here). The model is split into (graphdef, state) and merged inside the jitted function, so a
second call with the same model structure and shapes does not recompile. There is no Python loop per
token. All rows share one prompt length (no left padding).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
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


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "use_top_p", "greedy",
                                             "eos_token_id"))
def _generate(graphdef, state, prompt_ids, rng, temperature, top_p, *, max_new_tokens, top_k, use_top_p,
              greedy, eos_token_id):
  model = nnx.merge(graphdef, state)
  B, T = prompt_ids.shape
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k,
                             top_p=top_p if use_top_p else None, greedy=greedy)
  logits, cache = model.prefill(prompt_ids, max_len=T + max_new_tokens)
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
             greedy: bool = False, eos_token_id: int | None = None) -> jax.Array:
  """Continue `prompt_ids` [B, T] by `max_new_tokens` tokens → int32 [B, T + max_new_tokens].

  Args:
    model: a `GLAForCausalLM` / `TransformerForCausalLM` (anything with prefill/decode_step).
    prompt_ids: int [B, T], T ≥ 1.
    max_new_tokens: ≥ 1.
    rng: PRNG key (required unless greedy).
    temperature: > 0; logits are divided by it.
    top_k: keep the k most likely tokens (1 ≤ k ≤ vocab), or None.
    top_p: nucleus mass in (0, 1], or None.
    greedy: argmax decoding (ignores rng, temperature, top_k, top_p).
    eos_token_id: once a row emits it, the row emits only it; the loop stops when every row has.
  """
  if not hasattr(prompt_ids, "ndim") or prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1:
    raise ValueError(f"prompt_ids must be an int array [B, T] with T >= 1, got {getattr(prompt_ids, 'shape', None)}")
  if not jnp.issubdtype(prompt_ids.dtype, jnp.integer):
    raise ValueError(f"prompt_ids must have an integer dtype, got {prompt_ids.dtype}")
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
  vocab = model.config.vocab_size
  if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= vocab):
    raise ValueError(f"top_k must be None or an int in [1, {vocab}], got {top_k!r}")
  if top_p is not None and not 0.0 < float(top_p) <= 1.0:
    raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
  if not greedy:
    if rng is None:
      raise ValueError("rng is required unless greedy=True")
    if isinstance(temperature, (int, float)) and not temperature > 0:
      raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature!r}")
  if rng is None:
    rng = jax.random.key(0)
  graphdef, state = nnx.split(model)
  return _generate(graphdef, state, prompt_ids, rng, jnp.asarray(temperature, _f32),
                   jnp.asarray(1.0 if top_p is None else top_p, _f32), max_new_tokens=max_new_tokens,
                   top_k=top_k, use_top_p=top_p is not None, greedy=bool(greedy),
                   eos_token_id=eos_token_id)
