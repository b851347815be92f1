"""The training loop: mesh → sharded state (fresh or restored) → steps with logging, eval and checkpoints.

    trainer = Trainer(config)            # builds mesh, state, data, checkpoint manager
    summary = trainer.run()              # trains to config.steps (resuming if a checkpoint exists)
    summary["final_eval"]                # {"loss", "perplexity", "accuracy", "tokens"}

Batches are produced one step ahead in a background thread; each carries the data-source state *after* it,
so a checkpoint written after step s records exactly where step s + 1 starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from train import mesh as mesh_lib
from train import metrics as metrics_lib
from train import state as state_lib
from train import step as step_lib
from train.checkpoint import CheckpointError, Checkpointer, CorruptCheckpointError, StopSignal
from train.config import ConfigError, TrainConfig, validate
from train.data import make_sources

log = logging.getLogger(__name__)

# a run stops (TrainingError) after this many consecutive steps rejected as non-finite: its state no longer
# changes, so going on only burns the budget (the last checkpoint is the state before the rejections)
MAX_REJECTED_IN_A_ROW = 10


class TrainingError(RuntimeError):
  """Training cannot usefully go on (e.g. every step is rejected as non-finite); one-line message."""


def default_build(config: TrainConfig) -> Callable[[nnx.Rngs], nnx.Module]:
  from gla_jax.models import build_model  # pylint: disable=g-import-not-at-top
  return lambda rngs: build_model(config.model, rngs=rngs)


class Trainer:
  """Owns the mesh, the sharded TrainState, the data sources, the checkpointer and the loop."""

  def __init__(self, config: TrainConfig, *, devices: Sequence[jax.Device] | None = None,
               build: Callable[[nnx.Rngs], nnx.Module] | None = None):
    validate(config)
    self.config = config
    self.run_dir = config.run_dir
    self.mesh = mesh_lib.make_mesh(config.mesh, devices)
    mesh_lib.check_batch(config.data.batch_size, self.mesh, config.grad_accum)
    self.tx = state_lib.make_optimizer(config.optim, config.steps)
    self._build = build or default_build(config)
    self.model_def, abstract_params = state_lib.abstract_model(self._build)
    self.shardings = state_lib.state_shardings(self.model_def, abstract_params, self.tx, self.mesh)
    self.num_params = state_lib.param_count(abstract_params)
    self.train_src, self.eval_src, self.tokenizer = make_sources(
        config, process_index=jax.process_index(), process_count=jax.process_count())
    self.checkpointer = Checkpointer(os.path.join(self.run_dir, "checkpoints"), keep=config.checkpoint.keep,
                                     async_save=config.checkpoint.async_save)
    self.state = None
    self.resumed_from: int | None = None
    self._data_state = None  # the train source's position after the last consumed batch
    self._train_step = step_lib.make_train_step(self.model_def, self.tx, self.mesh, self.shardings,
                                                config.grad_accum, loss_chunk=config.loss_chunk)
    self._eval_step = step_lib.make_eval_step(self.model_def, self.mesh, self.shardings.params,
                                              loss_chunk=config.loss_chunk)

  # ---------------------------------------------------------------------------------------------- state

  def initialize(self) -> None:
    """Restores the newest usable checkpoint (if resuming and one exists), else initialises fresh, sharded.

    A damaged step (checksum, missing or unreadable file) is renamed `<step>.corrupt` with a warning and
    the next older one is tried; if none is usable, CheckpointError. A checkpoint of another model config
    raises ConfigError naming the field (not a fallback: every step of the run has that config).
    """
    steps = sorted(self.checkpointer.all_steps(), reverse=True) if self.config.checkpoint.resume else []
    problems = []
    for step in steps:
      try:
        self._check_model_config(step)
        self.restore(step)
      except CorruptCheckpointError as e:
        problems.append(str(e))
        where = self.checkpointer.set_aside(step)
        log.warning("%s; moved it to %s, trying an older checkpoint", e, where)
        continue
      if problems:
        log.warning("resuming from the older checkpoint at step %d", step)
      return
    if problems:
      raise CheckpointError(f"no usable checkpoint in {self.checkpointer.directory}: {problems[0]}"
                            + (f" (and {len(problems) - 1} older ones damaged too)" if len(problems) > 1 else "")
                            + "; start over with --fresh or a new --workdir")
    self.state, _, _ = state_lib.init_state(self._build, self.tx, self.mesh, self.config.seed)

  def _check_model_config(self, step: int) -> None:
    """ConfigError when the checkpoint's model config differs from this run's (its arrays would not fit)."""
    saved = self.checkpointer.read_meta(step).get("config", {})
    saved = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(saved, dict):
      return  # no config recorded: the restore itself checks the shapes
    ours = _config_json(self.config)["model"]
    saved = {"scan_layers": False, **saved}  # checkpoints from before the field: unscanned
    if saved["scan_layers"] != ours.get("scan_layers", False):
      raise ConfigError(f"checkpoint {self.checkpointer.step_dir(step)} stores its layers "
                        f"{'stacked' if saved['scan_layers'] else 'per layer'} (model.scan_layers="
                        f"{saved['scan_layers']}) but this run has model.scan_layers={ours.get('scan_layers')}: "
                        f"resume with --set model.scan_layers={saved['scan_layers']}, or convert the params with "
                        "gla_jax.models.scan.stack_layers / unstack_layers")
    diff = [k for k in sorted(set(saved) | set(ours)) if saved.get(k, "<unset>") != ours.get(k, "<unset>")]
    if diff:
      shown = ", ".join(f"model.{k}={saved.get(k, '<unset>')!r} there but {ours.get(k, '<unset>')!r} here"
                        for k in diff[:3]) + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else "")
      raise ConfigError(f"checkpoint {self.checkpointer.step_dir(step)} was written with another model config: "
                        f"{shown}; resume with the same model settings, or start over with --fresh or a new "
                        f"--workdir")

  def restore(self, step: int | None = None) -> None:
    """Loads a checkpoint onto this trainer's mesh (which may differ from the one that saved it)."""
    abstract = state_lib.abstract_state(self.shardings,
                                        state_lib.eval_shape_state(self._build, self.tx, self.config.seed))
    self.state, meta = self.checkpointer.restore(step, abstract)
    data_states = meta.get("data_state") or []
    if len(data_states) != jax.process_count() and self.config.data.kind == "text":
      raise ConfigError(f"checkpoint was written by {len(data_states)} processes, this run has "
                        f"{jax.process_count()}: the text iterator positions cannot be mapped")
    if data_states:
      self.train_src.set_state(data_states[min(jax.process_index(), len(data_states) - 1)])
    self.resumed_from = int(self.state.step)

  def save(self, *, wait: bool = False) -> None:
    step = int(self.state.step)
    if step not in self.checkpointer.all_steps():
      data_state = self._data_state if self._data_state is not None else self.train_src.get_state()
      meta = {"step": step, "data_state": _gather_json(data_state), "config": _config_json(self.config)}
      self.checkpointer.save(step, self.state, meta)
    if wait:
      self.checkpointer.wait()

  # ---------------------------------------------------------------------------------------------- eval

  def evaluate(self) -> dict[str, float]:
    self.eval_src.reset()
    sums = []
    for _ in range(self.config.eval_batches):
      batch = mesh_lib.global_batch(self.eval_src.next(), self.mesh)
      sums.append(self._eval_step(self.state.params, batch))
    return step_lib.summarize_eval(jax.device_get(sums))

  # ---------------------------------------------------------------------------------------------- loop

  def run(self, *, until: int | None = None, on_log: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Trains to `config.steps` (or stops early at step `until`, saving a checkpoint).

    Returns {"losses": [loss per step run here], "final_eval": {...} or None, "step": last step, ...}.
    """
    cfg = self.config
    if self.state is None:
      self.initialize()
    start = int(self.state.step)
    stop_at = cfg.steps if until is None else min(until, cfg.steps)
    self._data_state = self.train_src.get_state()
    if jax.process_index() == 0:  # rows past the restored step were written by the run that died
      _truncate_metrics(os.path.join(self.run_dir, "metrics.jsonl"), start, rerun_eval=start >= cfg.steps)
    writer = metrics_lib.MetricsWriter(self.run_dir, tensorboard=cfg.tensorboard)
    stop = StopSignal()
    bar = _progress(cfg.progress and jax.process_index() == 0, start, cfg.steps)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    losses: list[float] = []
    pending: list[dict] = []
    last_eval = None
    t_log, steps_since_log = time.perf_counter(), 0
    prefetch = _Prefetcher(self.train_src, stop_at - start)
    step = start
    skipped_before = int(self.state.skipped)
    rejected = _Rejections(skipped_before)
    try:
      while step < stop_at:
        batch_np, self._data_state = prefetch.get()
        batch = mesh_lib.global_batch(batch_np, self.mesh)
        self.state, m = self._train_step(self.state, batch)
        step += 1
        steps_since_log += 1
        pending.append(m)
        if step % cfg.log_every == 0 or step == stop_at:
          fetched = jax.device_get(pending)
          pending = []
          losses.extend(float(f["loss"]) for f in fetched)
          rejected.update(step - len(fetched) + 1, fetched)
          dt = time.perf_counter() - t_log
          row = {k: float(np.mean([f[k] for f in fetched])) for k in ("loss", "accuracy", "grad_norm")}
          row.update(skipped=int(fetched[-1]["skipped"]), tokens_per_s=tokens_per_step * steps_since_log / dt,
                     lr=float(state_lib.lr_schedule(cfg.optim, cfg.steps)(step - 1)))
          writer.write(step, "train", row)
          if on_log:
            on_log(step, row)
          bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}",
                          tok_s=f"{row['tokens_per_s']:,.0f}", refresh=False)
          t_log, steps_since_log = time.perf_counter(), 0
        bar.update(1)
        if jax.process_count() == 1:
          self.checkpointer.poll()  # a failed background save stops the run now, not at the next save
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
          last_eval = self.evaluate()
          writer.write(step, "eval", last_eval)
          t_log = time.perf_counter()  # keep eval time out of tokens/s
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < stop_at:
          self.save()
        # one host's signal must stop every host at the same step; asking the others costs a collective,
        # so multi-host runs ask at log steps only
        if (jax.process_count() == 1 or step % cfg.log_every == 0) and stop.any_host_requested():
          log.warning("stopping at step %d on signal", step)
          break
      if pending:
        fetched = jax.device_get(pending)
        losses.extend(float(f["loss"]) for f in fetched)
        rejected.update(step - len(fetched) + 1, fetched)
      if step > start and int(self.state.skipped) - skipped_before == step - start:
        raise TrainingError(f"all {step - start} steps of this run ({start + 1}-{step}) were rejected as "
                            f"non-finite (loss {losses[-1] if losses else float('nan')}): nothing was learnt")
      final_eval = None
      if step >= cfg.steps:
        final_eval = self.evaluate()
        writer.write(step, "eval", final_eval)
      self.save(wait=True)
    finally:
      prefetch.close()
      self.train_src.set_state(self._data_state)  # the prefetcher may have read ahead of the last step
      bar.close()
      writer.close()
      stop.restore()
    plot = metrics_lib.plot_curves(self.run_dir) if cfg.plot and step >= cfg.steps else None
    return {"losses": losses, "final_eval": final_eval, "last_eval": last_eval, "step": step,
            "start_step": start, "skipped": int(self.state.skipped), "plot": plot,
            "checkpoint": os.path.join(self.checkpointer.directory, str(step)), "stopped_by_signal": stop.requested and step < stop_at}

  def close(self) -> None:
    self.checkpointer.close()


# ------------------------------------------------------------------------------------------------ helpers


class _Rejections:
  """Counts consecutive non-finite (rejected) steps from the fetched metrics' cumulative `skipped`."""

  def __init__(self, skipped: int):
    self.skipped, self.in_a_row, self.first = skipped, 0, None

  def update(self, first_step: int, fetched: list[dict]) -> None:
    for i, f in enumerate(fetched):
      now = int(f["skipped"])
      if now > self.skipped:
        self.first = first_step + i if self.in_a_row == 0 else self.first
        self.in_a_row += 1
      else:
        self.in_a_row = 0
      self.skipped = now
    if self.in_a_row >= MAX_REJECTED_IN_A_ROW:
      last = first_step + len(fetched) - 1
      raise TrainingError(f"steps {self.first}-{last} were all rejected as non-finite (loss "
                          f"{float(fetched[-1]['loss'])}): stopping; resume from an earlier checkpoint with a "
                          f"lower optim.lr, or check the data")


def _truncate_metrics(path: str, step: int, *, rerun_eval: bool) -> None:
  """Drops metrics.jsonl rows after `step` (and the eval at `step` when it will be run again)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
      s = int(row["step"])
    except (ValueError, KeyError, TypeError):
      continue  # a row cut short by a kill
    if s < step or (s == step and not (rerun_eval and row.get("split") == "eval")):
      keep.append(line if line.endswith("\n") else line + "\n")
  if len(keep) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(keep)
    os.replace(tmp, path)


class _Prefetcher:
  """Produces (batch, source state after it) one step ahead in a daemon thread."""

  def __init__(self, source, count: int, depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._work, args=(source, count), daemon=True)
    self._thread.start()

  def _work(self, source, count):
    try:
      for _ in range(count):
        batch = source.next()
        state = json.loads(json.dumps(source.get_state()))
        while not self._stop.is_set():
          try:
            self._queue.put((batch, state), timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
    except BaseException as e:  # surfaced in get()
      self._queue.put(e)

  def get(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)


def _progress(enabled: bool, start: int, total: int):
  if enabled:
    try:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.1)
    except ImportError:
      pass
  return _NoBar()


class _NoBar:
  def update(self, n):
    pass

  def set_postfix(self, **kw):
    pass

  def close(self):
    pass


def _gather_json(obj: Any) -> list[Any]:
  """Every process's JSON-able `obj`, in process order (the data positions differ per host)."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32))).reshape(-1)
  buf = np.zeros(int(lengths.max()), np.uint8)
  buf[:data.size] = data
  everyone = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(lengths), -1)
  return [json.loads(bytes(everyone[i, :lengths[i]]).decode()) for i in range(len(lengths))]


def _config_json(config: Any) -> Any:
  def convert(x):
    if dataclasses.is_dataclass(x):
      return {f.name: convert(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (list, tuple)):
      return [convert(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
      return x
    return str(x)
  return convert(config)
