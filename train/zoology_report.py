"""The MQAR sweep's table and plots from results.jsonl rows (train/zoology.py writes them after each sweep).

    python -m train.zoology --report-only --out runs/zoology     # rewrite results.md and the two PNGs

* results.md: per protocol (epochs, JRT, …) the best-LR test accuracy per (kind, d_model) and cell, with
  that LR, the parameter count, and a second table of decode state bytes per sequence;
* accuracy_vs_dmodel.png: one panel per (seq_len, pairs), accuracy vs d_model, a line per kind (Zoology's
  figure 2); JRT runs dashed;
* accuracy_vs_state.png: one panel per cell, accuracy vs decode state bytes per sequence (log x), a line per
  kind through its widths (the Based paper's recall-vs-state front).

Best LR: the LR of the highest mean accuracy over seeds; ties go to the smaller LR.
"""

from __future__ import annotations

import collections
import os
from typing import Any


def best_rows(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
  """{(protocol, kind, d_model, seq_len, num_kv_pairs): summary of the best LR} (accuracy averaged over seeds)."""
  by_lr: dict[tuple, list] = collections.defaultdict(list)
  for r in rows:
    by_lr[(r["protocol"], r["kind"], int(r["d_model"]), int(r["seq_len"]), int(r["num_kv_pairs"]),
           float(r["lr"]))].append(r)
  best: dict[tuple, dict[str, Any]] = {}
  for key, rs in sorted(by_lr.items(), key=lambda kv: kv[0][-1]):
    acc = sum(r["accuracy"] for r in rs) / len(rs)
    cell = key[:-1]
    if cell not in best or acc > best[cell]["accuracy"]:
      best[cell] = {"accuracy": acc, "lr": key[-1], "seeds": len(rs), "params": rs[0]["params"],
                    "state_bytes": rs[0]["state_bytes"], "jrt": bool(rs[0].get("jrt")),
                    "epochs": rs[0].get("epochs"), "num_heads": rs[0].get("num_heads")}
  return best


def _human_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return str(n)


def markdown(rows: list[dict[str, Any]]) -> str:
  best = best_rows(rows)
  out = ["# MQAR sweep (train/zoology.py)", "",
         "Test accuracy over the query positions at the best learning rate of each cell (`acc @ lr`); "
         "columns are (seq_len, num_kv_pairs).", ""]
  for proto in sorted({k[0] for k in best}):
    keys = [k for k in best if k[0] == proto]
    cells = sorted({(k[3], k[4]) for k in keys})
    models = sorted({(k[1], k[2]) for k in keys})
    first = best[keys[0]]
    devices = sorted({r.get("device", "?") for r in rows if r["protocol"] == proto})
    out += [f"## protocol `{proto}`", "",
            f"epochs {first['epochs']}, JRT {'on' if first['jrt'] else 'off'}; device {', '.join(devices)}", ""]
    out.append("| kind | d_model | heads | params | " + " | ".join(f"{t}, {n}" for t, n in cells) + " |")
    out.append("|---|---:|---:|---:|" + "---:|" * len(cells))
    for kind, d in models:
      any_row = next(best[k] for k in keys if k[1] == kind and k[2] == d)
      vals = []
      for t, n in cells:
        b = best.get((proto, kind, d, t, n))
        vals.append("—" if b is None else f"{b['accuracy']:.3f} @ {b['lr']:.1e}")
      out.append(f"| {kind} | {d} | {any_row['num_heads']} | {any_row['params'] / 1e6:.3f}M | "
                 + " | ".join(vals) + " |")
    out += ["", "Decode state per sequence (Σ over layers of the mixer's cache at the input length):", ""]
    out.append("| kind | d_model | " + " | ".join(f"{t}, {n}" for t, n in cells) + " |")
    out.append("|---|---:|" + "---:|" * len(cells))
    for kind, d in models:
      vals = [("—" if (b := best.get((proto, kind, d, t, n))) is None else _human_bytes(b["state_bytes"]))
              for t, n in cells]
      out.append(f"| {kind} | {d} | " + " | ".join(vals) + " |")
    out.append("")
  return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], out_dir: str) -> dict[str, str]:
  """Writes the two PNGs; returns their paths ({} without matplotlib or rows)."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  best = best_rows(rows)
  if not best:
    return {}
  cells = sorted({(k[3], k[4]) for k in best})
  kinds = sorted({k[1] for k in best})
  colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
  paths = {}
  for name, xkey, xlabel, logx in (("accuracy_vs_dmodel", "d_model", "d_model", 2),
                                   ("accuracy_vs_state", "state_bytes", "decode state per sequence (bytes)", 10)):
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.6), squeeze=False)
    for ax, (t, n) in zip(axes[0], cells):
      for proto in sorted({k[0] for k in best}):
        for kind in kinds:
          pts = sorted((k[2], b) for k, b in best.items() if k[0] == proto and k[1] == kind and k[3:] == (t, n))
          if not pts:
            continue
          xs = [d if xkey == "d_model" else b["state_bytes"] for d, b in pts]
          jrt = pts[0][1]["jrt"]
          ax.plot(xs, [b["accuracy"] for _, b in pts], marker="o", ms=3, color=colors[kind],
                  linestyle="--" if jrt else "-", label=kind + (" (JRT)" if jrt else ""))
      ax.set_xscale("log", base=logx)
      ax.set_ylim(-0.02, 1.02)
      ax.set_title(f"seq_len {t}, {n} pairs")
      ax.set_xlabel(xlabel)
      ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy (best LR)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[0]:
      h, l = ax.get_legend_handles_labels()
      seen.update(zip(l, h))
    fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, name + ".png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    paths[name] = path
  return paths


def write_report(out_dir: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
  """results.md and the plots in `out_dir`; returns {"table": path, "plots": {name: path}}."""
  path = os.path.join(out_dir, "results.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write(markdown(rows))
  return {"table": path, "plots": plot(rows, out_dir)}
