"""Small-LM comparison: GLA, Transformer++, RetNet, Mamba-2, Based and a GLA+SWA hybrid of about equal
parameter count, trained by the repo's Trainer on the same tokens of the stdlib corpus (BPE).

    python -m train.zoology_lm --out runs/zoology_lm                       # ~20M params each, 2000 steps
    python -m train.zoology_lm --kinds gla,attention --steps 200 --out runs/zoology_lm
    python -m train.data.tokens export --corpus stdlib --tokenizer bpe --bpe-vocab 4096 \
        --out runs/tokens/stdlib_bpe4096.npz                               # where tfds + grain are installed
    python -m train.zoology_lm --tokens runs/tokens/stdlib_bpe4096.npz --workers 3 --out runs/zoology_lm
    python -m train.zoology_lm --report-only --out runs/zoology_lm         # the table from the run dirs

Shapes (`match_shape`): for each kind, widths are tried in order of closeness to `--width` (384), each with
the sweep's head rule (heads of 64, train/zoology.py `model_config`, the configs' own short-conv setting);
parameters are affine in depth, so two counts give the depth nearest `--target-params`; the first width whose
count is within `--tolerance` (5 %) wins. Counts include the (tied) embeddings. The hybrid is GLA with
sliding-window attention (window `--window`) at every odd layer.

Data: every model reads the same batches (same corpus, BPE, seq_len, batch, shuffle seed: the text source is
deterministic) and is evaluated on the same validation batches. `--tokens PATH` reads a token file of
`python -m train.data.tokens export` instead (numpy only: no tensorflow_datasets or grain; the same
documents, split and BPE as the text pipeline; the model vocabulary comes from the file's metadata;
train/data/tokens.py). The table names the data source.

Outputs in `--out`: one trainer run directory per kind (metrics.jsonl, lm_row.json once trained, lm_error.txt
if it failed; checkpoints: a second call resumes), lm_results.md (the eval perplexity table), lm_results.json
and lm_curves.png (train loss and eval perplexity vs step). `--report-only` rebuilds those three from the run
directories (several processes can each train some kinds into one --out); `--workers N` runs N child
processes, each training its share of the kinds with XLA_PYTHON_CLIENT_MEM_FRACTION 0.9 / N, then writes the
report: a kind that fails is listed under the table and the others' rows stay in it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import traceback
from typing import Any

from train.zoology import model_config, model_facts, num_heads_for

# name → (registry kind of its layers, what the table calls it)
MODELS = {
    "gla": ("gla", "GLA"),
    "attention": ("attention", "Transformer++"),
    "retnet": ("retnet", "RetNet"),
    "mamba2": ("mamba2", "Mamba-2"),
    "based": ("based", "Based"),
    "gla_swa": ("gla", "GLA + SWA hybrid"),
}
WIDTHS = (64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 768)
ROW_FILE, ERROR_FILE = "lm_row.json", "lm_error.txt"  # in each kind's run directory
# a row's run settings: the table's header states them (and flags rows that differ)
SETTINGS = ("steps", "batch_size", "seq_len", "lr", "target_params", "eval_batches", "dtype", "data")


def lm_config(name: str, d_model: int, num_layers: int, *, vocab_size: int, seq_len: int, window: int,
              dtype: str = "float32"):
  """The model `name` (MODELS) at width `d_model` and depth `num_layers`."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
  kind = MODELS[name][0]
  extra = {}
  if name == "gla_swa":
    odd = [i for i in range(num_layers) if i % 2 == 1]
    if odd:
      extra["attn"] = {"layers": odd, "num_heads": num_heads_for(d_model), "window_size": window}
  return model_config(kind, d_model, vocab_size=vocab_size, num_layers=num_layers, seq_len=seq_len,
                      dtype=dtype, short_conv=None, **extra)


def match_shape(name: str, target: int, *, vocab_size: int, seq_len: int, window: int, width: int = 384,
                tolerance: float = 0.05) -> dict[str, Any]:
  """{"d_model", "num_layers", "params", "error"} of `name` nearest `target` params (module doc)."""
  best = None
  for d in sorted(WIDTHS, key=lambda w: (abs(w - width), w)):
    count = lambda L: model_facts(lm_config(name, d, L, vocab_size=vocab_size, seq_len=seq_len, window=window),
                                  seq_len)["params"]
    p2, p4 = count(2), count(4)
    per_layer = (p4 - p2) / 2
    base = p2 - 2 * per_layer
    L = max(2, int(round((target - base) / per_layer)))
    p = count(L) if L not in (2, 4) else (p2 if L == 2 else p4)
    cand = {"d_model": d, "num_layers": L, "params": p, "error": (p - target) / target}
    if best is None or abs(cand["error"]) < abs(best["error"]):
      best = cand
    if abs(cand["error"]) <= tolerance:
      return cand
  return best


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m train.zoology_lm", description=__doc__.split("\n")[0])
  p.add_argument("--kinds", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--out", default="runs/zoology_lm")
  p.add_argument("--target-params", type=float, default=20e6)
  p.add_argument("--tolerance", type=float, default=0.05, help="relative parameter-count tolerance")
  p.add_argument("--width", type=int, default=384, help="preferred d_model (widths are tried nearest first)")
  p.add_argument("--window", type=int, default=128, help="the hybrid's sliding window")
  p.add_argument("--seq-len", type=int, default=512)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--bpe-vocab", type=int, default=4096, help="the text pipeline's BPE (--tokens: the file's)")
  p.add_argument("--corpus", default="stdlib", help="stdlib, or a directory of *.py files (text pipeline)")
  p.add_argument("--tokens", default="", help="a token file (python -m train.data.tokens export) instead of "
                                              "the text pipeline")
  p.add_argument("--eval-every", type=int, default=250)
  p.add_argument("--eval-batches", type=int, default=16)
  p.add_argument("--log-every", type=int, default=25)
  p.add_argument("--bf16", action="store_true", help="bfloat16 compute")
  p.add_argument("--report-only", action="store_true", help="rebuild the table and plot from --out, train nothing")
  p.add_argument("--workers", type=int, default=1, help="child processes, each training its share of the kinds")
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "i/N", set by --workers: no report
  return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
  """The CLI; returns {"rows": [per model], "missing": {name: why}, "failed": {name: why}, "stopped": [names],
  "table", "plot"}. Exit status: 0 done, 1 a model failed, 3 stopped by a signal (a rerun resumes)."""
  a = parse_args(argv)
  names = [k.strip() for k in a.kinds.split(",") if k.strip()]
  for n in names:
    if n not in MODELS:
      raise SystemExit(f"--kinds: unknown model {n!r}; expected some of {', '.join(MODELS)}")
  if a.workers < 1:
    raise SystemExit(f"--workers must be >= 1, got {a.workers}")
  os.makedirs(a.out, exist_ok=True)
  failed: dict[str, str] = {}
  if not a.report_only:
    data = data_source(a)
    if a.workers > 1 and a.worker is None and len(names) > 1:
      failed = _run_workers(a, sys.argv[1:] if argv is None else list(argv), names)
    else:
      failed = train_kinds(a, names, data)
    if a.worker is not None:
      return {"failed": failed}
  return report(a.out, names, failed)


def data_source(a: argparse.Namespace) -> dict[str, Any]:
  """{"config": DataConfig, "vocab": the models' vocab_size, "label": what the table calls the data}."""
  from train.config import DataConfig, TextConfig, TokensConfig  # pylint: disable=g-import-not-at-top
  if a.tokens:
    from train.data import tokens  # pylint: disable=g-import-not-at-top
    try:
      tf = tokens.load(a.tokens, arg="--tokens")
      tokens.check(tf, seq_len=a.seq_len, splits=("train", "validation"), arg="--tokens", seq_arg="--seq-len")
    except ValueError as e:
      raise SystemExit(f"zoology_lm: error: {e}") from e
    m, vocab = tf.meta, tf.model_vocab_size
    label = (f"token file `{os.path.basename(tf.path)}` (corpus `{m.get('corpus')}` {m.get('corpus_hash')}, "
             f"{m.get('tokenizer')} {vocab}, {tf.streams['train'].size:,} train tokens)")
    return {"config": DataConfig(kind="tokens", batch_size=a.batch_size, seq_len=a.seq_len,
                                 tokens=TokensConfig(path=tf.path)), "vocab": vocab, "label": label}
  text = TextConfig(corpus=a.corpus, tokenizer="bpe", bpe_vocab_size=a.bpe_vocab,
                    data_dir=os.path.join(a.out, "data"))
  return {"config": DataConfig(kind="text", batch_size=a.batch_size, seq_len=a.seq_len, text=text),
          "vocab": a.bpe_vocab, "label": f"text pipeline (corpus `{a.corpus}`, BPE {a.bpe_vocab})"}


def train_kinds(a: argparse.Namespace, names: list[str], data: dict[str, Any]) -> dict[str, str]:
  """Trains `names` one after another; each writes <out>/<name>/lm_row.json, or lm_error.txt when it fails
  (the others go on). Returns {name: one-line failure}. A SIGTERM finishes the current model (the trainer
  saves a checkpoint) and starts no new one; a rerun resumes."""
  shapes = {}
  for n in names:
    shapes[n] = s = match_shape(n, int(a.target_params), vocab_size=data["vocab"], seq_len=a.seq_len,
                                window=a.window, width=a.width, tolerance=a.tolerance)
    flag = "" if abs(s["error"]) <= a.tolerance else f"  (outside ±{a.tolerance:.0%})"
    print(f"{n:10s} d_model {s['d_model']:4d} layers {s['num_layers']:3d} params {s['params']:,} "
          f"({s['error']:+.1%} vs {int(a.target_params):,}){flag}", flush=True)
  failed: dict[str, str] = {}
  with _StopFlag() as stop:
    for n in names:
      if stop.requested:
        break
      run_dir = os.path.join(a.out, n)
      os.makedirs(run_dir, exist_ok=True)
      for f in (ROW_FILE, ERROR_FILE):
        if os.path.exists(os.path.join(run_dir, f)):
          os.remove(os.path.join(run_dir, f))
      try:
        row = train_one(a, n, shapes[n], data, stop)
      except Exception as e:  # pylint: disable=broad-except  (reported; the other kinds still train)
        failed[n] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        with open(os.path.join(run_dir, ERROR_FILE), "w", encoding="utf-8") as f:
          f.write(traceback.format_exc())
        print(f"zoology_lm: {n} failed: {failed[n]} (traceback in {run_dir}/{ERROR_FILE})", file=sys.stderr,
              flush=True)
        continue
      if row is not None:
        _write_json(os.path.join(run_dir, ROW_FILE), row)
      if row is None or not row["complete"]:
        break  # stopped by a signal
  return failed


def train_one(a: argparse.Namespace, n: str, shape: dict[str, Any], data: dict[str, Any], stop) -> dict | None:
  """Trains (or resumes) model `n`; its row, or None when a signal came before it started."""
  from train.config import CheckpointConfig, OptimConfig, TrainConfig  # pylint: disable=g-import-not-at-top
  from train.trainer import Trainer  # pylint: disable=g-import-not-at-top
  dtype = "bfloat16" if a.bf16 else "float32"
  model = lm_config(n, shape["d_model"], shape["num_layers"], vocab_size=data["vocab"], seq_len=a.seq_len,
                    window=a.window, dtype=dtype)
  config = TrainConfig(
      name=f"zoology_lm_{n}", model=model, steps=a.steps,
      optim=OptimConfig(lr=a.lr, warmup_steps=min(100, a.steps // 10)), data=data["config"],
      checkpoint=CheckpointConfig(every=0, keep=1, async_save=False),
      eval_every=a.eval_every, eval_batches=a.eval_batches, log_every=a.log_every,
      workdir=os.path.join(a.out, n), progress=not a.quiet, tensorboard=False, plot=False)
  trainer = Trainer(config)
  try:
    if stop.requested:
      return None
    summary = trainer.run()
  finally:
    trainer.close()
  ev = summary["final_eval"] or {}
  return {"name": n, "model": MODELS[n][1], **shape, "step": summary["step"],
          "complete": summary["step"] >= a.steps, "steps": a.steps, "batch_size": a.batch_size,
          "seq_len": a.seq_len, "lr": a.lr, "target_params": a.target_params, "eval_batches": a.eval_batches,
          "dtype": dtype, "data": data["label"], "eval_loss": ev.get("loss"),
          "eval_perplexity": ev.get("perplexity"), "eval_accuracy": ev.get("accuracy")}


class _StopFlag:
  """SIGTERM → `requested` (outside trainer.run, whose own handler saves a checkpoint and stops)."""

  def __init__(self):
    self.requested, self._previous = False, None

  def __enter__(self):
    if sys.platform != "win32" and _in_main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _in_main_thread() -> bool:
  import threading  # pylint: disable=g-import-not-at-top
  return threading.current_thread() is threading.main_thread()


def _run_workers(a: argparse.Namespace, argv: list[str], names: list[str]) -> dict[str, str]:
  """`--workers N`: N children of this command, child i training names[i::N] (later flags win in argparse),
  each with 0.9 / N of the accelerator memory unless XLA_PYTHON_CLIENT_MEM_FRACTION is set. The text
  pipeline's dataset and BPE are built here first (children would race on the cache). A SIGTERM is passed on
  (each child saves and stops). Returns {name: why} for the kinds of failed children that left no row."""
  if not a.tokens:
    from train.config import TextConfig  # pylint: disable=g-import-not-at-top
    from train.data import text  # pylint: disable=g-import-not-at-top
    d = TextConfig()
    builder = text.build_dataset(a.corpus, d.glob, os.path.join(a.out, "data"), d.validation_every)
    text.make_tokenizer("bpe", builder, a.bpe_vocab, d.text_key)
  n = min(a.workers, len(names))
  groups = [names[i::n] for i in range(n)]
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / n:.3f}")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(x for x in (repo, env.get("PYTHONPATH", "")) if x)
  base = [sys.executable, "-m", "train.zoology_lm", *argv, "--quiet", "--workers", "1"]
  print(f"zoology_lm: {n} workers: " + "; ".join(",".join(g) for g in groups), flush=True)
  procs = [subprocess.Popen([*base, "--kinds", ",".join(g), "--worker", f"{i}/{n}"], env=env)
           for i, g in enumerate(groups)]

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  previous = signal.signal(signal.SIGTERM, forward) if _in_main_thread() else None
  try:
    for p in procs:
      p.wait()
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  failed = {}
  for g, p in zip(groups, procs):
    if p.returncode != 0:
      for name in g:
        err = os.path.join(a.out, name, ERROR_FILE)
        if os.path.exists(err):
          failed[name] = _last_line(err)
        elif not os.path.exists(os.path.join(a.out, name, ROW_FILE)):
          failed[name] = f"its worker ({','.join(g)}) exited with code {p.returncode}"
  return failed


# ------------------------------------------------------------------------------------------------ report


def report(out: str, names: list[str], failed: dict[str, str] | None = None) -> dict[str, Any]:
  """lm_results.md / .json and lm_curves.png from the run directories <out>/<name> of `names`."""
  failed = dict(failed or {})
  rows, missing = [], {}
  for n in names:
    row = _read_json(os.path.join(out, n, ROW_FILE))
    if row is None:
      err = os.path.join(out, n, ERROR_FILE)
      if n in failed:
        missing[n] = f"failed: {failed[n]}"
      else:
        missing[n] = f"failed: {_last_line(err)}" if os.path.exists(err) else "not run"
      continue
    curves = _curves(os.path.join(out, n, "metrics.jsonl"))
    tok_s = [r["tokens_per_s"] for r in curves["train"] if "tokens_per_s" in r]
    rows.append({**row, "tokens_per_s": tok_s[-1] if tok_s else None, "curves": curves})
  table = os.path.join(out, "lm_results.md")
  with open(table, "w", encoding="utf-8") as f:
    f.write(markdown(rows, missing))
  _write_json(os.path.join(out, "lm_results.json"),
              [{k: v for k, v in r.items() if k != "curves"} for r in rows]
              + [{"name": n, "missing": why} for n, why in missing.items()])
  plot = plot_curves(rows, os.path.join(out, "lm_curves.png")) if rows else None
  print(open(table, encoding="utf-8").read(), flush=True)
  return {"rows": rows, "missing": missing, "failed": {n: w for n, w in missing.items() if w.startswith("failed")},
          "stopped": [r["name"] for r in rows if not r.get("complete", True)], "table": table, "plot": plot}


def _read_json(path: str) -> dict | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _last_line(path: str) -> str:
  lines = [x.strip() for x in open(path, encoding="utf-8", errors="replace").read().splitlines() if x.strip()]
  return lines[-1] if lines else "?"


def _curves(path: str) -> dict[str, list[dict]]:
  out = {"train": [], "eval": []}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          r = json.loads(line)
        except ValueError:
          continue
        out.setdefault(r.get("split"), []).append(r)
  return out


def markdown(rows: list[dict], missing: dict[str, str] | None = None) -> str:
  head = ["# Small-LM comparison (train/zoology_lm.py)", ""]
  if rows:
    r0 = rows[0]
    head += [f"{r0['steps']} steps × {r0['batch_size']} × {r0['seq_len']} tokens, {r0.get('dtype', 'float32')}, "
             f"lr {r0['lr']:g}, target {r0['target_params'] / 1e6:g}M params; perplexity on the validation split "
             f"({r0['eval_batches']} batches).", "", f"Data: {r0['data']}.", ""]
    differ = [k for k in SETTINGS if len({json.dumps(r.get(k)) for r in rows}) > 1]
    if differ:
      head += [f"**Rows differ in {', '.join(differ)}**: the header states {r0['model']}'s settings.", ""]
  head += ["| model | d_model | layers | params | vs target | eval loss | eval ppl | tokens/s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  fmt = lambda x, f: "—" if x is None else format(x, f)
  for r in rows:
    name = r["model"] if r.get("complete", True) else f"{r['model']} (stopped at step {r['step']})"
    head.append(f"| {name} | {r['d_model']} | {r['num_layers']} | {r['params'] / 1e6:.2f}M | "
                f"{r['error']:+.1%} | {fmt(r['eval_loss'], '.4f')} | {fmt(r['eval_perplexity'], '.2f')} | "
                f"{fmt(r['tokens_per_s'], ',.0f')} |")
  if missing:
    head += ["", "Not in the table: " + "; ".join(f"{MODELS[n][1]} ({why})" for n, why in missing.items()) + "."]
  return "\n".join(head) + "\n"


def plot_curves(rows: list[dict], path: str) -> str | None:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  for r in rows:
    tr, ev = r["curves"]["train"], r["curves"]["eval"]
    ax1.plot([x["step"] for x in tr], [x["loss"] for x in tr], label=r["model"])
    ax2.plot([x["step"] for x in ev], [x["perplexity"] for x in ev], marker="o", ms=3, label=r["model"])
  ax1.set(xlabel="step", ylabel="train loss", title="train loss")
  ax2.set(xlabel="step", ylabel="eval perplexity", title="validation perplexity", yscale="log")
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


if __name__ == "__main__":
  _result = main()
  sys.exit(1 if _result["failed"] else 3 if _result.get("stopped") else 0)  # 3: stopped by a signal, rerun resumes
