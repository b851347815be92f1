"""End-to-end training throughput: tokens/s and MFU of the jitted train step (fwd + bwd + AdamW).

    python benchmarks/bench_train.py --model gla_340m --batch 16 8 --seq 2048 --steps 30
    python benchmarks/bench_train.py --model gla_tiny --batch 8 --seq 256 --steps 5     # CPU smoke run
    python benchmarks/bench_train.py --batch 16 --loss-chunk 0 1024 --remat-policy none dots_saveable \
        --compare-fla --fla-cache .fla_autotune.tgz --out results.json                   # GPU, one call

Variants: every (--loss-chunk, --remat-policy) pair is timed on one initialised state (init once per batch
size; the state keeps training from variant to variant, which does not change the time). Peak memory per
variant is the compiled step's (arguments + temporaries + outputs − donated aliases, XLA's memory
analysis); `peak_bytes_in_use` is the process's running maximum, so only its first variant's is its own.

--compare-fla: this process only orchestrates (it never touches the GPU): a child process runs the JAX
variants above, then a torch child (benchmarks/bench_train_fla.py) times fla's `*ForCausalLM` of the same config
(gla_jax.convert.fla.config_to_fla: fused norm / swiglu / cross-entropy as the config says), float32
params, bf16 autocast, fused AdamW (same lr, betas, eps, weight decay, clipping at 1.0), the same batch ×
seq (the batch our first variant ran at) and steps; it reports step time, tokens/s, peak memory (torch's
max_memory_allocated) and the first step's time (Triton compile + fla's autotune; --fla-configs narrows
the autotune, 0 = fla's full search). One JSON (--out) and a markdown table with fla ÷ ours per variant.
fla is optional: without torch, fla or a CUDA device the fla row says why it was skipped.

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
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import nnx  # noqa: E402

from gla_jax.models import GLAConfig, build_model, presets  # noqa: E402
from gla_jax.models.configs.base import REMAT_POLICIES  # noqa: E402
from train import mesh as mesh_lib  # noqa: E402
from train import state as state_lib  # noqa: E402
from train import step as step_lib  # noqa: E402
from train.config import MeshConfig, OptimConfig  # noqa: E402
from train.data.mqar import StepIndexedSource  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_fla import triton_cache_in, triton_cache_out  # noqa: E402

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


def variant_config(base, remat_policy: str):
  """The model config of one --remat-policy value ("none": no remat; the rest: remat with that policy)."""
  return dataclasses.replace(base, remat=remat_policy != "none",
                             remat_policy="full" if remat_policy == "none" else remat_policy)


def bench_variants(base_cfg, variants, batch: int, seq: int, steps: int, warmup: int) -> list[dict]:
  """Times each (loss_chunk, remat_policy) variant on one state initialised once; a list of result dicts
  (an "error" key where a variant failed)."""
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  tx = state_lib.make_optimizer(OptimConfig(lr=3e-4, warmup_steps=10), total_steps=1000)
  t0 = time.perf_counter()
  state, _, shardings = state_lib.init_state(lambda rngs: build_model(base_cfg, rngs=rngs), tx, mesh, seed=0)
  jax.block_until_ready(state)
  t_init = time.perf_counter() - t0
  abstract_params = jax.eval_shape(lambda: state.params)
  n_params = state_lib.param_count(abstract_params)
  fl = flops_per_token(base_cfg, abstract_params, seq)
  src = StepIndexedSource("synthetic", global_batch=batch, seq_len=seq, vocab_size=base_cfg.vocab_size, seed=0)
  batches = [mesh_lib.global_batch(src.next(), mesh) for _ in range(4)]  # rotate a few real-random batches
  out = []
  for loss_chunk, policy in variants:
    tag = {"loss_chunk": loss_chunk, "remat_policy": policy, "batch": batch, "seq": seq}
    if any(x.is_deleted() for x in jax.tree.leaves(state)):  # a failed step consumed the donated state
      state, _, _ = state_lib.init_state(lambda rngs: build_model(base_cfg, rngs=rngs), tx, mesh, seed=0)
    try:
      cfg = variant_config(base_cfg, policy)
      model_def, _ = state_lib.abstract_model(lambda rngs: build_model(cfg, rngs=rngs))
      step = step_lib.make_train_step(model_def, tx, mesh, shardings, loss_chunk=loss_chunk)
      t0 = time.perf_counter()
      with jax.set_mesh(mesh), nnx.logical_axis_rules(step_lib.TRACE_RULES):
        compiled = step.jitted.lower(state, batches[0]).compile()
      ma = compiled.memory_analysis()
      state, m = compiled(state, batches[0])
      loss0 = float(m["loss"])
      t_compile = time.perf_counter() - t0
      for i in range(warmup):
        state, m = compiled(state, batches[i % 4])
      jax.block_until_ready(state)
      times, losses = [], []
      for i in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, batches[i % 4])
        losses.append(float(m["loss"]))  # blocks on the step
        times.append(time.perf_counter() - t)
    except Exception as e:  # OOM or a kernel that does not run here
      out.append({**tag, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})
      print(f"variant {tag}: failed: {out[-1]['error']}", flush=True)
      continue
    med = statistics.median(times)
    tokens = batch * seq
    compiled_bytes = None
    if ma is not None:
      compiled_bytes = (ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes
                        - ma.alias_size_in_bytes)
    mem = jax.devices()[0].memory_stats() or {}
    out.append({**tag, "tokens_per_step": tokens, "params": n_params, "init_s": t_init, "compile_s": t_compile,
                "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
                "tokens_per_s": tokens / med, "flops_per_token": fl, "model_flops_per_s": fl["total"] * tokens / med,
                "loss_first": loss0, "loss_last": losses[-1], "skipped": int(state.skipped),
                "compiled_bytes": compiled_bytes, "temp_bytes": getattr(ma, "temp_size_in_bytes", None),
                "peak_bytes_in_use": mem.get("peak_bytes_in_use")})
    print(json.dumps(out[-1]), flush=True)
    t_init = 0.0  # the state is shared: only the first variant pays for init
  return out


def _is_oom(msg: str) -> bool:
  return "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()


# ------------------------------------------------------------------------------------------------ fla


def fla_spec(model_cfg, batch: int, seq: int, steps: int, warmup: int, fla_configs: int) -> dict:
  """What the torch child needs (JSON): fla's config dict, the shape, the step counts, the optimizer."""
  from gla_jax.convert.fla import config_to_fla
  optim = OptimConfig(lr=3e-4, warmup_steps=10)
  return {"config": config_to_fla(model_cfg), "batch": batch, "seq": seq, "steps": steps, "warmup": warmup,
          "fla_configs": fla_configs, "optim": dataclasses.asdict(optim)}


def run_child(cmd: list[str], timeout: float, what: str) -> str | None:
  """Runs a child process (its output passes through); None, or why it failed."""
  try:
    rc = subprocess.run(cmd, timeout=timeout).returncode
  except subprocess.TimeoutExpired:
    return f"{what} timed out after {timeout:.0f} s"
  return None if rc == 0 else f"{what} exited with {rc}"


def compare_fla(args, argv: list[str]) -> dict:
  """--compare-fla: the JAX child, then the fla child; both results in one dict (this process never
  touches a device, so each child has the whole GPU)."""
  work = tempfile.mkdtemp(prefix="bench_train_")
  jax_out, fla_out, spec_path = (os.path.join(work, n) for n in ("jax.json", "fla.json", "spec.json"))
  me = os.path.abspath(__file__)
  err = run_child([sys.executable, me, *argv, "--jax-only", "--out", jax_out], args.jax_timeout, "the JAX run")
  ours = json.load(open(jax_out)) if os.path.isfile(jax_out) else {"info": {}, "results": []}
  if err:
    ours["error"] = err
  ran = [r for r in ours["results"] if "error" not in r]
  cfg = model_config(args, args.impl[0])
  batch = ran[0]["batch"] if ran else args.batch[-1]
  fla = {"skipped": "no JAX result to compare with"} if not ran else None
  if fla is None:
    try:
      spec = fla_spec(cfg, batch, args.seq, args.fla_steps or args.steps, args.warmup, args.fla_configs)
    except ValueError as e:  # a config fla cannot express
      spec, fla = None, {"skipped": str(e)}
  if fla is None:
    json.dump(spec, open(spec_path, "w"))
    triton_cache_in(args.fla_cache)
    worker = os.path.join(os.path.dirname(me), "bench_train_fla.py")
    err = run_child([sys.executable, worker, spec_path, fla_out], args.fla_timeout, "the fla run")
    fla = json.load(open(fla_out)) if os.path.isfile(fla_out) else {}
    if err:
      fla["error"] = err
    if args.fla_cache_out:
      fla["autotune_files_saved"] = triton_cache_out(args.fla_cache_out)
  for r in ran:  # > 1: ours is faster / leaner
    if fla.get("step_s_median"):
      r["fla_step_over_ours"] = fla["step_s_median"] / r["step_s_median"]
    if fla.get("peak_bytes_in_use") and r.get("compiled_bytes"):
      r["fla_peak_over_ours"] = fla["peak_bytes_in_use"] / r["compiled_bytes"]
  return {**ours, "fla": fla}


# ------------------------------------------------------------------------------------------------ main


def model_config(args, impl: str):
  base = getattr(presets, args.model)()
  cfg = dataclasses.replace(base, dtype=args.dtype, param_dtype="float32")
  if isinstance(cfg, GLAConfig):
    cfg = dataclasses.replace(cfg, attn_impl=impl)
  return cfg


def variants_of(args, cfg=None) -> list[tuple[int, str]]:
  """(loss_chunk, remat_policy) pairs: --remat-policy's, else --remat's "full", else the model config's own
  (the large presets: remat with "dots_and_op_out", which their scanned step needs; "none" if no remat)."""
  own = ("none" if not cfg.remat else cfg.remat_policy) if cfg is not None else "none"
  policies = args.remat_policy or (["full"] if args.remat else [own])
  return [(c, p) for c in args.loss_chunk for p in policies]


def parse_args(argv=None):
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
  p.add_argument("--remat", action="store_true", help="remat every block (policy full); see --remat-policy")
  p.add_argument("--remat-policy", nargs="+", default=None, choices=REMAT_POLICIES,
                 help="variants: remat policies to time ('none': no remat); default: --remat's")
  p.add_argument("--loss-chunk", type=int, nargs="+", default=[1024],
                 help="variants: chunked cross-entropy tokens per chunk (0: full logits)")
  p.add_argument("--matmul_peak", action="store_true", help="also measure a large bf16 matmul")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--compare-fla", action="store_true", help="then time fla's model in a torch process")
  p.add_argument("--fla-steps", type=int, default=None, help="fla's timed steps (default --steps)")
  p.add_argument("--fla-configs", type=int, default=0, help="fla autotune configs per kernel; 0 = full")
  p.add_argument("--fla-cache", default=None, help="a tar of Triton *.autotune.json for TRITON_CACHE_DIR")
  p.add_argument("--fla-cache-out", default=None, help="save the autotune results here (tar.gz)")
  p.add_argument("--fla-timeout", type=float, default=300, help="seconds for the whole fla process")
  p.add_argument("--jax-timeout", type=float, default=480, help="seconds for the JAX child (--compare-fla)")
  p.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)  # the --compare-fla child
  args = p.parse_args(argv)
  if any(c < 0 for c in args.loss_chunk):
    p.error(f"--loss-chunk values must be >= 0, got {args.loss_chunk}")
  if args.fla_configs < 0:
    p.error(f"--fla-configs must be >= 0, got {args.fla_configs}")
  return args


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.compare_fla and not args.jax_only:
    out = compare_fla(args, argv)
    print_table(out["results"], out.get("fla"), args.seq)
    if args.out:
      with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0
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
    cfg = model_config(args, impl)
    ok = False
    for b in args.batch:
      try:
        rs = bench_variants(cfg, variants_of(args, cfg), b, args.seq, args.steps, args.warmup)
      except Exception as e:  # init failed (OOM): try the next size
        rs = [{"batch": b, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}]
      for r in rs:
        r["impl"] = impl
        if "error" not in r:
          r.update(datasheet_peak=peak, measured_peak=measured,
                   mfu=(r["model_flops_per_s"] / peak) if peak else None,
                   mfu_6n=(r["flops_per_token"]["dense"] * r["tokens_per_s"] / peak) if peak else None,
                   mfu_measured=(r["model_flops_per_s"] / measured) if measured else None)
      results.extend(rs)
      if any("error" not in r for r in rs):
        ok = True
        break
      if not any(_is_oom(r["error"]) for r in rs):
        break  # not a memory problem: a smaller batch will not help
    if (ok and not args.compare) or not isinstance(cfg, GLAConfig):
      break
  print_table(results, None, args.seq)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"info": info, "results": results}, f, indent=1)
  return 0


def _gb(x):
  return f"{x / 1e9:.2f} GB" if x else "n/a"


def print_table(results: list[dict], fla: dict | None, seq: int) -> None:
  print("\n| impl | loss_chunk | remat | batch x seq | step (median) | tokens/s | model TFLOP/s | MFU (989) | "
        "MFU 6N only | step memory (compiled) | process peak | compile | fla ÷ ours (time) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    head = f"| {r.get('impl', '')} | {r.get('loss_chunk', '')} | {r.get('remat_policy', '')} | {r['batch']} x {seq} |"
    if "error" in r:
      print(f"{head} failed: {r['error'][:60]} | | | | | | | | |")
      continue
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    mfu6 = f"{100 * r['mfu_6n']:.1f}%" if r.get("mfu_6n") is not None else "n/a"
    ratio = f"{r['fla_step_over_ours']:.2f}×" if r.get("fla_step_over_ours") else ""
    print(f"{head} {1e3 * r['step_s_median']:.1f} ms | {r['tokens_per_s']:,.0f} | "
          f"{r['model_flops_per_s'] / 1e12:.1f} | {mfu} | {mfu6} | {_gb(r.get('compiled_bytes'))} | "
          f"{_gb(r.get('peak_bytes_in_use'))} | {r['compile_s']:.0f} s | {ratio} |")
  if fla is None:
    return
  if "step_s_median" not in fla:
    why = fla.get("skipped") or fla.get("error") or "no result"
    first = f" (first step {fla['first_step_s']:.0f} s)" if "first_step_s" in fla else ""
    print(f"| fla | | | | {why}{first} | | | | | | | | |")
    return
  print(f"| fla {fla.get('fla', '')} | fused CE | none | {fla['batch']} x {fla['seq']} | "
        f"{1e3 * fla['step_s_median']:.1f} ms | {fla['tokens_per_s']:,.0f} | | | | | "
        f"{_gb(fla['peak_bytes_in_use'])} (torch max allocated) | first step {fla['first_step_s']:.0f} s "
        f"(autotune{', ' + str(fla['fla_configs']) + ' configs' if fla.get('fla_configs') else ', full'}) | 1.00× |")
  ok = [r for r in results if "error" not in r]
  if ok:
    best = min(ok, key=lambda r: r["step_s_median"])
    print(f"\nsame run: ours {1e3 * best['step_s_median']:.1f} ms/step (loss_chunk {best['loss_chunk']}, remat "
          f"{best['remat_policy']}, compiled {_gb(best.get('compiled_bytes'))}, first step {best['init_s']:.0f} s "
          f"init + {best['compile_s']:.0f} s compile) vs fla {1e3 * fla['step_s_median']:.1f} ms "
          f"({_gb(fla['peak_bytes_in_use'])}, first step {fla['first_step_s']:.0f} s): fla ÷ ours = "
          f"{fla['step_s_median'] / best['step_s_median']:.2f}×")


if __name__ == "__main__":
  sys.exit(main())
