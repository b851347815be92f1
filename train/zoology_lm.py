"""Small-LM comparison: GLA, Transformer++, RetNet, Mamba-2, Based and a GLA+SWA hybrid of about equal
parameter count, trained by the repo's Trainer on the same tokens of the stdlib corpus (BPE).

    python -m train.zoology_lm --out runs/zoology_lm                       # ~20M params each, 2000 steps
    python -m train.zoology_lm --kinds gla,attention --steps 200 --out runs/zoology_lm

Shapes (`match_shape`): for each kind, widths are tried in order of closeness to `--width` (384), each with
the sweep's head rule (heads of 64, train/zoology.py `model_config`, the configs' own short-conv setting);
parameters are affine in depth, so two counts give the depth nearest `--target-params`; the first width whose
count is within `--tolerance` (5 %) wins. Counts include the (tied) embeddings. The hybrid is GLA with
sliding-window attention (window `--window`) at every odd layer.

Data: every model reads the same batches (same corpus, BPE, seq_len, batch, shuffle seed: the text source is
deterministic) and is evaluated on the same validation batches. Outputs in `--out`: one trainer run
directory per kind (metrics.jsonl, checkpoints: a second call resumes), lm_results.md (the eval perplexity
table), lm_results.json and lm_curves.png (train loss and eval perplexity vs step).
"""

from __future__ import annotations

import argparse
import json
import os
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
  p.add_argument("--bpe-vocab", type=int, default=4096)
  p.add_argument("--corpus", default="stdlib", help="stdlib, or a directory of *.py files")
  p.add_argument("--eval-every", type=int, default=250)
  p.add_argument("--eval-batches", type=int, default=16)
  p.add_argument("--log-every", type=int, default=25)
  p.add_argument("--bf16", action="store_true", help="bfloat16 compute")
  p.add_argument("--quiet", action="store_true")
  return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
  """The CLI; returns {"rows": [per model], "table": path, "plot": path or None}."""
  from train.config import CheckpointConfig, DataConfig, OptimConfig, TextConfig, TrainConfig  # pylint: disable=g-import-not-at-top
  from train.trainer import Trainer  # pylint: disable=g-import-not-at-top
  a = parse_args(argv)
  names = [k.strip() for k in a.kinds.split(",") if k.strip()]
  for n in names:
    if n not in MODELS:
      raise SystemExit(f"--kinds: unknown model {n!r}; expected some of {', '.join(MODELS)}")
  os.makedirs(a.out, exist_ok=True)
  dtype = "bfloat16" if a.bf16 else "float32"
  shapes = {}
  for n in names:
    shapes[n] = match_shape(n, int(a.target_params), vocab_size=a.bpe_vocab, seq_len=a.seq_len, window=a.window,
                            width=a.width, tolerance=a.tolerance)
    s = shapes[n]
    flag = "" if abs(s["error"]) <= a.tolerance else f"  (outside ±{a.tolerance:.0%})"
    print(f"{n:10s} d_model {s['d_model']:4d} layers {s['num_layers']:3d} params {s['params']:,} "
          f"({s['error']:+.1%} vs {int(a.target_params):,}){flag}")
  rows = []
  for n in names:
    s = shapes[n]
    model = lm_config(n, s["d_model"], s["num_layers"], vocab_size=a.bpe_vocab, seq_len=a.seq_len,
                      window=a.window, dtype=dtype)
    config = TrainConfig(
        name=f"zoology_lm_{n}", model=model, steps=a.steps,
        optim=OptimConfig(lr=a.lr, warmup_steps=min(100, a.steps // 10)),
        data=DataConfig(kind="text", batch_size=a.batch_size, seq_len=a.seq_len,
                        text=TextConfig(corpus=a.corpus, tokenizer="bpe", bpe_vocab_size=a.bpe_vocab,
                                        data_dir=os.path.join(a.out, "data"))),
        checkpoint=CheckpointConfig(every=0, keep=1, async_save=False),
        eval_every=a.eval_every, eval_batches=a.eval_batches, log_every=a.log_every,
        workdir=os.path.join(a.out, n), progress=not a.quiet, tensorboard=False, plot=False)
    trainer = Trainer(config)
    try:
      summary = trainer.run()
    finally:
      trainer.close()
    ev = summary["final_eval"] or {}
    curves = _curves(os.path.join(a.out, n, "metrics.jsonl"))
    tok_s = [r["tokens_per_s"] for r in curves["train"] if "tokens_per_s" in r]
    rows.append({"name": n, "model": MODELS[n][1], **s, "steps": a.steps, "eval_loss": ev.get("loss"),
                 "eval_perplexity": ev.get("perplexity"), "tokens_per_s": tok_s[-1] if tok_s else None,
                 "curves": curves})
  table = os.path.join(a.out, "lm_results.md")
  with open(table, "w", encoding="utf-8") as f:
    f.write(markdown(rows, a))
  with open(os.path.join(a.out, "lm_results.json"), "w", encoding="utf-8") as f:
    json.dump([{k: v for k, v in r.items() if k != "curves"} for r in rows], f, indent=1)
  plot = plot_curves(rows, os.path.join(a.out, "lm_curves.png"))
  print(open(table, encoding="utf-8").read())
  return {"rows": rows, "table": table, "plot": plot}


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


def markdown(rows: list[dict], a: argparse.Namespace) -> str:
  head = [f"# Small-LM comparison (train/zoology_lm.py)", "",
          f"{a.steps} steps × {a.batch_size} × {a.seq_len} tokens of the `{a.corpus}` corpus (BPE {a.bpe_vocab}), "
          f"lr {a.lr:g}, target {a.target_params / 1e6:g}M params; perplexity on the validation split "
          f"({a.eval_batches} batches).", "",
          "| model | d_model | layers | params | vs target | eval loss | eval ppl | tokens/s |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
  fmt = lambda x, f: "—" if x is None else format(x, f)
  for r in rows:
    head.append(f"| {r['model']} | {r['d_model']} | {r['num_layers']} | {r['params'] / 1e6:.2f}M | "
                f"{r['error']:+.1%} | {fmt(r['eval_loss'], '.4f')} | {fmt(r['eval_perplexity'], '.2f')} | "
                f"{fmt(r['tokens_per_s'], ',.0f')} |")
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
  main()
