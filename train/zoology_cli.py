"""The MQAR sweep's command line (`python -m train.zoology`): the grid, resume, parallel workers, the report.

Groups are (kind, d_model, cell) with their (lr, seed) runs; results.jsonl holds one row per finished run
and a run already there is skipped, so an interrupted or time-budgeted sweep resumes with the same command.
`--workers N` runs N processes on the one device, each claiming the next free group (tiny models leave a
GPU mostly idle and their compiles are CPU-bound, so several at once finish the grid sooner; each worker
gets 0.9 / N of the accelerator memory). `--time-budget S` starts no new group after S seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from gla_jax.layers.mixers import registry
from train.zoology import CELLS, DIMS, LRS, Protocol, mqar_set, train_group


def run_key(row: dict[str, Any]) -> tuple:
  return (row["kind"], int(row["d_model"]), int(row["seq_len"]), int(row["num_kv_pairs"]),
          f"{float(row['lr']):.6g}", int(row["seed"]), row["protocol"])


def load_rows(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:  # a line cut short by a kill
        continue
  return rows


def _cells(text: str) -> list[tuple[int, int]]:
  out = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    try:
      T, N = (int(x) for x in item.lower().split("x"))
    except ValueError:
      raise SystemExit(f"--cells {text!r}: expected seq_lenxpairs items, e.g. 256x16,512x64") from None
    if T < 4 * N:
      raise SystemExit(f"--cells {item}: seq_len must be >= 4 * num_kv_pairs")
    out.append((T, N))
  return out


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m train.zoology", description="Zoology's MQAR sweep (train/zoology.py)",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--kinds", default=",".join(registry.KIND_NAMES), help="comma list of mixer kinds")
  p.add_argument("--dims", default=",".join(map(str, DIMS)), help="comma list of d_model")
  p.add_argument("--cells", default=",".join(f"{t}x{n}" for t, n in CELLS), help="seq_lenxpairs,...")
  p.add_argument("--lrs", default=",".join(f"{x:.6g}" for x in LRS), help="comma list of learning rates")
  p.add_argument("--seeds", default="0", help="comma list of init seeds")
  p.add_argument("--epochs", type=int, default=64, help="passes over the training set (Zoology: 64)")
  p.add_argument("--out", default="runs/zoology", help="results.jsonl, results.md, plots, data cache")
  p.add_argument("--vmap-lrs", action="store_true", help="train all LRs x seeds of a group at once (vmap)")
  p.add_argument("--jrt", action="store_true", help="just-read-twice: the context twice before the queries")
  p.add_argument("--bf16", action="store_true", help="bfloat16 compute (params and optimizer in float32)")
  p.add_argument("--train-examples", type=int, default=100_000)
  p.add_argument("--test-examples", type=int, default=3_000)
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--batch-size", type=int, default=0, help="0: Zoology's rule by seq_len")
  p.add_argument("--random-filler", action="store_true", help="random filler tokens instead of 0")
  p.add_argument("--report-only", action="store_true", help="rewrite results.md and the plots, train nothing")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--impl", default=None, help="the models' attn_impl (default: the preset's, auto)")
  p.add_argument("--workers", type=int, default=1,
                 help="processes sharing the device (each trains its own groups; compiles overlap)")
  p.add_argument("--time-budget", type=float, default=0.0,
                 help="seconds: start no new group after this (0: none); a rerun resumes")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "i/N", set by --workers
  p.add_argument("--claims", default=None, help=argparse.SUPPRESS)
  p.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def _todo(a, proto) -> tuple[list, int]:
  """The groups (kind, d_model, cell, runs) still to train, largest first, and the count of runs done."""
  kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
  for k in kinds:
    registry.kind(k)  # ValueError naming the kinds
  dims = [int(x) for x in a.dims.split(",") if x.strip()]
  cells, lrs = _cells(a.cells), [float(x) for x in a.lrs.split(",") if x.strip()]
  seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
  done = {run_key(r) for r in load_rows(os.path.join(a.out, "results.jsonl"))}
  todo, skipped = [], 0
  for kind in kinds:
    for d in dims:
      for cell in cells:
        runs = [(lr, s) for lr in lrs for s in seeds
                if run_key({"kind": kind, "d_model": d, "seq_len": cell[0], "num_kv_pairs": cell[1], "lr": lr,
                            "seed": s, "protocol": proto.tag()}) not in done]
        skipped += len(lrs) * len(seeds) - len(runs)
        if runs:
          todo.append((kind, d, cell, runs))
  todo.sort(key=lambda g: (-g[2][0] * g[1], g[0]))  # the longest groups first: workers finish together
  return todo, skipped


def _append_rows(path: str, rows: list[dict[str, Any]]) -> None:
  """Appends JSONL rows under an exclusive lock (parallel workers share the file)."""
  import fcntl  # pylint: disable=g-import-not-at-top
  with open(path, "a", encoding="utf-8") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.write("".join(json.dumps(row) + "\n" for row in rows))
    f.flush()
    fcntl.flock(f, fcntl.LOCK_UN)


def _claim(claims: str | None, group) -> bool:
  """True when this worker takes `group` (first come; every worker walks the same list)."""
  if not claims:
    return True
  kind, d, (T, N), _ = group
  try:
    os.close(os.open(os.path.join(claims, f"{kind}-{d}-{T}x{N}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    return True
  except FileExistsError:
    return False


def _protocol(a) -> Protocol:
  return Protocol(epochs=a.epochs, jrt=a.jrt, vocab_size=a.vocab, train_examples=a.train_examples,
                  test_examples=a.test_examples, random_filler=a.random_filler,
                  dtype="bfloat16" if a.bf16 else "float32", batch_size=a.batch_size)


def main(argv=None) -> dict[str, Any]:
  """The CLI; returns {"trained": runs trained now, "skipped": runs found done, "runs_per_min", paths}."""
  from train import zoology_report  # pylint: disable=g-import-not-at-top
  a = parse_args(argv)
  if a.workers < 1:
    raise SystemExit(f"--workers must be >= 1, got {a.workers}")
  proto = _protocol(a)
  os.makedirs(a.out, exist_ok=True)
  path = os.path.join(a.out, "results.jsonl")
  todo, skipped = _todo(a, proto)
  if a.report_only:
    todo = []
  deadline = a.deadline or (time.time() + a.time_budget if a.time_budget > 0 else None)
  t0, rows_before = time.perf_counter(), len(load_rows(path))
  if a.workers > 1 and a.worker is None and todo:
    _run_workers(a, argv if argv is not None else sys.argv[1:], proto, todo, path, deadline)
  elif todo:
    _run_groups(a, proto, todo, path, deadline, quiet=a.quiet or a.worker is not None)
  if a.worker is not None:  # a worker of a parallel sweep: the parent writes the report
    return {"trained": len(load_rows(path)) - rows_before, "skipped": skipped}
  minutes = (time.perf_counter() - t0) / 60
  rows = load_rows(path)
  trained = len(rows) - rows_before
  left = sum(len(r) for *_, r in _todo(a, proto)[0]) if todo else 0
  rpm = trained / minutes if trained and minutes > 0 else 0.0
  report = zoology_report.write_report(a.out, rows)
  device = rows[-1].get("device", "?") if rows else "?"
  print(f"zoology: {trained} runs trained, {skipped} already done, {left} left"
        f"{' (time budget reached)' if left else ''}; {rpm:.2f} runs/min on {device} with {a.workers} "
        f"worker(s); table {report['table']}")
  return {"trained": trained, "skipped": skipped, "left": left, "runs_per_min": rpm, **report}


def _run_groups(a, proto, todo, path, deadline, *, quiet: bool) -> None:
  """Trains the groups in order (claiming each one when a worker of a parallel sweep)."""
  total_runs = sum(len(r) for *_, r in todo)
  bar = _progress(not quiet, total_runs * proto.epochs)
  tag = f"[worker {a.worker}] " if a.worker is not None else ""
  for group in todo:
    if deadline is not None and time.time() > deadline:
      print(f"{tag}time budget reached: groups from {group[0]} d={group[1]} {group[2][0]}x{group[2][1]} on "
            "are left for a later run", flush=True)
      break
    if not _claim(a.claims, group):
      continue
    kind, d, cell, runs = group
    bar.set_description(f"{kind} d={d} {cell[0]}x{cell[1]}")
    step = lambda e, n=(len(runs) if a.vmap_lrs else 1): bar.update(n)  # run-epochs done
    rows = train_group(kind, d, cell, runs, proto, vmapped=a.vmap_lrs, cache_dir=os.path.join(a.out, "data"),
                       on_epoch=step, impl=a.impl)
    _append_rows(path, rows)
    best = max(rows, key=lambda r: r["accuracy"])
    bar.set_postfix(acc=f"{best['accuracy']:.3f}", refresh=False)
    if quiet:
      print(f"{tag}{kind} d={d} {cell[0]}x{cell[1]}: best accuracy {best['accuracy']:.3f} at lr "
            f"{best['lr']:.2g}; {rows[0]['group_seconds']:.1f} s for {len(rows)} runs (first epoch "
            f"{rows[0]['first_epoch_seconds']:.1f} s)", flush=True)
  bar.close()


def _run_workers(a, argv, proto, todo, path, deadline) -> None:
  """`--workers N`: N processes of this sweep share the groups (each claims the next free one), so one
  device trains several groups at once and their compiles overlap. The data sets are made here first;
  each worker gets 0.9 / N of the accelerator memory unless XLA_PYTHON_CLIENT_MEM_FRACTION is set."""
  import shutil  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  cache = os.path.join(a.out, "data")
  for T, N in sorted({g[2] for g in todo}):
    mqar_set(T, N, proto.train_examples, "train", proto, cache)
    mqar_set(T, N, proto.test_examples, "eval", proto, cache)
  claims = tempfile.mkdtemp(prefix=".claims-", dir=a.out)
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / a.workers:.3f}")
  base = [sys.executable, "-m", "train.zoology", *argv, "--claims", claims, "--quiet"]
  if deadline is not None:
    base += ["--deadline", repr(deadline)]
  procs = [subprocess.Popen([*base, "--worker", f"{i}/{a.workers}"], env=env) for i in range(a.workers)]
  total = sum(len(r) for *_, r in todo)
  bar, seen = _progress(not a.quiet, total), len(load_rows(path))
  try:
    while any(p.poll() is None for p in procs):
      time.sleep(2.0)
      now = len(load_rows(path))
      bar.update(now - seen)
      seen = now
  finally:
    for p in procs:
      if p.poll() is None:
        p.terminate()
    bar.close()
    shutil.rmtree(claims, ignore_errors=True)
  failed = [i for i, p in enumerate(procs) if p.returncode != 0]
  if failed:
    print(f"zoology: worker(s) {failed} failed (exit codes {[procs[i].returncode for i in failed]}); the "
          "finished runs are in results.jsonl and a rerun resumes", file=sys.stderr, flush=True)


def _progress(enabled: bool, total: int):
  try:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    enabled = False
  if enabled:
    return tqdm(total=total, unit="run-epoch", dynamic_ncols=True, file=sys.stderr)

  class _NoBar:
    def update(self, n): pass
    def set_description(self, s): pass
    def set_postfix(self, **kw): pass
    def close(self): pass
  return _NoBar()
