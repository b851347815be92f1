"""Orbax checkpoints: async, keep-N, restorable onto any mesh, checksummed; SIGTERM → save and exit.

A checkpoint holds two items:
* `state`: the TrainState (params, optimizer state, step, RNG, skipped count), saved by every host for
  its own shards (`StandardSave`);
* `meta`: JSON with the data iterator position (per host), the config, and the step.

Restoring takes abstract targets (`jax.ShapeDtypeStruct` with the *new* shardings), so a run saved on one
mesh resumes on any other: orbax reads each device's slice of every array.

Integrity: orbax (tensorstore/ocdbt) does not checksum the array data, so a flipped byte restores silently.
Once a save is finalised, process 0 records the size and SHA-256 of every file of the step in
`<step>/checksums.json` (in a background thread); `restore` verifies them first and raises
`CorruptCheckpointError` naming the step and the file. A step without that file (written before this, or
killed between finalising and hashing) is restored unverified, with a warning.

Failures of a background save are surfaced as `CheckpointError` at the next `poll()` / `save()` / `wait()`
instead of being logged by orbax while training goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or used; the message is one line naming the directory or step."""


class CorruptCheckpointError(CheckpointError):
  """One step's checkpoint is damaged (checksum, missing file, unreadable): an older one may still serve."""


def one_line(e: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, short enough for an error line."""
  text = str(e).strip().splitlines()
  first = text[0].strip() if text else ""
  first = first[:limit] + ("..." if len(first) > limit else "")
  return f"{type(e).__name__}: {first}" if first else type(e).__name__


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the state/meta layout above."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._async = async_save
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    try:
      os.makedirs(self.directory, exist_ok=True)  # a file in the way fails here, not in a background save
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"cannot use the checkpoint directory {self.directory}: {one_line(e)}") from e
    self._pending: int | None = None  # step whose async save has not been checked yet
    self._hasher: threading.Thread | None = None
    self._hash_error: str | None = None

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  # ---------------------------------------------------------------------------------------------- save

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = True) -> bool:
    """Starts saving (returns before the write finishes when async); `wait()` blocks until done.

    Raises CheckpointError if this save, or the previous background one, failed.
    """
    if self._pending is not None:
      self._finish()
    self._join_hasher()
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    try:
      saved = self._manager.save(step, args=args, force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if saved:
      self._pending = step
      if not self._async:
        self._finish()
    return saved

  def poll(self) -> None:
    """Cheap check between steps: raises CheckpointError as soon as a background save has failed."""
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self._finish()
    if self._hash_error:
      raise CheckpointError(self._hash_error)

  def wait(self) -> None:
    if self._pending is not None:
      self._finish()
    self._join_hasher()
    if self._hash_error:
      raise CheckpointError(self._hash_error)

  def close(self) -> None:
    self.wait()
    self._manager.close()

  def _save_error(self, step: int, e: BaseException) -> CheckpointError:
    return CheckpointError(f"saving the checkpoint of step {step} in {self.directory} failed: {one_line(e)}")

  def _finish(self) -> None:
    """Waits for the pending save, checks that its directory was finalised, then starts hashing it."""
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if not os.path.isdir(self.step_dir(step)):
      raise CheckpointError(f"saving the checkpoint of step {step} in {self.directory} failed: "
                            f"{self.step_dir(step)} was not written (see the log above)")
    if jax.process_index() == 0:
      self._hasher = threading.Thread(target=self._write_checksums, args=(step,), daemon=True,
                                      name=f"checksum-{step}")
      self._hasher.start()

  def _join_hasher(self) -> None:
    if self._hasher is not None:
      self._hasher.join()
      self._hasher = None

  def _write_checksums(self, step: int) -> None:
    root = self.step_dir(step)
    try:
      table = _checksums(root)
      tmp = os.path.join(root, CHECKSUMS + ".tmp")
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"step": step, "files": table}, f)
      os.replace(tmp, os.path.join(root, CHECKSUMS))
    except FileNotFoundError:
      pass  # the step was already removed (keep-N) while hashing
    except OSError as e:
      self._hash_error = f"recording the checksums of checkpoint {root} failed: {one_line(e)}"

  # ---------------------------------------------------------------------------------------------- restore

  def verify(self, step: int) -> None:
    """Raises CorruptCheckpointError if a file of `step` is missing, resized or changed since it was saved."""
    root = self.step_dir(step)
    path = os.path.join(root, CHECKSUMS)
    if not os.path.exists(path):
      log.warning("checkpoint %s has no %s (older writer, or killed before they were recorded): restoring "
                  "it unverified", root, CHECKSUMS)
      return
    try:
      with open(path, encoding="utf-8") as f:
        expected = json.load(f)["files"]
      assert isinstance(expected, dict)
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f"checkpoint {root} is corrupt: {CHECKSUMS} is unreadable ({one_line(e)})")
    for rel, (size, digest) in sorted(expected.items()):
      full = os.path.join(root, rel)
      if not os.path.isfile(full):
        raise CorruptCheckpointError(f"checkpoint {root} is corrupt: {rel} is missing")
      if os.path.getsize(full) != size:
        raise CorruptCheckpointError(f"checkpoint {root} is corrupt: {rel} has {os.path.getsize(full)} bytes, "
                                     f"{size} were saved")
      if _sha256(full) != digest:
        raise CorruptCheckpointError(f"checkpoint {root} is corrupt: {rel} does not match its saved checksum")

  def read_meta(self, step: int) -> dict[str, Any]:
    """The `meta` item (JSON), read without touching the arrays."""
    path = os.path.join(self.step_dir(step), "meta", "metadata")
    try:
      with open(path, encoding="utf-8") as f:
        meta = json.load(f)
      if not isinstance(meta, dict):
        raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
      return meta
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f"checkpoint {self.step_dir(step)} is corrupt: meta/metadata is unreadable "
                                   f"({one_line(e)})") from e

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of `step` (latest if None), laid out as `abstract_state`'s shardings say.

    Verifies the checksums first; any damage raises CorruptCheckpointError (one line, naming the step).
    """
    self.wait()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    self.verify(step)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    try:
      restored = self._manager.restore(step, args=args)
      return restored["state"], dict(restored["meta"])
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f"checkpoint {self.step_dir(step)} cannot be restored: {one_line(e)}") from e

  def set_aside(self, step: int) -> str:
    """Renames a damaged step to `<step>.corrupt` (kept for inspection, no longer seen as a checkpoint)."""
    src, dst = self.step_dir(step), self.step_dir(step) + ".corrupt"
    if jax.process_index() == 0:
      n = 1
      while os.path.exists(dst):
        dst, n = f"{self.step_dir(step)}.corrupt{n}", n + 1
      os.rename(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"gla_set_aside_{step}")
    self._manager.reload()
    return dst


class _NoOrbaxTracebacks(logging.Filter):
  """Keeps orbax's error lines but drops their tracebacks: the failure is re-raised here as one line."""

  def filter(self, record):
    if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
      record.exc_info, record.exc_text = None, None
    return True


def quiet_orbax_tracebacks() -> None:
  """For the CLI: orbax logs a traceback per failed background save, we report it as one error line."""
  absl = logging.getLogger("absl")
  if not any(isinstance(f, _NoOrbaxTracebacks) for f in absl.filters):
    absl.addFilter(_NoOrbaxTracebacks())


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _checksums(root: str) -> dict[str, list]:
  table = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      full = os.path.join(dirpath, name)
      rel = os.path.relpath(full, root)
      if rel.startswith(CHECKSUMS):
        continue
      table[rel] = [os.path.getsize(full), _sha256(full)]
  return table


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
