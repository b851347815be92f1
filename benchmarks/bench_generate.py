"""Decoding throughput of GLA-340M: the decode op alone, `generate()` per decode impl, and fla's generate.

    python benchmarks/bench_generate.py --out gen.json                   # GPU: micro + generate
    python benchmarks/bench_generate.py --compare-fla --fla-cache .fla_autotune.tgz --out gen.json
    python benchmarks/bench_generate.py --model gla_tiny --batch 2 --prompt 32 --new 8 \\
        --impl xla triton_interpret --micro-steps 4 --reps 1                # CPU smoke run

micro: one decode step of `fused_recurrent_gla` (T = 1) at the model's layer shape (340M: H=4, K=128,
V=256; also the 1.3B layer H=4, K=256, V=512) for B in --batch, per impl: "xla" (update, then einsum),
"triton" (the Pallas kernel), "jax_triton" (the Triton-language kernel), and "copy" (XLA's h·0.999, one
read + one write of the state: what this GPU sustains). --micro-steps steps run in one jitted fori_loop
(state carried and donated), so the time per step has no dispatch cost. GB/s = 2 · state bytes / time
(a step must read and write the float32 state once: the floor); beside it the fraction of the H200's
4.8 TB/s HBM3e spec (~4.0 TB/s is the usual measured copy rate). --sweep also times the two kernels
over V tiles × warps at the model's layer (the defaults are `DecodeOptions.make`'s).

generate: `gla_jax.generate.generate` (greedy) of the random-init model (bf16 compute, --param-dtype
weights) on random prompts [B, --prompt], --new tokens, the decode steps forced to each --impl with
`pallas_kernels.gla.ops.decode_impl` (jax.clear_caches() between impls: generate's jit keys on the
model, not on the impl). prefill = the jitted `model.prefill` alone (the chunk kernel; impl-independent,
timed once per batch; last-position logits only, as generate's prefill);
decode tokens/s = B · (new − 1) / (generate − prefill); total tokens/s = B · new / generate.

--compare-fla: this process only orchestrates: a JAX child runs the above, then a torch child
(benchmarks/bench_generate_fla.py) times fla's `GLAForCausalLM.generate` of the same config (random
weights in bf16, greedy, use_cache=True, min_new_tokens = max_new_tokens = --new so no early stop) at the
same batches; fla's prefill is its generate(max_new_tokens=1). One JSON (--out) and markdown lines
(printed, and written next to --out as .md); the children's own results stay beside it
(*.jax.json, *.fla.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import nnx  # noqa: E402

from gla_jax.generate import generate  # noqa: E402
from gla_jax.models import build_model, presets  # noqa: E402
from pallas_kernels.gla import ops as gla_ops  # noqa: E402
from pallas_kernels.gla.ops import fused_recurrent_gla  # noqa: E402
from bench_train import run_child  # noqa: E402  (a child process's failure as one line)

HBM_SPEC_GBPS = 4800.0  # H200 HBM3e datasheet
F32 = jnp.float32


class Results:
  """The run's record, written to --out after every measurement (a timeout keeps what finished)."""

  def __init__(self, path: str | None, info: dict):
    self.path, self.data = path, {"info": info, "micro": [], "sweep": [], "generate": []}

  def add(self, section: str, rec: dict) -> None:
    self.data[section].append(rec)
    print(json.dumps({section: rec}), flush=True)
    self.save()

  def save(self) -> None:
    if self.path:
      with open(self.path, "w") as f:
        json.dump(self.data, f, indent=1)


def _median_time(fn, reps: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def impl_status(impl: str) -> str | None:
  """Why `impl` cannot run the decode step here (None if it can)."""
  if impl == "copy":
    return None
  op = gla_ops.FUSED_RECURRENT_GLA
  found = op.lookup(impl)
  if found is None:
    if impl == "jax_triton":
      from pallas_kernels.gla.jax_triton import decode as jt_decode
      return f"jax_triton unavailable ({jt_decode.IMPORT_ERROR})"
    return f"not an impl of fused_recurrent_gla (have {op.available_impls()})"
  if op.platform() not in found.platforms:
    return f"runs on {sorted(found.platforms)}, not on {op.platform()}"
  return None


# ------------------------------------------------------------------------------------------------ micro


def _step_fn(impl: str, q, k, v, g, bv=None, num_warps=None):
  """h → (o [B, H, V], h') for one decode step of `impl` (bv / num_warps: the kernels' tiles)."""
  if impl == "copy":
    return lambda h: (h[:, :, 0, :], h * 0.999)
  if bv is not None or num_warps is not None:
    if impl in ("triton", "triton_interpret"):
      from pallas_kernels.gla.triton.decode import gla_decode_step
      f = functools.partial(gla_decode_step, interpret=impl == "triton_interpret")
    else:
      from pallas_kernels.gla.jax_triton.decode import gla_decode_step_jax_triton as f
    return lambda h: f(q[:, 0], k[:, 0], v[:, 0], g[:, 0], h, bv=bv, num_warps=num_warps)

  def step(h):
    o, h = fused_recurrent_gla(q, k, v, g, initial_state=h, output_final_state=True, impl=impl)
    return o[:, 0], h
  return step


def time_step(step, h0, steps: int, reps: int) -> float:
  """Seconds per step of `step` inside one jitted fori_loop of `steps` steps (state donated)."""
  def loop(h):
    def body(_, c):
      h, acc = c
      o, h = step(h)
      return h, acc + o.astype(F32)
    acc0 = jnp.zeros((h.shape[0], h.shape[1], h.shape[3]), F32)
    return jax.lax.fori_loop(0, steps, body, (h, acc0), unroll=min(steps, 8))
  f = jax.jit(loop, donate_argnums=0)
  state = {"h": f(h0)[0]}  # compile + warm up

  def once():
    state["h"], acc = f(state["h"])
    return acc
  med, _ = _median_time(once, reps)
  return med / steps


def micro_inputs(B, H, K, V, seed=0):
  ks = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(ks[0], (B, 1, H, K), jnp.bfloat16)
  k = jax.random.normal(ks[1], (B, 1, H, K), jnp.bfloat16) * K ** -0.5
  v = jax.random.normal(ks[2], (B, 1, H, V), jnp.bfloat16)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, 1, H, K))) / 16
  h0 = jax.random.normal(ks[4], (B, H, K, V), F32)
  return q, k, v, g, h0


def run_micro(args, shapes, res: Results) -> None:
  """Every (B, layer, impl) row first, then (--sweep) the tile sweeps of the model's own layer."""
  sweeps = []
  for B in args.batch:
    for (H, K, V, name) in shapes:
      state_bytes = 4 * B * H * K * V
      q, k, v, g, h0 = micro_inputs(B, H, K, V)
      for impl in [*args.impl, "copy"]:
        rec = {"layer": name, "B": B, "H": H, "K": K, "V": V, "impl": impl, "state_MiB": state_bytes / 2**20}
        why = impl_status(impl)
        if why:
          res.add("micro", {**rec, "skipped": why})
          continue
        try:
          t = time_step(_step_fn(impl, q, k, v, g), jnp.array(h0), args.micro_steps, args.reps)
          gbps = 2 * state_bytes / t / 1e9
          rec.update(us_per_step=t * 1e6, GBps=gbps, frac_of_spec=gbps / HBM_SPEC_GBPS)
        except Exception as e:  # noqa: BLE001  (a benchmark row records its failure and goes on)
          rec["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        res.add("micro", rec)
      if args.sweep and name == args.model:
        sweeps.append((B, H, K, V, name))
  for B, H, K, V, name in sweeps:
    run_sweep(args, B, H, K, V, name, micro_inputs(B, H, K, V), res)


def run_sweep(args, B, H, K, V, name, inputs, res: Results) -> None:
  from pallas_kernels.common.triton.decode import DecodeOptions
  q, k, v, g, h0 = inputs
  default = DecodeOptions.make("vector", scale=K ** -0.5, B=B, H=H, K=K, V=V, has_h0=True, has_reset=False)
  Vp = max(16, 1 << (V - 1).bit_length())
  kernels = ("triton", "jax_triton", "triton_interpret")  # the last: CPU smoke runs
  for impl in [i for i in kernels if i in args.impl and impl_status(i) is None]:
    for bv in [b for b in (16, 32, 64, 128) if b <= Vp and default.Kp * b <= 32768]:
      for warps in (4, 8):
        rec = {"layer": name, "B": B, "impl": impl, "bv": bv, "num_warps": warps,
               "default": (bv, warps) == (default.bv, default.num_warps)}
        try:
          t = time_step(_step_fn(impl, q, k, v, g, bv=bv, num_warps=warps), jnp.array(h0),
                        args.micro_steps, args.reps)
          rec.update(us_per_step=t * 1e6, GBps=2 * 4 * B * H * K * V / t / 1e9)
        except Exception as e:  # noqa: BLE001
          rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        res.add("sweep", rec)


# ------------------------------------------------------------------------------------------------ generate


def model_config(args):
  base = getattr(presets, args.model)()
  return dataclasses.replace(base, dtype=args.dtype, param_dtype=args.param_dtype)


def run_generate(args, res: Results) -> None:
  cfg = model_config(args)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  prefill = nnx.jit(lambda m, x: m.prefill(x, last_only=True))
  for B in args.batch:
    ids = jax.random.randint(jax.random.key(B), (B, args.prompt), 0, cfg.vocab_size, dtype=jnp.int32)
    prefill_s = None
    try:
      t = time.perf_counter()
      jax.block_until_ready(prefill(model, ids))
      first = time.perf_counter() - t
      prefill_s, _ = _median_time(lambda: prefill(model, ids), args.reps)
      res.add("generate", {"B": B, "impl": "prefill", "prefill_s": prefill_s, "first_call_s": first,
                           "prefill_tok_s": B * args.prompt / prefill_s})
    except Exception as e:  # noqa: BLE001
      res.add("generate", {"B": B, "impl": "prefill", "error": f"{type(e).__name__}: {str(e)[:500]}"})
    for impl in args.impl:
      rec = {"B": B, "impl": impl, "prompt": args.prompt, "new": args.new}
      why = impl_status(impl)
      if why:
        res.add("generate", {**rec, "skipped": why})
        continue
      try:
        jax.clear_caches()
        with gla_ops.decode_impl(impl):
          run = lambda: generate(model, ids, max_new_tokens=args.new, greedy=True)
          t = time.perf_counter()
          out = jax.block_until_ready(run())
          rec["first_call_s"] = time.perf_counter() - t  # compile + one run
          total, times = _median_time(run, args.reps)
        rec.update(generate_s=total, generate_s_all=times, total_tok_s=B * args.new / total,
                   tokens_head=[int(x) for x in out[0, args.prompt:args.prompt + 8]])
        if prefill_s is not None and total > prefill_s:
          rec.update(decode_s=total - prefill_s, decode_tok_s=B * (args.new - 1) / (total - prefill_s),
                     ms_per_decode_step=(total - prefill_s) / (args.new - 1) * 1e3)
      except Exception as e:  # noqa: BLE001
        rec["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        traceback.print_exc()
      res.add("generate", rec)
    same = {tuple(r["tokens_head"]) for r in res.data["generate"] if r.get("B") == B and "tokens_head" in r}
    if len(same) > 1:
      print(f"note: B={B}: greedy tokens differ between impls (bf16 ties can flip argmax): {same}")


# ------------------------------------------------------------------------------------------------ fla


def compare_fla(args, argv: list[str]) -> dict:
  """The JAX child, then the fla child (this process never touches the GPU); one dict."""
  work = tempfile.mkdtemp(prefix="bench_generate_")
  spec_path = os.path.join(work, "spec.json")
  # the children's results beside --out: a timeout of this process still leaves them
  base = os.path.splitext(args.out)[0] if args.out else os.path.join(work, "gen")
  jax_out, fla_out = base + ".jax.json", base + ".fla.json"
  me = os.path.abspath(__file__)
  err = run_child([sys.executable, me, *argv, "--jax-only", "--out", jax_out], args.jax_timeout, "the JAX run")
  ours = json.load(open(jax_out)) if os.path.isfile(jax_out) else {"info": {}, "micro": [], "sweep": [],
                                                                   "generate": []}
  if err:
    ours["error"] = err
  fla = None
  try:
    from gla_jax.convert.fla import config_to_fla
    spec = {"config": config_to_fla(model_config(args)), "batch": args.batch, "prompt": args.prompt,
            "new": args.new, "reps": args.reps, "timeout": args.fla_timeout}
  except Exception as e:  # noqa: BLE001  (a config fla cannot express)
    fla = {"skipped": f"{type(e).__name__}: {e}"}
  if fla is None:
    json.dump(spec, open(spec_path, "w"))
    from bench_train_fla import triton_cache_in
    triton_cache_in(args.fla_cache)
    worker = os.path.join(os.path.dirname(me), "bench_generate_fla.py")
    err = run_child([sys.executable, worker, spec_path, fla_out], args.fla_timeout, "the fla run")
    fla = json.load(open(fla_out)) if os.path.isfile(fla_out) else {}
    if err:
      fla["error"] = err
  return {**ours, "fla": fla}


# ------------------------------------------------------------------------------------------------ report


def markdown(data: dict) -> list[str]:
  lines = ["| layer | B | impl | µs / step | GB/s (2·state / t) | of 4.8 TB/s |", "|---|---|---|---|---|---|"]
  for r in data.get("micro", []):
    if "us_per_step" in r:
      lines.append(f"| {r['layer']} {r['H']}×{r['K']}×{r['V']} | {r['B']} | {r['impl']} | {r['us_per_step']:.1f} | "
                   f"{r['GBps']:.0f} | {100 * r['frac_of_spec']:.0f} % |")
    else:
      lines.append(f"| {r['layer']} | {r['B']} | {r['impl']} | {r.get('skipped') or r.get('error', '')[:80]} | | |")
  best = {}
  for r in data.get("sweep", []):
    key = (r["layer"], r["B"], r["impl"])
    if "us_per_step" in r and (key not in best or r["us_per_step"] < best[key]["us_per_step"]):
      best[key] = r
  for (layer, B, impl), r in best.items():
    lines.append(f"sweep best {layer} B={B} {impl}: bv={r['bv']} warps={r['num_warps']} "
                 f"{r['us_per_step']:.1f} µs ({r['GBps']:.0f} GB/s){' (the default)' if r['default'] else ''}")
  lines += ["", "| B | impl | prefill s | generate s | decode tok/s | ms / decode step | total tok/s |",
            "|---|---|---|---|---|---|---|"]
  for r in data.get("generate", []):
    if r["impl"] == "prefill":
      if "prefill_s" in r:
        lines.append(f"| {r['B']} | prefill | {r['prefill_s']:.3f} | | | | |")
      continue
    if "generate_s" in r:
      lines.append(f"| {r['B']} | {r['impl']} | | {r['generate_s']:.3f} | {r.get('decode_tok_s', 0):.0f} | "
                   f"{r.get('ms_per_decode_step', 0):.2f} | {r['total_tok_s']:.0f} |")
    else:
      lines.append(f"| {r['B']} | {r['impl']} | {r.get('skipped') or r.get('error', '')[:80]} | | | | |")
  fla = data.get("fla")
  if fla is not None:
    for r in fla.get("results", []):
      if "generate_s" in r:
        lines.append(f"| {r['B']} | fla | {r.get('prefill_s', 0):.3f} | {r['generate_s']:.3f} | "
                     f"{r.get('decode_tok_s', 0):.0f} | {r.get('ms_per_decode_step', 0):.2f} | {r['total_tok_s']:.0f} |")
      else:
        lines.append(f"| {r.get('B')} | fla | {r.get('error', '')[:80]} | | | | |")
    if "results" not in fla or fla.get("error"):
      lines.append(f"fla: {fla.get('skipped') or fla.get('error')}")
  return lines


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="gla_340m", help="a gla_jax.models.presets function name (GLA)")
  p.add_argument("--batch", type=int, nargs="+", default=[64, 1])
  p.add_argument("--prompt", type=int, default=2048)
  p.add_argument("--new", type=int, default=256)
  p.add_argument("--impl", nargs="+", default=["xla", "triton", "jax_triton"], help="decode impls")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--param-dtype", default="bfloat16", help="weights (inference: bf16, as fla's)")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--micro-steps", type=int, default=200)
  p.add_argument("--no-micro", action="store_true")
  p.add_argument("--no-generate", action="store_true")
  p.add_argument("--sweep", action="store_true", help="also time the kernels over V tiles × warps")
  p.add_argument("--extra-layer", nargs=3, type=int, default=[4, 256, 512], metavar=("H", "K", "V"),
                 help="a second micro layer shape (default the 1.3B layer); H=0: none")
  p.add_argument("--out", default=None, help="JSON results (and .md beside it)")
  p.add_argument("--compare-fla", action="store_true", help="then fla's generate in a torch child")
  p.add_argument("--fla-cache", default=None, help="a tar of Triton *.autotune.json for TRITON_CACHE_DIR")
  p.add_argument("--fla-timeout", type=float, default=150)
  p.add_argument("--jax-timeout", type=float, default=300)
  p.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.new < 2 or args.prompt < 1 or min(args.batch) < 1:
    p.error("--new must be >= 2, --prompt and --batch >= 1")
  return args


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.out and os.path.dirname(args.out):
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
  if args.compare_fla and not args.jax_only:
    data = compare_fla(args, [a for a in argv if a != "--compare-fla"])
  else:
    cfg = model_config(args)
    H, K, V = cfg.num_heads, cfg.key_dim // cfg.num_heads, cfg.value_dim // cfg.num_heads
    info = {"device": str(jax.devices()[0]), "jax": jax.__version__, "model": args.model,
            "layers": cfg.num_hidden_layers, "layer_shape": [H, K, V], "dtype": args.dtype,
            "param_dtype": args.param_dtype, "prompt": args.prompt, "new": args.new,
            "impls_available": list(gla_ops.FUSED_RECURRENT_GLA.available_impls())}
    res = Results(args.out, info)
    shapes = [(H, K, V, args.model)]
    if args.extra_layer[0] and tuple(args.extra_layer) != (H, K, V):
      shapes.append((*args.extra_layer, "extra"))
    if not args.no_micro:
      run_micro(args, shapes, res)
    if not args.no_generate:
      run_generate(args, res)
    data = res.data
  if args.jax_only:
    return 0
  lines = markdown(data)
  print("\n".join(lines))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(data, f, indent=1)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
      f.write("\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
