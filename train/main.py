"""Command line: `python -m train --config configs/mqar_gla.py --set key=value ...` (console script: gla-train).

    python -m train                                       # the default job: configs/tiny_text_gla.py
    python -m train --config configs/tiny_text_gla.py --set steps=200 optim.lr=3e-3
    python -m train --config gla_340m --set mesh.fsdp=8 data.batch_size=64
    python -m train --list                                # the configs and their fields
    python -m train --config mqar_gla --print_config      # the resolved config, then exit

Multi-host: start one process per host with `--coordinator_address host:port --num_processes N
--process_id i` (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables; on TPU pods
`--coordinator_address auto`). Exit status: 0 done, 1 failed (a checkpoint could not be written or none
is usable, or every step was rejected as non-finite; one line on stderr), 2 bad config or override (a
checkpoint of another model config included), 3 stopped by a signal (a checkpoint was written, or the
signal came during start-up; run the same command again to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import time

EXIT_FAILED, EXIT_CONFIG, EXIT_SIGNAL = 1, 2, 3


class _StartupSignal(Exception):
  """SIGTERM / SIGINT before the training loop took over the signals."""


def _startup_handler(signum, frame):
  del frame
  raise _StartupSignal(signum)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="gla-train", description="Train a gla_jax model (sharded, resumable).")
  p.add_argument("--config", default="tiny_text_gla",
                 help="configs/<name>.py path or bare name (default tiny_text_gla)")
  p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                 help="override config fields, dotted paths: optim.lr=1e-3 model.num_hidden_layers=2")
  p.add_argument("--workdir", default=None, help="run directory (default runs/<config name>)")
  p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints in the run directory")
  p.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
  p.add_argument("--list", action="store_true", help="list the available configs and exit")
  p.add_argument("--coordinator_address", default=None, help="multi-host: host:port of process 0, or 'auto'")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def resolve_config(args: argparse.Namespace):
  from train.config import apply_overrides, load_config, validate  # pylint: disable=g-import-not-at-top
  config = load_config(args.config)
  overrides = list(args.set)
  if args.workdir:
    overrides.append(f"workdir={args.workdir}")
  if args.fresh:
    overrides.append("checkpoint.resume=false")
  if args.quiet:
    overrides.append("progress=false")
  config = apply_overrides(config, overrides)
  validate(config)
  return config


def check_distributed_args(args: argparse.Namespace) -> None:
  """Multi-host flags that would silently run as one process (no coordinator) or cannot work."""
  import os  # pylint: disable=g-import-not-at-top
  from train.config import ConfigError  # pylint: disable=g-import-not-at-top
  env = lambda name: os.environ.get(name) or None
  coordinator = args.coordinator_address or env("JAX_COORDINATOR_ADDRESS")
  num = args.num_processes
  pid = args.process_id
  for flag, value, var in (("--num_processes", num, "JAX_NUM_PROCESSES"), ("--process_id", pid, "JAX_PROCESS_ID")):
    if value is None and env(var) is not None:
      try:
        value = int(env(var))
      except ValueError:
        raise ConfigError(f"{var}={env(var)!r}: expected an int") from None
      num, pid = (value, pid) if flag == "--num_processes" else (num, value)
  if coordinator is None:
    given = [f for f, v in (("--num_processes", num), ("--process_id", pid)) if v is not None]
    if num not in (None, 1) or pid not in (None, 0):
      raise ConfigError(f"{' and '.join(given)} without --coordinator_address (or JAX_COORDINATOR_ADDRESS) "
                        f"would run as one process: give the coordinator's host:port")
    return
  if coordinator == "auto":
    return
  if num is not None and num < 1:
    raise ConfigError(f"--num_processes={num}: must be >= 1")
  if num is not None and pid is not None and not 0 <= pid < num:
    raise ConfigError(f"--process_id={pid}: must be in [0, {num}) for --num_processes={num}")


def main(argv=None) -> int:
  """The CLI. Run as the program (argv None), a failed checkpoint write ends the process at once
  (`os._exit`): orbax's signalling threads of the failed save would otherwise block the exit for minutes."""
  previous = {s: signal.signal(s, _startup_handler) for s in (signal.SIGTERM, signal.SIGINT)} \
      if threading_is_main() else {}
  try:
    code = _main(argv, previous)
  except _StartupSignal as e:
    print(f"gla-train: stopped by signal {e.args[0]} during start-up, before training; nothing was lost: run "
          "the same command to resume", file=sys.stderr)
    code = EXIT_SIGNAL
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  return code


def threading_is_main() -> bool:
  import threading  # pylint: disable=g-import-not-at-top
  return threading.current_thread() is threading.main_thread()


def _fail(message: str, hard: bool) -> int:
  print(f"gla-train: error: {message}", file=sys.stderr)
  if hard:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_FAILED)  # pylint: disable=protected-access
  return EXIT_FAILED


class _Never(Exception):
  pass


def _main(argv, startup_handlers) -> int:
  CheckpointError = _Never  # pylint: disable=invalid-name  (bound to the real class once imported)
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  from train.config import ConfigError, available_configs  # pylint: disable=g-import-not-at-top
  if args.list:
    print("configs:", ", ".join(available_configs()))
    return 0
  try:
    config = resolve_config(args)
    if args.print_config:
      _print_config(config)
      return 0
    check_distributed_args(args)
    from train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    mesh_lib.init_distributed(args.coordinator_address, args.num_processes, args.process_id)
    from pallas_kernels.common.dispatch import current_platform  # pylint: disable=g-import-not-at-top
    from train.config import check_platform  # pylint: disable=g-import-not-at-top
    check_platform(config, current_platform())
    from train.checkpoint import CheckpointError, quiet_orbax_tracebacks  # pylint: disable=g-import-not-at-top
    quiet_orbax_tracebacks()
    from train.trainer import Trainer, TrainingError  # pylint: disable=g-import-not-at-top
    trainer = Trainer(config)
    import jax  # pylint: disable=g-import-not-at-top
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)
    say(f"{config.name}: {type(config.model).__name__} with {trainer.num_params / 1e6:.2f}M params, "
        f"{mesh_lib.describe(trainer.mesh)}")
    say(f"data {config.data.kind}: batch {config.data.batch_size} x {config.data.seq_len} tokens, "
        f"{config.steps} steps; run dir {config.run_dir}")
    t0 = time.perf_counter()
    trainer.initialize()
  except ConfigError as e:
    print(f"gla-train: error: {e}", file=sys.stderr)
    return EXIT_CONFIG
  except CheckpointError as e:
    return _fail(str(e), hard=argv is None)
  if trainer.resumed_from is not None:
    say(f"resumed from the checkpoint at step {trainer.resumed_from}")
  try:
    summary = trainer.run()  # its StopSignal turns signals into "save and stop" while it trains
    for s, h in startup_handlers.items():
      signal.signal(s, h)
    trainer.close()
  except (CheckpointError, TrainingError) as e:
    return _fail(str(e), hard=argv is None)
  minutes = (time.perf_counter() - t0) / 60
  say(f"checkpoint: {summary['checkpoint']}")
  if summary["plot"]:
    say(f"curves: {summary['plot']}   logs: {config.run_dir}/metrics.jsonl (TensorBoard: {config.run_dir}/tb)")
  if summary["skipped"]:
    say(f"non-finite steps rejected: {summary['skipped']}")
  if summary["stopped_by_signal"]:
    say(f"stopped by signal at step {summary['step']} after {minutes:.1f} min; run the same command to resume")
    return EXIT_SIGNAL
  ev = summary["final_eval"]
  if ev is not None:
    what = "query-position" if config.data.kind == "mqar" else "next-token"
    say(f"final eval (step {summary['step']}, {ev['tokens']:.0f} scored tokens): loss {ev['loss']:.4f}  "
        f"perplexity {ev['perplexity']:.3f}  {what} accuracy {ev['accuracy']:.4f}   [{minutes:.1f} min]")
  return 0


def _print_config(config, indent: str = "") -> None:
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if dataclasses.is_dataclass(value):
      print(f"{indent}{f.name}: {type(value).__name__}")
      _print_config(value, indent + "  ")
    else:
      print(f"{indent}{f.name} = {value!r}")


if __name__ == "__main__":
  sys.exit(main())
