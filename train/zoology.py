"""Zoology's MQAR sweep (Arora et al. 2023, arXiv 2312.04927): recall accuracy across mixer kinds, widths,
sequence lengths and learning rates, with the table and the two plots (tables and plots: train/zoology_report.py).

    python -m train.zoology --out runs/zoology                                   # the whole grid
    python -m train.zoology --kinds gla,attention --dims 64,128 --cells 256x16,512x64 --epochs 8 \
        --vmap-lrs --out runs/zoology                                            # a subset, LRs batched
    python -m train.zoology --jrt --cells 512x64 --out runs/zoology              # just-read-twice

Protocol (Zoology's `iclr24_zoology_figure2` configs): vocabulary 8192, 2-layer models, a fixed training set
of 100k MQAR examples and a test set of 3k (train/data/mqar.py, filler 0 as there: `--random-filler` for
random filler), batch 512 for T <= 128, 256 for T = 256, 128 for T = 512 (64 beyond), a flag for the
epochs (Zoology: 64), learning rates logspace(-4, -2, 4); the best LR per (kind, d_model, cell) is reported.
Loss and accuracy count the N query positions of each example only: the model's final hidden states are
gathered at those positions before the LM head (the same loss as masking full logits, T/N times less work).

Optimizer: AdamW with linear warmup (min(100, steps // 10) steps) then cosine to 0.1 · lr, b1 0.9,
b2 0.95, weight decay 0.1 on matrices, global-norm clip 1.0 (train/config.py's OptimConfig defaults);
a non-finite step leaves that model unchanged. The sweep has its own small jitted step (one `lax.scan`
per epoch over the device-resident training set) so it can `jax.vmap` over several models of one
architecture (`--vmap-lrs`: every LR x seed of a (kind, d_model, cell) at once; the models see the same
batches, as separate runs of the same data seed do).

Models (`model_config`): `presets.tiny(kind, vocab_size=8192, hidden_size=d, num_hidden_layers=2, ...)` with
the head rule H = max(1, d // 64): heads of width 64 on the model side (d = 64: 1 head, 512: 8), applied to
whichever head fields the kind's config has (num_heads, num_key_value_heads = H; Mamba-2 head_dim
= min(64, expand · d), state_size 64; HGRN2 expand_ratio = d / H); every config with a `use_short_conv`
field gets it on (Zoology's baselines carry short convs). Each row records the parameter count and the
decode state bytes per sequence (Σ over layers of `mixer.cache_bytes(seq_len)`; attention's KV cache
grows with seq_len, the recurrent states do not).

JRT (`--jrt`, Arora et al. 2024 "Just read twice"): the context is read twice before the queries,

    k1 v1 … kN vN | k1 v1 … kN vN | query region (T − 2N tokens, as without JRT)      length T + 2N,

the query positions shift by 2N and the loss counts exactly the same N queries with the same targets.

Resume: results.jsonl holds one row per finished run; a run whose (kind, d_model, seq_len, num_kv_pairs,
lr, seed, protocol) is there is skipped (protocol = epochs, JRT, set sizes, filler, dtype, vocab, batch).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gla_jax.layers.mixers import registry
from gla_jax.models import build_model, presets
from train import state as state_lib
from train.config import OptimConfig
from train.data.mqar import mqar_example, row_rng

CELLS = ((64, 4), (128, 8), (256, 16), (512, 64))  # (seq_len, num_kv_pairs)
DIMS = (64, 128, 256, 512)
LRS = tuple(float(x) for x in np.logspace(-4, -2, 4))
HEAD_DIM = 64  # model-side width of one head (the head rule)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Protocol:
  """Everything that defines a run besides (kind, d_model, cell, lr, seed)."""

  epochs: int = 64  # passes over the training set (Zoology: 64)
  jrt: bool = False  # just-read-twice layout (module doc)
  vocab_size: int = 8192
  num_layers: int = 2
  train_examples: int = 100_000
  test_examples: int = 3_000
  random_filler: bool = False  # Zoology's figure-2 configs fill with 0 (random_non_queries=False)
  power_a: float = 0.01  # query gap law
  data_seed: int = 0  # the data sets and the batch order
  dtype: str = "float32"  # compute dtype ("bfloat16": bf16 activations, f32 params and optimizer)
  batch_size: int = 0  # 0: Zoology's rule by seq_len (`batch_for`)

  def tag(self) -> str:
    return (f"e{self.epochs}-jrt{int(self.jrt)}-v{self.vocab_size}-L{self.num_layers}-n{self.train_examples}"
            f"-t{self.test_examples}-f{int(self.random_filler)}-a{self.power_a}-s{self.data_seed}-{self.dtype}"
            f"-b{self.batch_size}")


def batch_for(seq_len: int, proto: Protocol) -> int:
  """Zoology's batch size by sequence length (its configs), unless the protocol fixes one."""
  if proto.batch_size:
    return proto.batch_size
  return 512 if seq_len <= 128 else 256 if seq_len <= 256 else 128 if seq_len <= 512 else 64


# ------------------------------------------------------------------------------------------------ data


def jrt_inputs(inputs: np.ndarray, num_kv_pairs: int) -> np.ndarray:
  """[n, T] → [n, T + 2N]: the context (first 2N tokens) once more before the rest (module doc)."""
  return np.concatenate([inputs[:, :2 * num_kv_pairs], inputs], axis=1)


def mqar_set(seq_len: int, num_kv_pairs: int, n: int, split: str, proto: Protocol,
             cache_dir: str | None = None) -> dict[str, np.ndarray]:
  """A fixed MQAR set: inputs int32 [n, T'] (T' = T, or T + 2N with JRT), qpos / qtgt int32 [n, N] (the
  query positions in `inputs` and their target values). Row i is train/data/mqar.py's example of
  row_rng(data_seed, split, 0, i); the raw set is cached as .npz in `cache_dir`."""
  name = (f"mqar_T{seq_len}_N{num_kv_pairs}_V{proto.vocab_size}_{split}{n}_f{int(proto.random_filler)}"
          f"_a{proto.power_a}_s{proto.data_seed}.npz")
  path = os.path.join(cache_dir, name) if cache_dir else None
  if path and os.path.exists(path):
    with np.load(path) as f:
      inputs, qpos, qtgt = f["inputs"], f["qpos"], f["qtgt"]
  else:
    rows = [mqar_example(row_rng(proto.data_seed, split, 0, i), seq_len=seq_len, vocab_size=proto.vocab_size,
                         num_kv_pairs=num_kv_pairs, power_a=proto.power_a, random_filler=proto.random_filler)
            for i in range(n)]
    inputs = np.stack([r["inputs"] for r in rows])  # [n, T]
    qpos = np.stack([np.flatnonzero(r["mask"]) for r in rows]).astype(np.int32)  # [n, N] ascending
    qtgt = np.take_along_axis(np.stack([r["targets"] for r in rows]), qpos, axis=1).astype(np.int32)
    if path:
      os.makedirs(cache_dir, exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp.npz"  # workers of one sweep share the cache
      np.savez(tmp, inputs=inputs, qpos=qpos, qtgt=qtgt)
      os.replace(tmp, path)
  if proto.jrt:
    inputs, qpos = jrt_inputs(inputs, num_kv_pairs), qpos + 2 * num_kv_pairs
  return {"inputs": inputs.astype(np.int32), "qpos": qpos, "qtgt": qtgt}


# ------------------------------------------------------------------------------------------------ models


def num_heads_for(d_model: int) -> int:
  """The head rule: heads of width HEAD_DIM on the model side, at least one."""
  return max(1, d_model // HEAD_DIM)


def model_config(kind: str, d_model: int, *, vocab_size: int = 8192, num_layers: int = 2, seq_len: int = 2048,
                 dtype: str = "float32", short_conv: bool | None = True, **overrides):
  """The sweep's model of `kind` at width `d_model` (the head rule of the module doc); overrides win.
  `short_conv` None leaves the config's own `use_short_conv`."""
  fields = {f.name for f in dataclasses.fields(registry.config_class(kind))}
  H = num_heads_for(d_model)
  kw: dict[str, Any] = dict(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=num_layers,
                            max_position_embeddings=max(2048, seq_len), dtype=dtype,
                            embed_grad="sorted")  # MQAR's filler 0 makes a scatter-add gradient serialise
  if "num_heads" in fields:
    kw["num_heads"] = H
  if "num_key_value_heads" in fields:
    kw["num_key_value_heads"] = H
  if "num_kv_heads" in fields:
    kw["num_kv_heads"] = None
  if "head_dim" in fields:  # Mamba-2: P channels per head of the expand · D inner width
    kw["head_dim"] = min(HEAD_DIM, d_model * int(getattr(registry.config_class(kind), "expand", 2)))
  if "state_size" in fields:
    kw["state_size"] = HEAD_DIM
  if "expand_ratio" in fields:  # HGRN2: the forget/key dim per head
    kw["expand_ratio"] = d_model // H
  if "use_short_conv" in fields and short_conv is not None:
    kw["use_short_conv"] = short_conv
  return presets.tiny(kind, **{**kw, **overrides})


def model_facts(config, seq_len: int) -> dict[str, int]:
  """Parameter count and decode state bytes per sequence (Σ over layers of cache_bytes(seq_len))."""
  model = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  state = sum(int(block.attn.cache_bytes(seq_len)) for block in model.layers)
  return {"params": n, "state_bytes": state}


# ------------------------------------------------------------------------------------------------ training


def make_optimizer(oc: OptimConfig) -> optax.GradientTransformation:
  """AdamW without its learning rate (the step scales by -lr · schedule(step), lr per model)."""
  parts = [optax.clip_by_global_norm(oc.clip_norm)] if oc.clip_norm > 0 else []
  parts += [optax.scale_by_adam(b1=oc.b1, b2=oc.b2, eps=oc.eps),
            optax.add_decayed_weights(oc.weight_decay, mask=state_lib.decay_mask)]
  return optax.chain(*parts)


def unit_schedule(total_steps: int, oc: OptimConfig = OptimConfig()) -> optax.Schedule:
  """Warmup (min(oc.warmup_steps, total // 10) steps) then cosine to min_lr_ratio, peak 1."""
  warm = min(oc.warmup_steps, total_steps // 10)
  return state_lib.lr_schedule(dataclasses.replace(oc, lr=1.0, warmup_steps=warm), total_steps)


class SweepTrainer:
  """Trains M models of one architecture together (M = 1 without vmap) on one MQAR cell.

      t = SweepTrainer(config, total_steps, vmapped=True)
      params, opt = t.init(seeds)                    # stacked [M, ...] when vmapped
      params, opt, losses = t.epoch(params, opt, lrs, step0, data, perm)   # perm [S, B] row indices
      loss_sum, correct = t.evaluate(params, data, batch_size)            # [M] each (or scalars)
  """

  def __init__(self, config, total_steps: int, *, vmapped: bool, oc: OptimConfig = OptimConfig()):
    self.config, self.vmapped = config, vmapped
    self.build = lambda rngs: build_model(config, rngs=rngs)
    self.model_def, _ = state_lib.abstract_model(self.build)
    self.tx = make_optimizer(oc)
    sched = unit_schedule(total_steps, oc)
    model_def, tx = self.model_def, self.tx

    def sums(params, inputs, qpos, qtgt):
      model = model_def.merge(params)
      h = model.hidden_states(inputs)  # [B, T, D]
      logits = model.logits(jnp.take_along_axis(h, qpos[..., None], axis=1))  # [B, N, V] float32
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, qtgt)  # [B, N]
      return jnp.sum(ce), jnp.sum((jnp.argmax(logits, -1) == qtgt).astype(jnp.float32))

    def loss_fn(params, batch):
      loss_sum, _ = sums(params, *batch)
      return loss_sum / batch[2].size

    def one_step(params, opt, lr, batch, step):
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      updates, new_opt = tx.update(grads, opt, params)
      scale = -lr * sched(step)
      new_params = jax.tree.map(lambda p, u: (p + scale * u).astype(p.dtype), params, updates)
      ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
      return keep(new_params, params), keep(new_opt, opt), loss

    step_fn = jax.vmap(one_step, in_axes=(0, 0, 0, None, None)) if vmapped else one_step
    eval_fn = jax.vmap(sums, in_axes=(0, None, None, None)) if vmapped else sums

    def epoch(params, opt, lrs, step0, data, perm):
      def body(carry, idx):  # idx [B] row indices
        p, o, step = carry
        batch = tuple(x[idx] for x in data)
        p, o, loss = step_fn(p, o, lrs, batch, step)
        return (p, o, step + 1), loss
      (params, opt, _), losses = jax.lax.scan(body, (params, opt, step0), perm)
      return params, opt, losses  # losses [S] or [S, M]

    self._epoch = jax.jit(epoch, donate_argnums=(0, 1))
    self._eval = jax.jit(eval_fn)

  def _init(self, seed: int):
    """Params and optimizer state of seed `seed` (eager: a tiny model builds faster than a jit compiles)."""
    model = self.build(nnx.Rngs(params=jax.random.key(seed)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return params, self.tx.init(params)

  def init(self, seeds: list[int]):
    made = [self._init(s) for s in seeds]
    if not self.vmapped:
      assert len(made) == 1, "one seed per model without vmap"
      return made[0]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *made)

  def epoch(self, params, opt, lrs, step0: int, data, perm):
    return self._epoch(params, opt, lrs, jnp.asarray(step0, jnp.int32), data, perm)

  def evaluate(self, params, data, batch_size: int):
    n = data[0].shape[0]
    loss = correct = 0.0
    for i in range(0, n, batch_size):
      l, c = self._eval(params, *(x[i:i + batch_size] for x in data))
      loss, correct = loss + np.asarray(l, np.float64), correct + np.asarray(c, np.float64)
    return loss, correct


def train_group(kind: str, d_model: int, cell: tuple[int, int], runs: list[tuple[float, int]], proto: Protocol,
                *, vmapped: bool, cache_dir: str | None, on_epoch=None, impl: str | None = None) -> list[dict[str, Any]]:
  """Trains the (lr, seed) `runs` of one (kind, d_model, cell), together when `vmapped`; one row per run.
  `impl`: the models' attn_impl (None: the preset's); numerics only, so not part of the protocol."""
  T, N = cell
  train_np = mqar_set(T, N, proto.train_examples, "train", proto, cache_dir)
  test_np = mqar_set(T, N, proto.test_examples, "eval", proto, cache_dir)
  seq_len = train_np["inputs"].shape[1]
  B = min(batch_for(T, proto), proto.train_examples)
  steps_per_epoch = proto.train_examples // B
  total = steps_per_epoch * proto.epochs
  config = model_config(kind, d_model, vocab_size=proto.vocab_size, num_layers=proto.num_layers,
                        seq_len=seq_len, dtype=proto.dtype, **({"attn_impl": impl} if impl else {}))
  facts = model_facts(config, seq_len)
  train = tuple(jnp.asarray(train_np[k]) for k in ("inputs", "qpos", "qtgt"))
  test = tuple(jnp.asarray(test_np[k]) for k in ("inputs", "qpos", "qtgt"))
  groups = [runs] if vmapped else [[r] for r in runs]
  rows = []
  for group in groups:
    t0 = time.perf_counter()
    trainer = SweepTrainer(config, total, vmapped=vmapped)
    params, opt = trainer.init([s for _, s in group])
    lrs = jnp.asarray([lr for lr, _ in group], jnp.float32)
    lrs = lrs if vmapped else lrs[0]
    losses, epoch_s = None, []
    for e in range(proto.epochs):
      te = time.perf_counter()
      rng = np.random.default_rng([proto.data_seed, 7, e])
      perm = rng.permutation(proto.train_examples)[:steps_per_epoch * B].reshape(steps_per_epoch, B)
      params, opt, losses = trainer.epoch(params, opt, lrs, e * steps_per_epoch, train, jnp.asarray(perm, jnp.int32))
      jax.block_until_ready(losses)
      epoch_s.append(time.perf_counter() - te)
      if on_epoch:
        on_epoch(e + 1)
    loss_sum, correct = trainer.evaluate(params, test, max(B, 256))
    last = np.asarray(losses[-1] if losses is not None else np.nan, np.float64)
    seconds = time.perf_counter() - t0
    count = proto.test_examples * N
    for m, (lr, seed) in enumerate(group):
      pick = (lambda a: float(np.reshape(a, -1)[m])) if vmapped else (lambda a: float(a))
      rows.append({
          "kind": kind, "d_model": d_model, "seq_len": T, "num_kv_pairs": N, "lr": lr, "seed": seed,
          "protocol": proto.tag(), "epochs": proto.epochs, "jrt": proto.jrt, "input_len": seq_len,
          "accuracy": pick(correct) / count, "test_loss": pick(loss_sum) / count,
          "train_loss": pick(last), "num_heads": int(getattr(config, "num_heads", 0) or 0), **facts, "steps": total,
          "batch_size": B, "models_together": len(group), "seconds": seconds / len(group),
          "group_seconds": seconds, "first_epoch_seconds": epoch_s[0] if epoch_s else None,
          "epoch_seconds": (float(np.mean(epoch_s[1:])) if len(epoch_s) > 1 else None),
          "impl": getattr(config, "attn_impl", None),
          "device": jax.devices()[0].device_kind, "jax": jax.__version__,
          "date": datetime.datetime.now().isoformat(timespec="seconds")})
  return rows


def main(argv=None):
  """The command line (train/zoology_cli.py)."""
  from train import zoology_cli  # pylint: disable=g-import-not-at-top
  return zoology_cli.main(argv)


if __name__ == "__main__":
  main()
