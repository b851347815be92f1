"""From `bench_mosaic.py --bwd --out FILE.jsonl` rows: a markdown table of forward and fwd+bwd times per
impl, and the `MEASURED_FASTER` entries (pallas_kernels/simple_gla/mosaic_gpu/ops.py) of the shapes where
mosaic_gpu's fwd+bwd beat triton's in that run.

    python benchmarks/mosaic_table.py mosaic.jsonl [--run "H200 2026-12-03 <commit>"] [--margin 1.05]

--margin: how much faster mosaic_gpu must be (triton ÷ mosaic ≥ margin) to enter the table, so run-to-run
noise does not flip auto's choice. Only chunk_simple_gla rows feed the table (chunk_gla's Mosaic impl is
explicit-only).
"""

from __future__ import annotations

import argparse
import json
import sys

GATES = {"g": "scalar", "gamma": "constant", "none": "none"}


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def load(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def table(rows: list[dict]) -> str:
  """One markdown row per (op, gate, shape): each impl's fwd / fwd+bwd ms and mosaic's ratio to triton."""
  groups: dict[tuple, dict[str, dict]] = {}
  for r in rows:
    groups.setdefault((r["op"], r["gate"], tuple(r["dims"])), {})[r["impl"]] = r
  out = ["| op | gate | B,T,H,K,V | xla fwd / fwd+bwd | triton fwd / fwd+bwd | mosaic_gpu fwd / fwd+bwd | "
         "triton ÷ mosaic (fwd / fwd+bwd) | err o mosaic | err grads mosaic (max) |",
         "|---|---|---|---|---|---|---|---|---|"]
  fmt = lambda r: ("–" if r is None else "error" if "error" in r else
                   f"{r.get('fwd_ms', float('nan')):.3f} / {r.get('fwd_bwd_ms', float('nan')):.3f}")
  for (op, gate, dims), by in groups.items():
    t, m = by.get("triton"), by.get("mosaic_gpu")
    ratio = "–"
    if t and m and "error" not in t and "error" not in m and "fwd_bwd_ms" in t and "fwd_bwd_ms" in m:
      ratio = f"{t['fwd_ms'] / m['fwd_ms']:.2f}× / {t['fwd_bwd_ms'] / m['fwd_bwd_ms']:.2f}×"
    err = f"{m['rel_err_o_vs_xla']:.1e}" if m and "rel_err_o_vs_xla" in m else "–"
    gerr = (f"{max(m['rel_err_grads_vs_xla']):.1e}" if m and m.get("rel_err_grads_vs_xla") else "–")
    out.append(f"| {op} | {gate} | {','.join(map(str, dims))} | {fmt(by.get('xla'))} | {fmt(t)} | {fmt(m)} | "
               f"{ratio} | {err} | {gerr} |")
  return "\n".join(out)


def faster(rows: list[dict], margin: float = 1.05, dtype: str = "bfloat16") -> dict[tuple, float]:
  """{(gate kind, dtype, Kp, Vp): triton ÷ mosaic fwd+bwd} of the simple-GLA shapes mosaic won by ≥ margin."""
  by: dict[tuple, dict[str, dict]] = {}
  for r in rows:
    if r["op"] == "simple_gla" and "fwd_bwd_ms" in r:
      by.setdefault((r["gate"], tuple(r["dims"])), {})[r["impl"]] = r
  out = {}
  for (gate, dims), impls in by.items():
    if "triton" in impls and "mosaic_gpu" in impls:
      ratio = impls["triton"]["fwd_bwd_ms"] / impls["mosaic_gpu"]["fwd_bwd_ms"]
      if ratio >= margin:
        _, _, _, K, V = dims
        out[(GATES[gate], dtype, _round_up(K, 64), _round_up(V, 64))] = round(ratio, 2)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("jsonl")
  p.add_argument("--run", default="<device, date, commit>", help="where the numbers come from (the table's value)")
  p.add_argument("--margin", type=float, default=1.05)
  a = p.parse_args(argv)
  rows = load(a.jsonl)
  print(table(rows))
  print("\nMEASURED_FASTER = {")
  for key, ratio in sorted(faster(rows, a.margin).items()):
    print(f"    {key!r}: \"{a.run}: {ratio}x\",")
  print("}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
