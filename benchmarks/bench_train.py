"""End-to-end training throughput: tokens/s and MFU of the jitted train step (fwd + bwd + AdamW).

    python benchmarks/bench_train.py --model gla_340m --batch 16 8 --seq 2048 --steps 30
    python benchmarks/bench_train.py --model gla_tiny --batch 8 --seq 256 --steps 5     # CPU smoke run

The step is the trainer's own (`train.step.make_train_step`: bf16 compute, float32 params and Adam state,
global-norm clipping, non-finite check), on one device, with synthetic tokens already on the device, so the
number is the step itself (host data loading overlaps it in the trainer). Each batch size in `--batch` is
tried in order until one fits in memory.

FLOPs per token (fwd + bwd):
* 6 · N_matmul, N_matmul = every ≥2-D param except an untied input embedding (a lookup, not a matmul);
  a tied embedding counts once, as the lm_head;
* GLA: 3.5 · 2 · H · (C·K_h + C·V_h + 2·K_h·V_h) per layer (the chunked op's count (benchmarks/RESULTS.md),
  C = chunk 64); Transformer: 12 · L · D · T (PaLM's attention term, no causal discount).
MFU = FLOPs/token · tokens/s ÷ peak; the peak is the datasheet's dense bf16 (H100 SXM 989 TFLOP/s, H200
the same chip) and, beside it, the rate of a large bf16 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gla_jax.models import GLAConfig, build_model, presets  # noqa: E402
from train import mesh as mesh_lib  # noqa: E402
from train import state as state_lib  # noqa: E402
from train import step as step_lib  # noqa: E402
from train.config import MeshConfig, OptimConfig  # noqa: E402
from train.data.mqar import StepIndexedSource  # noqa: E402

DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def datasheet_peak(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, peak in DATASHEET_BF16.items():
    if name in kind:
      return peak
  return None


def measured_matmul_peak(n: int = 8192, reps: int = 20) -> float:
  """bf16 [n, n] @ [n, n] with f32 accumulation, median rate in FLOP/s."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / statistics.median(times)


def flops_per_token(config, abstract_params, seq_len: int) -> dict[str, float]:
  leaves = jax.tree_util.tree_leaves_with_path(abstract_params)
  n_matmul = 0
  for path, x in leaves:
    name = jax.tree_util.keystr(path)
    if len(x.shape) < 2:
      continue
    if "embedding" in name and not config.tie_word_embeddings:
      continue
    n_matmul += math.prod(x.shape)
  dense = 6.0 * n_matmul
  L, H = config.num_hidden_layers, config.num_heads
  if isinstance(config, GLAConfig):
    C = config.chunk_size
    K_h, V_h = config.key_dim // H, config.value_dim // H
    mixer = L * 3.5 * 2 * H * (C * K_h + C * V_h + 2 * K_h * V_h)
  else:
    mixer = 12.0 * L * config.hidden_size * seq_len
  return {"n_matmul": n_matmul, "dense": dense, "mixer": mixer, "total": dense + mixer}


def bench_one(model_cfg, batch: int, seq: int, steps: int, warmup: int) -> dict:
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  tx = state_lib.make_optimizer(OptimConfig(lr=3e-4, warmup_steps=10), total_steps=1000)
  build = lambda rngs: build_model(model_cfg, rngs=rngs)
  t0 = time.perf_counter()
  state, model_def, shardings = state_lib.init_state(build, tx, mesh, seed=0)
  jax.block_until_ready(state)
  t_init = time.perf_counter() - t0
  abstract_params = jax.eval_shape(lambda: state.params)
  n_params = state_lib.param_count(abstract_params)
  step = step_lib.make_train_step(model_def, tx, mesh, shardings)
  src = StepIndexedSource("synthetic", global_batch=batch, seq_len=seq, vocab_size=model_cfg.vocab_size, seed=0)
  batches = [mesh_lib.global_batch(src.next(), mesh) for _ in range(4)]  # rotate a few real-random batches
  t0 = time.perf_counter()
  state, m = step(state, batches[0])
  loss0 = float(m["loss"])
  t_compile = time.perf_counter() - t0
  for i in range(warmup):
    state, m = step(state, batches[i % 4])
  jax.block_until_ready(state)
  times, losses = [], []
  for i in range(steps):
    t = time.perf_counter()
    state, m = step(state, batches[i % 4])
    losses.append(float(m["loss"]))  # blocks on the step
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  tokens = batch * seq
  fl = flops_per_token(model_cfg, abstract_params, seq)
  mem = jax.devices()[0].memory_stats() or {}
  return {"batch": batch, "seq": seq, "tokens_per_step": tokens, "params": n_params, "init_s": t_init,
          "compile_s": t_compile, "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
          "tokens_per_s": tokens / med, "flops_per_token": fl, "model_flops_per_s": fl["total"] * tokens / med,
          "loss_first": loss0, "loss_last": losses[-1], "skipped": int(state.skipped),
          "peak_bytes_in_use": mem.get("peak_bytes_in_use")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="gla_340m", help="a gla_jax.models.presets function name")
  p.add_argument("--batch", type=int, nargs="+", default=[16, 8, 4], help="batch sizes to try, largest first")
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--impl", nargs="+", default=["auto", "xla"],
                 help="attn_impl values, tried in order until one runs (all of them with --compare)")
  p.add_argument("--compare", action="store_true", help="time every --impl, not only the first that runs")
  p.add_argument("--remat", action="store_true")
  p.add_argument("--matmul_peak", action="store_true", help="also measure a large bf16 matmul")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args(argv)

  dev = jax.devices()[0]
  info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "jax": jax.__version__, "device": getattr(dev, "device_kind", dev.platform), "platform": dev.platform,
          "model": args.model, "dtype": args.dtype}
  print(json.dumps(info), flush=True)
  peak = datasheet_peak(dev)
  measured = measured_matmul_peak() if args.matmul_peak else None
  if measured:
    print(f"measured bf16 matmul 8192^3: {measured / 1e12:.0f} TFLOP/s", flush=True)
  results = []
  for impl in args.impl:
    base = getattr(presets, args.model)()
    cfg = dataclasses.replace(base, dtype=args.dtype, param_dtype="float32", remat=args.remat)
    if isinstance(cfg, GLAConfig):
      cfg = dataclasses.replace(cfg, attn_impl=impl)
    ok = False
    for b in args.batch:
      try:
        r = bench_one(cfg, b, args.seq, args.steps, args.warmup)
      except Exception as e:  # OOM or a kernel that does not run here: try the next size / impl
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        print(f"impl={impl} batch={b}: failed: {msg}", flush=True)
        results.append({"impl": impl, "batch": b, "error": msg})
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
          continue
        break
      r.update(impl=impl, datasheet_peak=peak, measured_peak=measured,
               mfu=(r["model_flops_per_s"] / peak) if peak else None,
               mfu_6n=(r["flops_per_token"]["dense"] * r["tokens_per_s"] / peak) if peak else None,
               mfu_measured=(r["model_flops_per_s"] / measured) if measured else None)
      results.append(r)
      print(json.dumps(r), flush=True)
      ok = True
      break
    if (ok and not args.compare) or not isinstance(base, GLAConfig):
      break
  print("\n| impl | batch x seq | step (median) | tokens/s | model TFLOP/s | MFU (989) | MFU 6N only | compile |")
  print("|---|---|---|---|---|---|---|---|")
  for r in results:
    if "error" in r:
      print(f"| {r['impl']} | {r['batch']} x {args.seq} | failed: {r['error'][:60]} | | | | | |")
      continue
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    mfu6 = f"{100 * r['mfu_6n']:.1f}%" if r["mfu_6n"] is not None else "n/a"
    print(f"| {r['impl']} | {r['batch']} x {r['seq']} | {1e3 * r['step_s_median']:.1f} ms | "
          f"{r['tokens_per_s']:,.0f} | {r['model_flops_per_s'] / 1e12:.1f} | {mfu} | {mfu6} | {r['compile_s']:.0f} s |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"info": info, "results": results}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
