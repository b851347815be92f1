"""Run logs without TensorFlow: JSONL (one record per log step), TensorBoard scalars, and a PNG curve.

Only process 0 writes. `metrics.jsonl` rows look like
`{"step": 100, "split": "train", "loss": 2.31, "accuracy": 0.41, "tokens_per_s": 51234.0, ...}`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax

log = logging.getLogger(__name__)


class MetricsWriter:
  """Appends rows to `<run_dir>/metrics.jsonl` and, if asked, TensorBoard event files in `<run_dir>/tb`."""

  def __init__(self, run_dir: str, *, tensorboard: bool = True):
    self.run_dir = run_dir
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(run_dir, exist_ok=True)
    self.path = os.path.join(run_dir, "metrics.jsonl")
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      try:
        from tensorboard.summary import Writer  # pylint: disable=g-import-not-at-top
        self._tb = Writer(os.path.join(run_dir, "tb"))
      except ImportError:
        log.warning("tensorboard is not installed: writing metrics.jsonl only")

  def write(self, step: int, split: str, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "split": split, "time": time.time()}
    row.update({k: _num(v) for k, v in values.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "split", "time") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
      self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def _num(v: Any) -> Any:
  try:
    return float(v)
  except (TypeError, ValueError):
    return v


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(run_dir: str, out_name: str = "curves.png") -> str | None:
  """Loss (train and eval) and accuracy against step, from metrics.jsonl; returns the PNG path."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if jax.process_index() != 0 or not os.path.exists(path):
    return None
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    log.warning("matplotlib is not installed: no curve PNG")
    return None
  rows = read_jsonl(path)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for split, style in (("train", "-"), ("eval", "o-")):
    pts = [r for r in rows if r.get("split") == split]
    if not pts:
      continue
    steps = [r["step"] for r in pts]
    axes[0].plot(steps, [r["loss"] for r in pts], style, label=split, markersize=3)
    if all("accuracy" in r for r in pts):
      axes[1].plot(steps, [r["accuracy"] for r in pts], style, label=split, markersize=3)
  axes[0].set(xlabel="step", ylabel="loss", title="loss")
  axes[1].set(xlabel="step", ylabel="accuracy", title="accuracy (masked positions)", ylim=(0, 1.02))
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  out = os.path.join(run_dir, out_name)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out
