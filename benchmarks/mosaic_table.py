"""From `bench_mosaic.py --bwd --out FILE.jsonl` rows: a markdown table of forward and fwd+bwd times per
impl, and the `MEASURED_FASTER` entries of the shapes where a Mosaic impl's fwd+bwd beat triton's in that
run.

    python benchmarks/mosaic_table.py mosaic.jsonl [--impl mosaic_gpu|mosaic_gpu_fwd] [--run "H200 ..."]
                                      [--margin 1.05]

--impl: the Mosaic impl compared with triton — "mosaic_gpu" (its table:
pallas_kernels/simple_gla/mosaic_gpu/ops.py; chunk_simple_gla rows only, chunk_gla's is explicit-only)
or "mosaic_gpu_fwd" (the Mosaic forward with the Triton backward: the tables of
pallas_kernels/{simple_gla,gla}/mosaic_gpu/fwd_triton_bwd.py, keyed with the smallest B·H from which on
every measured shape of the key won). --margin: how much faster the impl must be (triton ÷ impl ≥
margin) to enter the table, so run-to-run noise does not flip auto's choice.
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


def table(rows: list[dict], impl: str = "mosaic_gpu") -> str:
  """One markdown row per (op, gate, shape): each impl's fwd / fwd+bwd ms and `impl`'s ratio to triton."""
  groups: dict[tuple, dict[str, dict]] = {}
  for r in rows:
    groups.setdefault((r["op"], r["gate"], tuple(r["dims"])), {})[r["impl"]] = r
  others = sorted({r["impl"] for r in rows} - {"xla", "triton", impl})
  out = ["| op | gate | B,T,H,K,V | xla fwd / fwd+bwd | triton fwd / fwd+bwd | "
         + "".join(f"{o} fwd / fwd+bwd | " for o in others)
         + f"{impl} fwd / fwd+bwd | triton ÷ {impl} (fwd / fwd+bwd) | err o {impl} | err grads {impl} (max) |",
         "|---|---|---|---|---|" + "---|" * len(others) + "---|---|---|---|"]
  fmt = lambda r: ("–" if r is None else "error" if "error" in r else
                   f"{r.get('fwd_ms', float('nan')):.3f} / {r.get('fwd_bwd_ms', float('nan')):.3f}")
  for (op, gate, dims), by in groups.items():
    t, m = by.get("triton"), by.get(impl)
    ratio = "–"
    if t and m and "error" not in t and "error" not in m and "fwd_bwd_ms" in t and "fwd_bwd_ms" in m:
      ratio = f"{t['fwd_ms'] / m['fwd_ms']:.2f}× / {t['fwd_bwd_ms'] / m['fwd_bwd_ms']:.2f}×"
    err = f"{m['rel_err_o_vs_xla']:.1e}" if m and "rel_err_o_vs_xla" in m else "–"
    gerr = (f"{max(m['rel_err_grads_vs_xla']):.1e}" if m and m.get("rel_err_grads_vs_xla") else "–")
    out.append(f"| {op} | {gate} | {','.join(map(str, dims))} | {fmt(by.get('xla'))} | {fmt(t)} | "
               + "".join(f"{fmt(by.get(o))} | " for o in others) + f"{fmt(m)} | {ratio} | {err} | {gerr} |")
  return "\n".join(out)


def faster(rows: list[dict], margin: float = 1.05, dtype: str = "bfloat16", impl: str = "mosaic_gpu",
           op: str = "simple_gla") -> dict[tuple, float]:
  """{(gate kind, dtype, Kp, Vp): triton ÷ impl fwd+bwd} of the `op` shapes `impl` won by ≥ margin
  (chunk_gla keys: (dtype, Kp, Vp))."""
  return {key: ratio for key, (_, ratio) in faster_from(rows, margin, dtype, impl, op).items()}


def faster_from(rows: list[dict], margin: float = 1.05, dtype: str = "bfloat16", impl: str = "mosaic_gpu",
                op: str = "simple_gla") -> dict[tuple, tuple[int, float]]:
  """{key: (smallest B·H, triton ÷ impl at the slowest winning shape)}: per (gate, Kp, Vp) key the
  smallest B·H from which on every measured shape of the key won by ≥ margin (none: no entry)."""
  by: dict[tuple, dict[str, dict]] = {}
  for r in rows:
    if r["op"] == op and "fwd_bwd_ms" in r:
      by.setdefault((r["gate"], tuple(r["dims"])), {})[r["impl"]] = r
  per_key: dict[tuple, list[tuple[int, float]]] = {}
  for (gate, dims), impls in by.items():
    if "triton" in impls and impl in impls:
      B, _, H, K, V = dims
      key = (GATES[gate], dtype, _round_up(K, 64), _round_up(V, 64))
      if op == "gla":
        key = key[1:]
      per_key.setdefault(key, []).append((B * H, impls["triton"]["fwd_bwd_ms"] / impls[impl]["fwd_bwd_ms"]))
  out = {}
  for key, shapes in per_key.items():
    shapes.sort()
    for i, (bh, _) in enumerate(shapes):
      ratios = [r for _, r in shapes[i:]]
      if min(ratios) >= margin:
        out[key] = (bh, round(min(ratios), 2))
        break
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("jsonl")
  p.add_argument("--run", default="<device, date, commit>", help="where the numbers come from (the table's value)")
  p.add_argument("--margin", type=float, default=1.05)
  p.add_argument("--impl", default="mosaic_gpu", choices=("mosaic_gpu", "mosaic_gpu_fwd"))
  a = p.parse_args(argv)
  rows = load(a.jsonl)
  print(table(rows, a.impl))
  for op in (("simple_gla",) if a.impl == "mosaic_gpu" else ("simple_gla", "gla")):
    entries = faster_from(rows, a.margin, impl=a.impl, op=op)
    if not any(r["op"] == op for r in rows):
      continue
    print(f"\n{op} {a.impl} MEASURED_FASTER = {{")
    for key, (bh, ratio) in sorted(entries.items()):
      value = f"\"{a.run}: {ratio}x\"" if a.impl == "mosaic_gpu" else f"({bh}, \"{a.run}: {ratio}x\")"
      print(f"    {key!r}: {value},")
    print("}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
