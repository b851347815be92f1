"""Multi-device scaling of the trainer's step: tokens/s per device on several meshes vs one device.

    python benchmarks/scaling.py --model gla_340m gla_1p3b --batch-per-device 8 --seq 2048 --impl auto \
        --remat --steps 10 --out /tmp/scaling                                  # N GPUs (benchmarks/scaling.sh)
    python benchmarks/scaling.py --model gla_tiny --seq 32 --batch-per-device 1 --dtype float32 \
        --impl xla --steps 2 --warmup 0 --out /tmp/scaling                     # 8 fake CPU devices

On the N visible devices (--devices: the first N) and for each --model, this times the trainer's own step
(`train.step.make_train_step`: float32 params and AdamW state, --dtype compute, clipping, non-finite check;
state initialised sharded by `train.state.init_state`) on each mesh of `train.mesh` (default fsdp=N, data=N
and data=N/2 × tensor=2; --meshes overrides, e.g. `fsdp=4 data=2,fsdp=2`), and on one device with the same
per-device batch (the baseline). Every mesh trains the same global batch, `--batch-per-device` × N rows
(with tensor=2 a data shard holds 2 × that: the batch is split over data × fsdp only), so tokens/s per
device = global tokens / step time / N on every mesh, and the one-device baseline runs `--batch-per-device`
rows. Scaling efficiency = tokens/s per device ÷ the baseline's.

Per mesh: step time (median of --steps after --warmup), tokens/s per device, efficiency, the compiled step's
memory per device (XLA's memory analysis: arguments + temporaries + outputs − donated aliases) and, where the
backend reports it, the largest `peak_bytes_in_use` over the mesh's devices (the process's running maximum,
so a later mesh's number includes the earlier ones' peaks). Loss check: every run starts from the same init
(seed 0) on the same synthetic batches; the first --loss-steps losses of each mesh are compared with one
device training the SAME global batch (the only run whose losses are comparable), with gradient
accumulation over --ref-accum micro-batches (default N: each micro-batch is the baseline's size, so it
fits whenever the baseline does; accumulation equals the one-shot gradient up to summation order, see
train/step.py). If the reference fails (e.g. out of memory) the report says why and skips the check;
--no-loss-check skips it outright. Pass: max relative difference ≤ --loss-rtol (default 1e-5 for float32
compute, 2e-2 for bf16: bf16 rounding differs with the reduction order of each mesh).

Several calls, one report: --reuse PREV.json keeps PREV's runs of meshes not run now, its baseline and its
loss reference (same devices, dtype, impl, remat, shape), so a device call can time one mesh at a time
(`--meshes none` runs only the baseline and the reference; benchmarks/scaling.sh chains the calls).

Output (--out DIR): scaling.json (info + one record per run) and scaling.md (the markdown table).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import nnx  # noqa: E402

import bench_train  # noqa: E402  (model_config, variant_config, flops_per_token, _is_oom)
from gla_jax.models import build_model  # noqa: E402
from train import mesh as mesh_lib  # noqa: E402
from train import state as state_lib  # noqa: E402
from train import step as step_lib  # noqa: E402
from train.config import MeshConfig, OptimConfig, apply_overrides  # noqa: E402
from train.data.mqar import StepIndexedSource  # noqa: E402

ONE = MeshConfig(data=1, fsdp=1, tensor=1)
BASELINE = "baseline (1 device)"


def default_meshes(n: int) -> list[MeshConfig]:
  """fsdp=n, data=n and, for even n ≥ 2, data=n/2 × tensor=2."""
  meshes = [MeshConfig(data=1, fsdp=n, tensor=1), MeshConfig(data=n, fsdp=1, tensor=1)]
  if n >= 2 and n % 2 == 0:
    meshes.append(MeshConfig(data=n // 2, fsdp=1, tensor=2))
  return meshes


def parse_mesh(text: str) -> MeshConfig:
  """'data=4,tensor=2' -> MeshConfig(data=4, fsdp=1, tensor=2) (unnamed axes are 1)."""
  sizes = {"data": 1, "fsdp": 1, "tensor": 1}
  for part in text.split(","):
    key, _, value = part.partition("=")
    if key.strip() not in sizes or not value.strip().isdigit() or int(value) < 1:
      raise ValueError(f"--meshes {text!r}: expected axis=size[,axis=size] with axes data/fsdp/tensor, size ≥ 1")
    sizes[key.strip()] = int(value)
  return MeshConfig(**sizes)


def mesh_name(m: MeshConfig) -> str:
  parts = [f"{a}={getattr(m, a)}" for a in mesh_lib.AXES if getattr(m, a) != 1]
  return ",".join(parts) or "one device"


def compiled_bytes(ma) -> int | None:
  if ma is None:
    return None
  return ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes


def _error(e: BaseException) -> str:
  return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def run_mesh(cfg, mesh_cfg: MeshConfig, devices, batches: list[dict], *, loss_steps: int, steps: int,
             warmup: int, loss_chunk: int, grad_accum: int, optim: OptimConfig) -> dict:
  """Init (seed 0), compile, `loss_steps` steps on batches[0..] recording losses, then `warmup` + `steps`
  timed steps rotating over the batches. batches: numpy {inputs, targets, mask} of the global batch."""
  mesh = mesh_lib.make_mesh(mesh_cfg, devices)
  tx = state_lib.make_optimizer(optim, total_steps=1000)
  build = lambda rngs: build_model(cfg, rngs=rngs)  # noqa: E731
  state, model_def, shardings = state_lib.init_state(build, tx, mesh, seed=0)
  dev_batches = [mesh_lib.global_batch(b, mesh) for b in batches]
  step = step_lib.make_train_step(model_def, tx, mesh, shardings, grad_accum=grad_accum, loss_chunk=loss_chunk)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh), nnx.logical_axis_rules(step_lib.TRACE_RULES):
    compiled = step.jitted.lower(state, dev_batches[0]).compile()
  t_compile = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  losses = []
  for i in range(loss_steps):
    state, m = compiled(state, dev_batches[i % len(dev_batches)])
    losses.append(float(m["loss"]))
  for i in range(warmup):
    state, m = compiled(state, dev_batches[i % len(dev_batches)])
  jax.block_until_ready(state)
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, m = compiled(state, dev_batches[i % len(dev_batches)])
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t)
  skipped = int(state.skipped)
  del state
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in mesh.devices.flat]
  return {"compile_s": t_compile, "losses": losses, "step_times": times, "skipped": skipped,
          "compiled_bytes": compiled_bytes(ma), "temp_bytes": getattr(ma, "temp_size_in_bytes", None),
          "peak_bytes_in_use": max(peaks) if all(p is not None for p in peaks) else None}


def _safe_run(*args, **kwargs) -> dict:
  try:
    return run_mesh(*args, **kwargs)
  except Exception as e:  # OOM or a kernel that does not run here: the report says so
    return {"error": _error(e)}


def reusable(args, model: str, n: int) -> dict:
  """The --reuse report's entry for this model when it ran the same shape on as many devices, else {}."""
  if not args.reuse or not os.path.isfile(args.reuse):
    return {}
  with open(args.reuse) as f:
    old = json.load(f)
  same = {"devices": n, "dtype": args.dtype, "impl": args.impl, "remat": args.remat_policy if args.remat else "none",
          "loss_chunk": args.loss_chunk, "overrides": args.set}
  if any(old["info"].get(k) != v for k, v in same.items()):
    print(f"--reuse {args.reuse}: ran with other settings, not reused", flush=True)
    return {}
  for m in old["models"]:
    if (m["model"], m["batch_per_device"], m["seq"]) == (model, args.batch_per_device, args.seq):
      return m
  return {}


def model_config(args, model: str):
  """bench_train's config (--dtype compute, float32 params, --impl), then --remat and --set overrides."""
  ns = argparse.Namespace(model=model, dtype=args.dtype)
  cfg = bench_train.model_config(ns, args.impl)
  cfg = bench_train.variant_config(cfg, args.remat_policy if args.remat else "none")
  return apply_overrides(cfg, args.set)


def scale_model(args, model: str, devices) -> dict:
  """Every run of one model: meshes, baseline, loss reference; the records plus the loss check."""
  n = len(devices)
  cfg = model_config(args, model)
  meshes = [parse_mesh(m) for m in args.meshes if m != "none"] if args.meshes else default_meshes(n)
  gb, bpd, seq = args.batch_per_device * n, args.batch_per_device, args.seq
  n_batches = max(args.loss_steps, 1, min(4, args.steps))
  src = StepIndexedSource("synthetic", global_batch=gb, seq_len=seq, vocab_size=cfg.vocab_size, seed=0)
  glob = [src.batch_at(i) for i in range(n_batches)]
  base = [{k: v[:bpd] for k, v in b.items()} for b in glob]  # the baseline: the first bpd rows
  kw = dict(loss_steps=args.loss_steps, steps=args.steps, warmup=args.warmup, loss_chunk=args.loss_chunk,
            optim=OptimConfig(lr=args.lr, warmup_steps=args.warmup_steps))
  abstract = state_lib.abstract_model(lambda rngs: build_model(cfg, rngs=rngs))[1]
  fl = bench_train.flops_per_token(cfg, abstract, seq)
  prev = reusable(args, model, n)
  runs = []
  for m in meshes:  # the sharded meshes first: their devices' peak memory is not yet raised by the baseline
    r = _safe_run(cfg, m, devices, glob, grad_accum=1, **kw)
    runs.append({"run": mesh_name(m), "mesh": dataclasses.asdict(m), "devices": n, "batch": gb, **r})
  names = {r["run"] for r in runs} | {BASELINE}
  runs += [{**r, "reused": True} for r in prev.get("runs", []) if r["run"] not in names]
  old_base = [r for r in prev.get("runs", []) if r["run"] == BASELINE and "error" not in r]
  if old_base:
    runs.append({**old_base[0], "reused": True})
  else:
    r = _safe_run(cfg, ONE, devices[:1], base, grad_accum=1, **kw)
    runs.append({"run": BASELINE, "mesh": dataclasses.asdict(ONE), "devices": 1, "batch": bpd, **r})
  for r in runs:
    if r.get("reused"):
      continue
    if "error" in r:
      print(f"{model} {r['run']}: failed: {r['error']}", flush=True)
      continue
    med = statistics.median(r["step_times"]) if r["step_times"] else float("nan")
    r.update(step_s_median=med, tokens_per_s_per_device=r["batch"] * seq / med / r["devices"],
             model_tflops_per_device=fl["total"] * r["batch"] * seq / med / r["devices"] / 1e12)
  base_tps = runs[-1].get("tokens_per_s_per_device")
  for r in runs:
    if "tokens_per_s_per_device" in r and base_tps:
      r["efficiency"] = r["tokens_per_s_per_device"] / base_tps
  out = {"model": model, "params": state_lib.param_count(abstract), "global_batch": gb, "batch_per_device": bpd,
         "seq": seq, "runs": runs,
         "loss_check": loss_check(args, cfg, devices, glob, runs, kw, prev.get("loss_check", {}))}
  return out


def loss_check(args, cfg, devices, glob, runs, kw, prev: dict | None = None) -> dict:
  """The first --loss-steps losses of every mesh vs one device on the same global batch (taken from
  `prev`, a reused report's loss check, when it has them)."""
  if args.no_loss_check or args.loss_steps == 0:
    return {"skipped": "--no-loss-check" if args.no_loss_check else "--loss-steps 0"}
  accum = args.ref_accum or len(devices)
  if glob[0]["inputs"].shape[0] % accum:
    return {"skipped": f"--ref-accum {accum} does not divide the global batch {glob[0]['inputs'].shape[0]}"}
  if prev and len(prev.get("reference_losses", ())) == args.loss_steps:
    ref = {"losses": prev["reference_losses"]}
    accum = prev["reference_grad_accum"]
  else:
    ref = _safe_run(cfg, ONE, devices[:1], glob, grad_accum=accum, **{**kw, "steps": 0, "warmup": 0})
  if "error" in ref:
    return {"skipped": f"the one-device run of the global batch (grad_accum {accum}) failed: {ref['error']}"}
  rtol = args.loss_rtol if args.loss_rtol is not None else (1e-5 if args.dtype == "float32" else 2e-2)
  ref_losses = np.asarray(ref["losses"])
  check = {"reference_losses": ref["losses"], "reference_grad_accum": accum, "rtol": rtol, "per_mesh": {}}
  for r in runs:
    if "error" in r or r["run"] == BASELINE:
      continue
    rel = float(np.max(np.abs(np.asarray(r["losses"]) - ref_losses) / np.abs(ref_losses)))
    r["loss_max_rel_diff"] = rel
    check["per_mesh"][r["run"]] = {"max_rel_diff": rel, "ok": rel <= rtol}
  check["ok"] = bool(check["per_mesh"]) and all(v["ok"] for v in check["per_mesh"].values())
  return check


# ------------------------------------------------------------------------------------------------ report


def _gb(x):
  if not x:
    return "n/a"
  return f"{x / 1e9:.2f} GB" if x >= 1e8 else f"{x / 1e6:.2f} MB"


def markdown(report: dict) -> str:
  info = report["info"]
  lines = [f"# Scaling: {info['devices']} × {info['device']} ({info['date']}, jax {info['jax']})", "",
           f"dtype {info['dtype']}, impl {info['impl']}, remat {info['remat']}, loss_chunk {info['loss_chunk']}, "
           f"{info['steps']} timed steps after {info['warmup']} warm-up", ""]
  for m in report["models"]:
    lc = m["loss_check"]
    lines += [f"## {m['model']} ({m['params'] / 1e6:.1f}M params), {m['batch_per_device']} × {m['seq']} tokens "
              f"per device, global batch {m['global_batch']}", "",
              "| mesh | batch | step (median) | tokens/s per device | efficiency | model TFLOP/s per device | "
              "compiled memory per device | peak in use (max over devices) | compile | loss max rel diff |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in m["runs"]:
      if "error" in r:
        lines.append(f"| {r['run']} | {r['batch']} | failed: {r['error'][:80]} | | | | | | | |")
        continue
      eff = f"{100 * r['efficiency']:.1f}%" if r.get("efficiency") is not None else "n/a"
      rel = f"{r['loss_max_rel_diff']:.1e}" if "loss_max_rel_diff" in r else ""
      rel += " (earlier call)" if r.get("reused") else ""
      lines.append(f"| {r['run']} | {r['batch']} | {1e3 * r['step_s_median']:.1f} ms | "
                   f"{r['tokens_per_s_per_device']:,.0f} | {eff} | {r['model_tflops_per_device']:.1f} | "
                   f"{_gb(r['compiled_bytes'])} | {_gb(r['peak_bytes_in_use'])} | {r['compile_s']:.0f} s | {rel} |")
    if "skipped" in lc:
      lines += ["", f"Loss check skipped: {lc['skipped']}."]
    else:
      ref = ", ".join(f"{x:.5f}" for x in lc["reference_losses"])
      lines += ["", f"Loss check ({'PASS' if lc['ok'] else 'FAIL'}, rtol {lc['rtol']:g}): first "
                f"{len(lc['reference_losses'])} losses vs one device on the global batch (grad_accum "
                f"{lc['reference_grad_accum']}): {ref}."]
    lines.append("")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", nargs="+", default=["gla_340m"], help="gla_jax.models.presets function names")
  p.add_argument("--set", nargs="*", default=[], help="model config overrides key=value (every --model)")
  p.add_argument("--batch-per-device", type=int, default=8)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after the loss steps")
  p.add_argument("--loss-steps", type=int, default=3, help="first steps whose losses are compared")
  p.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
  p.add_argument("--impl", default="auto", choices=["auto", "triton", "xla"], help="the GLA op's attn_impl")
  p.add_argument("--remat", action="store_true", help="remat every block (--remat-policy)")
  p.add_argument("--remat-policy", default="full", help="with --remat: what a block keeps")
  p.add_argument("--loss-chunk", type=int, default=1024, help="chunked cross-entropy tokens per chunk (0: full)")
  p.add_argument("--meshes", nargs="+", default=None, help="e.g. fsdp=8 data=8 data=4,tensor=2 (default); none: only the baseline and the loss reference")
  p.add_argument("--devices", type=int, default=None, help="use the first N devices (default all)")
  p.add_argument("--lr", type=float, default=3e-4)
  p.add_argument("--warmup-steps", type=int, default=2, help="the optimizer's lr warmup")
  p.add_argument("--no-loss-check", action="store_true", help="skip the one-device global-batch reference")
  p.add_argument("--ref-accum", type=int, default=0, help="grad_accum of the reference (0: N devices)")
  p.add_argument("--loss-rtol", type=float, default=None, help="default 1e-5 (float32) / 2e-2 (bf16)")
  p.add_argument("--out", default=None, help="directory for scaling.json and scaling.md")
  p.add_argument("--reuse", default=None,
                 help="a previous scaling.json (same devices, dtype, shape): keep its runs not re-run now, its "
                      "baseline and loss reference (so one report can be built over several calls)")
  args = p.parse_args(argv)
  for name in ("batch_per_device", "seq"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  for name in ("steps", "warmup", "loss_steps", "ref_accum", "loss_chunk"):
    if getattr(args, name) < 0:
      p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
  try:
    [parse_mesh(m) for m in args.meshes or [] if m != "none"]
  except ValueError as e:
    p.error(str(e))
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  devices = jax.devices()[:args.devices] if args.devices else jax.devices()
  dev = devices[0]
  info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "jax": jax.__version__, "device": getattr(dev, "device_kind", dev.platform), "platform": dev.platform,
          "devices": len(devices), "dtype": args.dtype, "impl": args.impl,
          "remat": args.remat_policy if args.remat else "none", "loss_chunk": args.loss_chunk,
          "steps": args.steps, "warmup": args.warmup, "overrides": args.set}
  print(json.dumps(info), flush=True)
  report = {"info": info, "models": []}
  for model in args.model:
    report["models"].append(scale_model(args, model, devices))
    text = markdown(report)
    print(text, flush=True)
    if args.out:  # after every model: a later model's failure keeps the earlier results
      os.makedirs(args.out, exist_ok=True)
      with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump(report, f, indent=1)
      with open(os.path.join(args.out, "scaling.md"), "w") as f:
        f.write(text)
  return report


if __name__ == "__main__":
  main()
  sys.exit(0)
