"""Orbax checkpoints: async, keep-N, restorable onto any mesh; SIGTERM → save and exit.

A checkpoint holds two items:
* `state`: the TrainState (params, optimizer state, step, RNG, skipped count), saved by every host for
  its own shards (`StandardSave`);
* `meta`: JSON with the data iterator position (per host), the config, and the step.

Restoring takes abstract targets (`jax.ShapeDtypeStruct` with the *new* shardings), so a run saved on one
mesh resumes on any other: orbax reads each device's slice of every array.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the state/meta layout above."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = True) -> bool:
    """Starts saving (returns before the write finishes when async); `wait()` blocks until done."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return self._manager.save(step, args=args, force=force)

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of `step` (latest if None), laid out as `abstract_state`'s shardings say."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored["state"], dict(restored["meta"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class StopSignal:
  """Turns SIGTERM (and SIGINT) into a flag the training loop polls: save, then exit cleanly.

  Preemptible machines send SIGTERM with a grace period; the loop finishes the current step, writes a
  checkpoint synchronously and returns. A second SIGINT falls through to the default (KeyboardInterrupt).
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._event = threading.Event()
    self._previous = {}
    self.signum: int | None = None
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self._event.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    self._event.set()
    log.warning("received signal %d: will save a checkpoint and stop after this step", signum)

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def request(self) -> None:
    self._event.set()

  def any_host_requested(self) -> bool:
    """True when any host got the signal (all hosts must take the same decision, or saving deadlocks)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(jax.numpy.asarray([int(self.requested)]))
    return bool(flags.max())

  def restore(self) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}
