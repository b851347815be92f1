"""The jitted train and eval steps.

Batch: {"inputs" int32 [B, T], "targets" int32 [B, T], "mask" bool [B, T], optional "segment_ids" int32
[B, T]}. The loss is the mean cross-entropy over the positions where `mask` is True (all tokens for text, the
query positions for MQAR), computed in float32 from float32 logits. With `loss_chunk` > 0 (the default,
TrainConfig.loss_chunk) the logits are formed chunk by chunk from the final hidden states and never exist
as one [B, T, vocab] array (train/losses.py); 0 gives the full-logits form.

Gradient accumulation splits the global batch into `grad_accum` micro-batches (row i goes to micro-batch
i mod A, so every micro-batch keeps the batch sharding) and sums gradients of Σ ce · mask / N_total, which
equals the one-shot gradient exactly up to summation order. A step whose loss or gradient norm is not finite
leaves params and optimizer state unchanged and increments `skipped`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train import losses
from train import mesh as mesh_lib
from train.losses import cross_entropy_sums  # noqa: F401  (re-exported: the full-logits form)
from train.state import ModelDef, TrainState

Batch = dict[str, jax.Array]


def _forward_sums(model_def: ModelDef, params: Any, batch: Batch, loss_chunk: int = 0,
                  batch_shards: int = 1) -> dict[str, jax.Array]:
  model = model_def.merge(params)
  return losses.lm_cross_entropy_sums(model, batch, loss_chunk=loss_chunk, batch_shards=batch_shards)


def _check_loss_chunk(loss_chunk: int) -> int:
  if isinstance(loss_chunk, bool) or not isinstance(loss_chunk, int) or loss_chunk < 0:
    raise ValueError(f"loss_chunk must be an int >= 0 (0: full logits), got {loss_chunk!r}")
  return loss_chunk


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation, mesh: Mesh,
                    state_shardings: TrainState, grad_accum: int = 1, loss_chunk: int = 1024):
  """Returns `train_step(state, batch) -> (state, metrics)`, jitted with the state donated.

  loss_chunk: tokens per device per chunk of the chunked cross-entropy (0: full logits).
  """
  batch_sh = mesh_lib.batch_sharding(mesh)
  rep = NamedSharding(mesh, P())
  loss_chunk, shards = _check_loss_chunk(loss_chunk), mesh_lib.batch_split(mesh)

  def loss_fn(params, micro, total_count):
    sums = _forward_sums(model_def, params, micro, loss_chunk, shards)
    return sums["loss_sum"] / total_count, sums

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: Batch):
    total = jnp.maximum(jnp.sum(batch["mask"].astype(jnp.float32)), 1.0)
    if grad_accum == 1:
      (loss, sums), grads = grad_fn(state.params, batch, total)
    else:
      micro = jax.tree.map(lambda x: _micro_batches(x, grad_accum, batch_sh), batch)

      def body(carry, mb):
        g_acc, s_acc = carry
        (_, sums), g = grad_fn(state.params, mb, total)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        return (g_acc, jax.tree.map(jnp.add, s_acc, sums)), None

      zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      zeros_s = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}
      (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), micro)
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
      loss = sums["loss_sum"] / total

    grad_norm = optax.tree.norm(grads)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
    new_state = TrainState(
        step=state.step + 1, params=keep(new_params, state.params), opt_state=keep(new_opt, state.opt_state),
        rng=jax.random.key_data(rng), skipped=state.skipped + (~ok).astype(jnp.int32))
    metrics = {"loss": loss, "accuracy": sums["correct"] / total, "tokens": sums["count"],
               "grad_norm": grad_norm, "update_ok": ok.astype(jnp.float32), "skipped": new_state.skipped}
    return new_state, metrics

  jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_sh), out_shardings=(state_shardings, rep),
                   donate_argnums=(0,))
  return _under_mesh(jitted, mesh)


# the logical rules active while a step traces: the parameter table plus the activations' batch dimension,
# so the GLA layer runs its op per shard (B over data × fsdp, H over tensor; gla_jax/layers/per_shard.py)
TRACE_RULES = mesh_lib.LOGICAL_RULES + (("batch", mesh_lib.BATCH_AXES),)


def _under_mesh(fn, mesh: Mesh):
  """Calls (and so traces) `fn` with `mesh` set and `TRACE_RULES` active, so layers can see the mesh
  (`get_abstract_mesh`) and run a kernel per shard under `jax.shard_map`."""
  def call(*args):
    with jax.set_mesh(mesh), nnx.logical_axis_rules(TRACE_RULES):
      return fn(*args)
  call.jitted = fn
  return call


def _micro_batches(x: jax.Array, accum: int, batch_sh: NamedSharding) -> jax.Array:
  """[B, ...] -> [A, B/A, ...] with micro-batch i = rows i, i+A, i+2A, ... (keeps the B-sharding)."""
  b = x.shape[0]
  y = x.reshape((b // accum, accum) + x.shape[1:])
  y = jnp.swapaxes(y, 0, 1)
  spec = P(None, *batch_sh.spec)
  return jax.lax.with_sharding_constraint(y, NamedSharding(batch_sh.mesh, spec))


def make_eval_step(model_def: ModelDef, mesh: Mesh, params_shardings: Any, loss_chunk: int = 1024):
  """Returns `eval_step(params, batch) -> sums` (Σ ce, Σ correct, count) for aggregation over batches."""
  batch_sh = mesh_lib.batch_sharding(mesh)
  rep = NamedSharding(mesh, P())
  loss_chunk, shards = _check_loss_chunk(loss_chunk), mesh_lib.batch_split(mesh)

  def eval_step(params, batch):
    return _forward_sums(model_def, params, batch, loss_chunk, shards)

  return _under_mesh(jax.jit(eval_step, in_shardings=(params_shardings, batch_sh), out_shardings=rep), mesh)


def summarize_eval(sums: list[dict[str, Any]]) -> dict[str, float]:
  """Mean loss, perplexity and accuracy over the masked positions of several eval batches."""
  loss = sum(float(s["loss_sum"]) for s in sums)
  correct = sum(float(s["correct"]) for s in sums)
  count = max(sum(float(s["count"]) for s in sums), 1.0)
  mean = loss / count
  return {"loss": mean, "perplexity": float(jnp.exp(jnp.minimum(mean, 80.0))), "accuracy": correct / count,
          "tokens": count}
