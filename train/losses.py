"""Cross-entropy sums of a causal LM: from full logits, or chunked over the sequence from the final hidden
states so that the [B, T, vocab] float32 logits never exist.

Both return {"loss_sum": Σ ce · m, "correct": Σ [argmax = target] · m, "count": Σ m} (float32 scalars) over
the mask m; the train step divides by the global count.

Chunked form (`chunked_cross_entropy_sums`, fla's fused linear cross-entropy, written for JAX): the
sequence axis is cut into chunks of C positions; per chunk, logits [B, C, V] = h_c · W in float32 (bf16
operands, f32 accumulation), then ce and argmax. It is a `jax.custom_vjp` whose forward rule also takes
the gradient, chunk by chunk, while that chunk's logits are live:

    p = softmax(logits);  dlogits = (p - onehot(target)) · m      [B, C, V] f32, cast to the compute dtype
    dh_c = dlogits · Wᵀ   [B, C, D];   dW += h_cᵀ · dlogits   [D, V] (float32 accumulator)

and keeps dh [B, T, D] (compute dtype) and dW [D, V] (W's dtype) as residuals; the backward only scales
them by the loss's cotangent. So the lm_head costs 3 matmuls (forward, dh, dW) where a rematerialised
chunk (`jax.checkpoint` in a scan) costs 4 (its backward recomputes the logits), and no [B, T, V] buffer is
allocated in either pass. Eval (no gradient) runs the primal: logits, ce and argmax per chunk, no dh/dW.

Exactness: in float32 the values equal the full-logits form to rounding (same formula as optax's
`softmax_cross_entropy_with_integer_labels`), and `correct` is the same argmax of the same logits. In bf16
compute, dlogits is rounded to bf16 before its two matmuls (as fla does; the full form's autodiff multiplies
f32 dlogits), a relative error ~2⁻⁹ per element of the lm_head and final-hidden gradients.

Sharding: chunks cut the T axis, so a batch split over devices stays split ([N, B, C, D] scanned over N);
a vocab split (tensor parallel) turns the softmax's sums into all-reduces (GSPMD inserts them).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax

_f32 = jnp.float32
SUM_KEYS = ("loss_sum", "correct", "count")


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Σ ce, Σ correct and the token count over `mask`. logits [B, T, V] float32; targets, mask [B, T]."""
  logits = logits.astype(_f32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]
  mask = mask.astype(_f32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(_f32)
  return {"loss_sum": jnp.sum(ce * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


# ------------------------------------------------------------------------------------------------ chunked


def chunked_cross_entropy_sums(h: jax.Array, w: jax.Array, targets: jax.Array, mask: jax.Array, *,
                               chunk: int, compute_dtype=None) -> dict[str, jax.Array]:
  """The sums of `cross_entropy_sums(h · w, targets, mask)` without the [B, T, V] logits.

  h [B, T, D] final hidden states (after the final norm); w [D, V] the lm_head kernel (a tied embedding
  [V, D] passed as `emb.T`), any float dtype, cast to `compute_dtype` (default h's dtype) for the matmuls;
  targets int [B, T]; mask bool/float [B, T]; chunk: positions of T per scan step (T need not divide by
  it: the tail is padded with mask 0). Differentiable in h and w (the custom VJP of the module doc).

  >>> h = jax.random.normal(jax.random.key(0), (2, 10, 8)); w = jax.random.normal(jax.random.key(1), (8, 32))
  >>> t = jnp.zeros((2, 10), jnp.int32); m = jnp.ones((2, 10), bool)
  >>> s = chunked_cross_entropy_sums(h, w, t, m, chunk=4)   # == cross_entropy_sums(h @ w, t, m)
  """
  if h.ndim != 3 or w.ndim != 2 or w.shape[0] != h.shape[-1]:
    raise ValueError(f"h must be [B, T, D] and w [D, V] with the same D, got h {h.shape}, w {w.shape}")
  if targets.shape != h.shape[:2] or mask.shape != h.shape[:2]:
    raise ValueError(f"targets and mask must be [B, T] = {h.shape[:2]}, got {targets.shape}, {mask.shape}")
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f"chunk must be a positive int, got {chunk!r}")
  dt = jnp.dtype(h.dtype if compute_dtype is None else compute_dtype).name
  out = _chunked_ce(h, w, targets.astype(jnp.int32), mask.astype(_f32), min(chunk, h.shape[1]), dt)
  return dict(zip(SUM_KEYS, out))


def _split(x: jax.Array, chunk: int) -> jax.Array:
  """[B, T, ...] → [N, B, C, ...] (T zero-padded to N·C; the batch axis, and its sharding, kept)."""
  B, T = x.shape[:2]
  n = math.ceil(T / chunk)
  x = jnp.pad(x, [(0, 0), (0, n * chunk - T)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape((B, n, chunk) + x.shape[2:]), 1, 0)


def _chunk_logits(hc, w, dt):
  return jnp.einsum("bcd,dv->bcv", hc.astype(dt), w.astype(dt), preferred_element_type=_f32)  # [B, C, V]


def _chunk_sums(logits, tc, mc):
  """Per chunk: (Σ ce·m, Σ correct·m, Σ m) and softmax's pieces, by optax's formula (max-shifted)."""
  shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  log_norm = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))  # [B, C]
  label = jnp.take_along_axis(shifted, tc[..., None], axis=-1)[..., 0]
  ce = log_norm - label
  correct = (jnp.argmax(logits, axis=-1) == tc).astype(_f32)
  sums = jnp.stack([jnp.sum(ce * mc), jnp.sum(correct * mc), jnp.sum(mc)])
  return sums, shifted, log_norm


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_ce(h, w, targets, mask, chunk, dt):
  wc = w.astype(dt)

  def body(acc, xs):
    hc, tc, mc = xs
    sums, _, _ = _chunk_sums(_chunk_logits(hc, wc, dt), tc, mc)
    return acc + sums, None

  acc, _ = jax.lax.scan(body, jnp.zeros(3, _f32), (_split(h, chunk), _split(targets, chunk), _split(mask, chunk)))
  return acc[0], acc[1], acc[2]


def _chunked_ce_fwd(h, w, targets, mask, chunk, dt):
  wc = w.astype(dt)
  V = w.shape[1]

  def body(carry, xs):
    acc, dw = carry
    hc, tc, mc = xs
    hc = hc.astype(dt)
    sums, shifted, log_norm = _chunk_sums(_chunk_logits(hc, wc, dt), tc, mc)
    p = jnp.exp(shifted - log_norm[..., None])  # softmax [B, C, V]
    onehot = jax.lax.broadcasted_iota(jnp.int32, p.shape, 2) == tc[..., None]
    dlogits = ((p - onehot.astype(_f32)) * mc[..., None]).astype(dt)  # d(Σ ce·m)/dlogits
    dhc = jnp.einsum("bcv,dv->bcd", dlogits, wc, preferred_element_type=_f32).astype(h.dtype)
    dw = dw + jnp.einsum("bcd,bcv->dv", hc, dlogits, preferred_element_type=_f32)
    return (acc + sums, dw), dhc

  init = (jnp.zeros(3, _f32), jnp.zeros((h.shape[-1], V), _f32))
  xs = (_split(h, chunk), _split(targets, chunk), _split(mask, chunk))
  (acc, dw), dh = jax.lax.scan(body, init, xs)  # dh [N, B, C, D]
  B, T = h.shape[:2]
  dh = jnp.moveaxis(dh, 0, 1).reshape((B, -1, h.shape[-1]))[:, :T]
  return (acc[0], acc[1], acc[2]), (dh, dw.astype(w.dtype))


def _chunked_ce_bwd(chunk, dt, res, cts):
  dh, dw = res
  g = cts[0]  # only loss_sum has a gradient (correct and count are piecewise constant)
  return ((g * dh.astype(_f32)).astype(dh.dtype), (g * dw.astype(_f32)).astype(dw.dtype), None, None)


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


# ------------------------------------------------------------------------------------------------ models


def head_weight(model) -> jax.Array:
  """The lm_head kernel [D, V] of a gla_jax CausalLM (the embedding's transpose when tied), param dtype."""
  if model.lm_head is None:
    return model.embeddings.embedding[...].T
  return model.lm_head.kernel[...]


def chunk_positions(loss_chunk: int, batch: int, batch_shards: int = 1) -> int:
  """Positions of T per chunk so that one chunk holds about `loss_chunk` tokens per device (≥ 1 position):
  a device sees batch / batch_shards rows."""
  rows = max(1, batch // max(1, batch_shards))
  return max(1, loss_chunk // rows)


def lm_cross_entropy_sums(model, batch: dict, *, loss_chunk: int = 1024, batch_shards: int = 1
                          ) -> dict[str, jax.Array]:
  """The sums of a CausalLM on a batch {"inputs", "targets", "mask", optional "segment_ids"} ([B, T] each).

  loss_chunk > 0: chunked (about loss_chunk tokens per device per chunk, `chunk_positions`); 0: the full
  float32 logits `model(inputs)`, then `cross_entropy_sums`.
  """
  if loss_chunk == 0:
    logits = model(batch["inputs"], segment_ids=batch.get("segment_ids"))  # [B, T, V] float32
    return cross_entropy_sums(logits, batch["targets"], batch["mask"])
  h = model.hidden_states(batch["inputs"], segment_ids=batch.get("segment_ids"))  # [B, T, D]
  chunk = chunk_positions(loss_chunk, h.shape[0], batch_shards)
  return chunked_cross_entropy_sums(h, head_weight(model), batch["targets"], batch["mask"], chunk=chunk,
                                    compute_dtype=model.config.dtype)
