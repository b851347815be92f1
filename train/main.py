"""Command line: `python -m train --config configs/mqar_gla.py --set key=value ...` (console script: gla-train).

    python -m train                                       # the default job: configs/tiny_text_gla.py
    python -m train --config configs/tiny_text_gla.py --set steps=200 optim.lr=3e-3
    python -m train --config gla_340m --set mesh.fsdp=8 data.batch_size=64
    python -m train --list                                # the configs and their fields
    python -m train --config mqar_gla --print_config      # the resolved config, then exit

Multi-host: start one process per host with `--coordinator_address host:port --num_processes N
--process_id i` (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables; on TPU pods
`--coordinator_address auto`). Exit status: 0 done, 2 bad config or override, 3 stopped by a signal
(a checkpoint was written; run the same command again to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

EXIT_CONFIG, EXIT_SIGNAL = 2, 3


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


def main(argv=None) -> int:
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
    from train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    mesh_lib.init_distributed(args.coordinator_address, args.num_processes, args.process_id)
    from train.trainer import Trainer  # pylint: disable=g-import-not-at-top
    trainer = Trainer(config)
  except ConfigError as e:
    print(f"gla-train: error: {e}", file=sys.stderr)
    return EXIT_CONFIG
  import jax  # pylint: disable=g-import-not-at-top
  lead = jax.process_index() == 0
  say = print if lead else (lambda *a, **k: None)
  from train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  say(f"{config.name}: {type(config.model).__name__} with {trainer.num_params / 1e6:.2f}M params, "
      f"{mesh_lib.describe(trainer.mesh)}")
  say(f"data {config.data.kind}: batch {config.data.batch_size} x {config.data.seq_len} tokens, "
      f"{config.steps} steps; run dir {config.run_dir}")
  t0 = time.perf_counter()
  trainer.initialize()
  if trainer.resumed_from is not None:
    say(f"resumed from the checkpoint at step {trainer.resumed_from}")
  summary = trainer.run()
  trainer.close()
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
