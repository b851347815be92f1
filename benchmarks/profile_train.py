"""Where the train step's time goes: a device trace of the jitted step, summed per HLO op and per category.

    python benchmarks/profile_train.py --model gla_340m --batch 16 --seq 2048 --steps 5 --out prof.json
    python benchmarks/profile_train.py --model gla_tiny --batch 4 --seq 256 --steps 2        # CPU smoke run

The step is bench_train.py's (the trainer's `make_train_step`, one device, synthetic tokens on the device).
After --warmup steps, --steps steps run under `jax.profiler.trace`; the trace's kernel events (device planes
on a GPU; the host's XLA-op events on CPU) carry the HLO op that launched them. Each op is looked up in the
compiled step's HLO text (opcode, custom-call target, fusion kind, the op_name and source file of its
metadata) and put in one category:

  mixer kernels   custom calls of the Pallas / Mosaic kernels (the chunk ops, forward and backward)
  matmul          cuBLAS calls and XLA's gemm / dot fusions (projections, lm_head, the xla mixer impl's dots)
  mixer (XLA glue) the ops' other XLA work (padding, cumsums, transposes, the xla impl's elementwise)
  loss            ops whose source is the loss (train/loss.py; cross-entropy, log-softmax)
  optimizer       ops from optax (AdamW, clipping) and the step's update code
  norm            ops whose source is a norm layer
  other           everything else, by source file

XLA's command buffers are turned off (module top), so the trace names each kernel's op; the step may run a
little slower than with them (bench_train.py's number). It prints ms per step per category and per source file, the top ops, the device's busy time against the
step's wall time (the difference: launch gaps and host work the device waits on), and writes them as JSON.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import glob
import json
import os
import re
import sys
import tempfile
import time

# XLA's GPU command buffers (CUDA graphs) would make one trace event of many kernels, named after the
# buffer: off, so every kernel names its own HLO op (the step's wall time is printed beside the busy time)
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer="

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import model_config, variant_config  # noqa: E402

from flax import nnx  # noqa: E402

from gla_jax.models import build_model  # noqa: E402
from train import mesh as mesh_lib  # noqa: E402
from train import state as state_lib  # noqa: E402
from train import step as step_lib  # noqa: E402
from train.config import MeshConfig, OptimConfig  # noqa: E402
from train.data.mqar import StepIndexedSource  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s([a-z][\w\-]*)\(")


_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
_PROJECT = ("gla_jax/", "train/", "pallas_kernels/", "optax/", "flax/")


def _stack_tables(text: str):
  """The HLO text's FileNames / FunctionNames / FileLocations / StackFrames tables → frame id → the call
  stack [(file, line, function)], innermost first."""
  tables = {t: {} for t in _TABLES}
  current = None
  for line in text.splitlines():
    if line.strip() in _TABLES:
      current = line.strip()
      continue
    m = re.match(r"^(\d+) (.*)$", line) if current else None
    if m:
      tables[current][int(m[1])] = m[2]
    else:  # a table ends at its first line that is not "<id> <entry>"
      current = None
  field = lambda s, k: int((re.search(k + r"=(\d+)", s) or [0, 0])[1])
  files = {i: v.strip('"') for i, v in tables["FileNames"].items()}
  funcs = {i: v.strip('"') for i, v in tables["FunctionNames"].items()}
  locs = {i: (files.get(field(v, "file_name_id"), "?"), field(v, "line"), funcs.get(field(v, "function_name_id"), "?"))
          for i, v in tables["FileLocations"].items()}
  frames = {i: (field(v, "file_location_id"), field(v, "parent_frame_id")) for i, v in tables["StackFrames"].items()}

  def stack(fid: int) -> list[tuple[str, int, str]]:
    out, seen = [], set()
    while fid in frames and fid not in seen:
      seen.add(fid)
      loc, parent = frames[fid]
      if loc in locs:
        out.append(locs[loc])
      fid = parent
    return out
  return stack


def hlo_ops(text: str) -> dict[str, dict]:
  """Instruction name → {opcode, target, kind, op_name, stack, file, line, matmul} from an HLO module's
  text (`stack`: the op's Python call stack, innermost first; file/line: its innermost frame in the
  project, optax or flax)."""
  stack_of = _stack_tables(text)
  with_dot, comp = set(), None  # computations that hold a dot / gemm (a fusion calling one is a matmul)
  for line in text.splitlines():
    head = re.match(r"^%?([\w.\-]+) \(.*\{$", line) or re.match(r"^ENTRY %?([\w.\-]+)", line)
    if head:
      comp = head[1]
    elif comp and re.search(r"\sdot\(|gemm|cublas", line):
      with_dot.add(comp)
  ops = {}
  for line in text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, rest = m.groups()
    op = _OPCODE.search(" " + rest)
    get = lambda pat: (re.search(pat, rest) or [None, None])[1]
    frame = get(r"stack_frame_id=(\d+)")
    stack = stack_of(int(frame)) if frame else []
    if get(r'source_file="([^"]*)"'):  # older XLA: the location inline
      stack = [(get(r'source_file="([^"]*)"'), int(get(r"source_line=(\d+)") or 0), "?")] + stack
    own = next((f for f in stack if any(p in f[0] for p in _PROJECT)), stack[0] if stack else None)
    ops[name] = {"opcode": op[1] if op else "?", "target": get(r'custom_call_target="([^"]*)"'),
                 "kind": get(r"kind=(k\w+)"), "op_name": get(r'op_name="([^"]*)"'), "stack": stack,
                 "file": own[0] if own else None, "line": own[1] if own else None,
                 "function": own[2] if own else None,
                 "matmul": bool(re.search(r"gemm|cublas|cudnn\$|\sdot\(", " " + rest)
                                or (get(r"calls=%?([\w.\-]+)") in with_dot))}
  return ops


def category(info: dict | None, kernel: str) -> str:
  """One of the module docstring's categories for an op (`info` from `hlo_ops`, None if not found)."""
  target = (info or {}).get("target") or ""
  if ("triton" in target and "gemm" not in target) or "mosaic" in target.lower():
    return "mixer kernels"
  if (info or {}).get("matmul") or re.search(r"gemm|nvjet|xmma|cutlass|cublas", kernel, re.I):
    return "matmul"
  file = (info or {}).get("file") or ""
  if "pallas_kernels/" in file:
    return "mixer (XLA glue)"
  op_name = (info or {}).get("op_name") or ""
  stack_files = " ".join(f for f, _, _ in (info or {}).get("stack", []))
  if ("loss" in os.path.basename(file) or "optax/losses" in stack_files
      or re.search(r"cross_entropy|log_softmax|logsumexp", op_name)):
    return "loss"
  if "optax" in stack_files or "train/state.py" in file:
    return "optimizer"
  if "norm" in os.path.basename(file):
    return "norm"
  return "other"


def _short(path: str) -> str:
  """A source path from its project / package folder on (gla_jax/…, train/…, optax/…)."""
  for p in _PROJECT:
    i = path.find(p)
    if i >= 0:
      return path[i:]
  return os.path.basename(path)


def kernel_events(xspace_path: str) -> list[tuple[str, str, float, str]]:
  """(hlo_module, hlo_op, duration ns, kernel name) of every event that names its HLO op: the GPU planes' where the
  trace has any, else the host's (CPU runs)."""
  pd = jax.profiler.ProfileData.from_file(xspace_path)
  planes = [p for p in pd.planes if p.name.startswith("/device:GPU")] or list(pd.planes)
  out = []
  for plane in planes:
    for line in plane.lines:
      for e in line.events:
        stats = dict(e.stats)
        if "hlo_op" in stats:
          out.append((str(stats.get("hlo_module", "")), str(stats["hlo_op"]), float(e.duration_ns), e.name))
  return out


def profile(cfg, batch: int, seq: int, steps: int, warmup: int, loss_chunk: int, trace_dir: str) -> dict:
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  tx = state_lib.make_optimizer(OptimConfig(lr=3e-4, warmup_steps=10), total_steps=1000)
  state, _, shardings = state_lib.init_state(lambda rngs: build_model(cfg, rngs=rngs), tx, mesh, seed=0)
  src = StepIndexedSource("synthetic", global_batch=batch, seq_len=seq, vocab_size=cfg.vocab_size, seed=0)
  batches = [mesh_lib.global_batch(src.next(), mesh) for _ in range(2)]
  model_def, _ = state_lib.abstract_model(lambda rngs: build_model(cfg, rngs=rngs))
  step = step_lib.make_train_step(model_def, tx, mesh, shardings, loss_chunk=loss_chunk)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(step_lib.TRACE_RULES):
    compiled = step.jitted.lower(state, batches[0]).compile()
  ops = hlo_ops(compiled.as_text())
  for i in range(max(warmup, 1)):
    state, m = compiled(state, batches[i % 2])
  jax.block_until_ready(state)
  wall = []
  with jax.profiler.trace(trace_dir):
    for i in range(steps):
      t = time.perf_counter()
      state, m = compiled(state, batches[i % 2])
      jax.block_until_ready(m["loss"])
      wall.append(time.perf_counter() - t)
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
  if not paths:
    raise RuntimeError(f"no *.xplane.pb written under {trace_dir}")
  events = kernel_events(paths[-1])
  per_module = collections.Counter()
  for mod, _, ns, _ in events:
    per_module[mod] += ns
  module = per_module.most_common(1)[0][0] if per_module else ""
  by_op: dict[str, dict] = {}
  for mod, op, ns, kernel in events:
    if mod != module:
      continue
    rec = by_op.setdefault(op, {"op": op, "ns": 0.0, "count": 0, "kernels": collections.Counter()})
    rec["ns"] += ns
    rec["count"] += 1
    rec["kernels"][kernel[:80]] += 1
  cats, files = collections.Counter(), collections.Counter()
  rows = []
  for op, rec in by_op.items():
    info = ops.get(op)
    cat = category(info, " ".join(rec["kernels"]))
    ms = rec["ns"] / 1e6 / steps
    cats[cat] += ms
    file = _short(info["file"]) if info and info.get("file") else "?"
    files[file] += ms
    rows.append({"op": op, "category": cat, "ms_per_step": ms, "launches_per_step": rec["count"] / steps,
                 "opcode": (info or {}).get("opcode"), "target": (info or {}).get("target"),
                 "source": f"{file}:{(info or {}).get('line')} {(info or {}).get('function')}", "op_name": ((info or {}).get("op_name") or "")[-120:],
                 "kernel": rec["kernels"].most_common(1)[0][0]})
  rows.sort(key=lambda r: -r["ms_per_step"])
  busy = sum(cats.values())
  wall_ms = 1e3 * sorted(wall)[len(wall) // 2]
  return {"module": module, "steps": steps, "wall_ms_median": wall_ms, "device_busy_ms": busy,
          "idle_ms": wall_ms - busy, "categories": dict(cats.most_common()), "files": dict(files.most_common(30)),
          "top_ops": rows[:60], "n_ops": len(rows)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="gla_340m")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--impl", default="auto", help="attn_impl")
  p.add_argument("--remat-policy", default=None, help="as bench_train.py's (default: the config's own)")
  p.add_argument("--loss-chunk", type=int, default=1024,
                 help="chunked cross-entropy tokens per chunk, 0: full logits (bench_train.py's default)")
  p.add_argument("--trace-dir", default=None, help="keep the trace here (default: a temporary folder)")
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.steps < 1:
    p.error(f"--steps must be >= 1, got {args.steps}")
  if args.loss_chunk < 0:
    p.error(f"--loss-chunk must be >= 0, got {args.loss_chunk}")
  cfg = model_config(args, args.impl)
  if args.remat_policy:
    cfg = variant_config(cfg, args.remat_policy)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="gla_prof_")
  dev = jax.devices()[0]
  res = profile(cfg, args.batch, args.seq, args.steps, args.warmup, args.loss_chunk, trace_dir)
  res.update(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), jax=jax.__version__,
             device=getattr(dev, "device_kind", dev.platform), model=args.model, batch=args.batch, seq=args.seq,
             impl=args.impl, remat=cfg.remat, remat_policy=cfg.remat_policy, loss_chunk=args.loss_chunk,
             config=dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None)
  print(f"{res['device']} jax {res['jax']} {args.model} batch {args.batch} x {args.seq}: step {res['wall_ms_median']:.1f} ms"
        f" wall, device busy {res['device_busy_ms']:.1f} ms, idle {res['idle_ms']:.1f} ms ({res['n_ops']} ops)")
  print("| category | ms/step | share of busy |\n|---|---:|---:|")
  for c, ms in res["categories"].items():
    print(f"| {c} | {ms:.2f} | {100 * ms / max(res['device_busy_ms'], 1e-9):.1f} % |")
  print("| source file | ms/step |\n|---|---:|")
  for f, ms in list(res["files"].items())[:15]:
    print(f"| {f} | {ms:.2f} |")
  print("| op | category | ms/step | launches | source | kernel |\n|---|---|---:|---:|---|---|")
  for r in res["top_ops"][:args.top]:
    print(f"| {r['op']} | {r['category']} | {r['ms_per_step']:.3f} | {r['launches_per_step']:.0f} | {r['source']} |"
          f" {r['kernel'][:50]} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
