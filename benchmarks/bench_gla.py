"""GLA op benchmark: our Pallas Triton kernels ("ours"), our Mosaic GPU kernels ("mosaic": forward and
backward, sm90) and the Mosaic forward with the Triton backward ("mosaic_fwd": impl "mosaic_gpu_fwd") vs the
chunked XLA op vs fla vs jla (benchmarks/RESULTS.md).

    python benchmarks/bench_gla.py jax    --out DIR [--shapes s1,s2] [--variants]   # ours, xla, jla
    python benchmarks/bench_gla.py fla    --out DIR [--shapes s1,s2]                # torch process
    python benchmarks/bench_gla.py report --out DIR                                 # markdown table

Every implementation runs on the same inputs (numpy RNG, so both processes draw identical values): bf16
q, k, v, do and float32 log-gates logsigmoid(randn)/16, scale K^-0.5. For each shape it reports the
median time of the forward and of forward+backward, the relative L2 error of o and of every gradient
against the float32 reference (`chunk_gla_jnp` on the bf16-rounded inputs upcast to float32, HIGHEST
precision), the ratio to the memory floor (bytes that must move at 3.0 TB/s) and the first-call
compile (+ autotune) time. The jax process saves the reference to DIR so that the fla process can
score fla against it. Results are JSON lines in DIR/{jax,fla}.jsonl.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import numpy as np

SHAPES = {  # B, T, H, K, V
    "s1": (8, 2048, 16, 128, 128),
    "s2": (2, 8192, 16, 128, 128),
    "s3": (4, 4096, 32, 64, 64),
    "s4": (8, 2048, 4, 256, 512),  # GLA 1.3B layer
    "s5": (8, 2048, 4, 128, 256),  # GLA 340M layer
    # T sweep at B·T = 16K (H=16, K=V=128); t2k = s1, t8k = s2
    "t4k": (4, 4096, 16, 128, 128),
    "t16k": (1, 16384, 16, 128, 128),
    "t32k": (1, 32768, 16, 128, 128),  # B·T = 32K: B cannot go below 1
    "tiny": (1, 128, 2, 32, 32),  # smoke test of this script (with --interpret on CPU)
}
BANDWIDTH = 3.0e12  # measured H100 copy bandwidth, bytes/s
GRADS = ("o", "dq", "dk", "dv", "dg")


def floor_ms(shape, bwd: bool) -> float:
  """Bytes that must move: fwd reads q, k, v (bf16), g (f32), writes o; bwd reads q, k, v, g, do and
  writes dq, dk, dv (bf16), dg (f32)."""
  B, T, H, K, V = shape
  per_token = 8 * K + 4 * V
  if bwd:
    per_token += 16 * K + 6 * V
  return B * T * H * per_token / BANDWIDTH * 1e3


def make_inputs_np(shape, seed: int = 0):
  """q, k, v, g, do as float32 numpy arrays (q, k, v, do are rounded to bf16 by the callers)."""
  B, T, H, K, V = shape
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, T, H, K), dtype=np.float32)
  k = rng.standard_normal((B, T, H, K), dtype=np.float32)
  v = rng.standard_normal((B, T, H, V), dtype=np.float32)
  x = rng.standard_normal((B, T, H, K), dtype=np.float32)
  g = (-np.logaddexp(np.float32(0), -x) / np.float32(16)).astype(np.float32)
  do = rng.standard_normal((B, T, H, V), dtype=np.float32)
  return q, k, v, g, do


def _emit(path, record):
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
  print(json.dumps(record), flush=True)


# ------------------------------------------------------------------------------------------------
# JAX: ours, xla, jla, and the float32 reference
# ------------------------------------------------------------------------------------------------


def _variants(shape):
  """Block-size / policy variants of ours to compare in one run: name → chunk_gla_triton kwargs."""
  import dataclasses
  from pallas_kernels.gla.triton.common import BlockSizes, padded_dim
  B, T, H, K, V = shape
  Kp, Vp = padded_dim(K), padded_dim(V)
  base = BlockSizes.get_default(B, H, Kp, Vp, T)
  out = {}
  for scan in (False, True):  # the state passes' policy
    if scan != base.state_scan:
      out["scan" if scan else "fused"] = dict(block_sizes=dataclasses.replace(base, state_scan=scan))
  out["dense_diag_tf32"] = dict(block_sizes=dataclasses.replace(base, dense_diag_tf32=True))
  if base.fwd_parallel:  # the sequence-parallel forward's states recomputed in the backward (the old way)
    out["recompute_states"] = dict(keep_states=False)
  return out


def _jax_impls(shape, variants: bool, interpret: bool = False, only=None):
  from pallas_kernels.gla import chunk_gla_jnp
  from pallas_kernels.gla.triton import chunk_gla_triton

  if interpret:
    chunk_gla_triton = functools.partial(chunk_gla_triton, interpret=True)
  impls = {"ours": chunk_gla_triton, "xla": chunk_gla_jnp}
  from pallas_kernels.common.mosaic_gpu.layout import is_sm90
  if interpret or is_sm90():  # our Mosaic GPU kernels, and the Mosaic forward with the Triton backward
    from pallas_kernels.gla import chunk_gla
    from pallas_kernels.gla.mosaic_gpu import chunk_gla_mosaic
    impls["mosaic"] = functools.partial(chunk_gla_mosaic, interpret=interpret)
    impls["mosaic_fwd"] = functools.partial(
        chunk_gla, impl="mosaic_gpu_fwd_interpret" if interpret else "mosaic_gpu_fwd")
  B, T, H, K, V = shape
  if K in (64, 128) and V in (64, 128):
    try:
      from jla import ops as jla_ops
      jla_ops._load_kernels()  # registers the kernels once, before compile threads race to do it

      def jla(q, k, v, g):
        return jla_ops.linear_attention("gla", q, k, v, g=g.astype(q.dtype), impl="mosaic_gpu")

      impls["jla"] = jla
    except Exception as e:  # noqa: BLE001  (jla missing or broken: report and go on)
      print(f"jla unavailable: {type(e).__name__}: {e}", flush=True)
  if variants:
    for name, kw in _variants(shape).items():
      impls[f"ours_{name}"] = functools.partial(chunk_gla_triton, **kw)
  if only:
    impls = {k: v for k, v in impls.items() if k.split("_")[0] in only or k in only}
  return impls


def _rel(a, b):
  import jax.numpy as jnp
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return float(jnp.sqrt(jnp.sum((a - b) ** 2)) / jnp.maximum(jnp.sqrt(jnp.sum(b * b)), 1e-30))


def _time(fn, args, iters: int = 10, reps: int = 5):
  import jax
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    for _ in range(iters):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t) / iters * 1e3)
  return statistics.median(times)


def run_jax(out_dir, shape_names, variants_for, save_ref_for, interpret: bool = False, only=None):
  import concurrent.futures as cf

  import jax
  import jax.numpy as jnp
  from pallas_kernels.gla import chunk_gla_jnp

  dev = jax.devices()[0]
  meta = {"kind": "meta", "device": dev.device_kind, "jax": jax.__version__,
          "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
          "date": time.strftime("%Y-%m-%d")}
  _emit(f"{out_dir}/jax.jsonl", meta)

  def fwd(fn):
    return jax.jit(lambda q, k, v, g: fn(q, k, v, g)[0])

  def fwdbwd(fn):
    def f(q, k, v, g, do):
      o, vjp = jax.vjp(lambda q, k, v, g: fn(q, k, v, g)[0], q, k, v, g)
      return (o, *vjp(do.astype(o.dtype)))
    return jax.jit(f)

  for name in shape_names:
    shape = SHAPES[name]
    q, k, v, g, do = make_inputs_np(shape)
    bf = lambda x: jnp.asarray(x, jnp.bfloat16)
    args = (bf(q), bf(k), bf(v), jnp.asarray(g), bf(do))
    del q, k, v, g, do
    impls = _jax_impls(shape, name in variants_for, interpret, only)
    up = lambda x: x.astype(jnp.float32)
    ref_fn = fwdbwd(lambda q, k, v, g: chunk_gla_jnp(up(q), up(k), up(v), g))
    jobs = {("ref", "fwdbwd"): (ref_fn, args)}
    for impl, fn in impls.items():
      jobs[(impl, "fwd")] = (fwd(fn), args[:4])
      jobs[(impl, "fwdbwd")] = (fwdbwd(fn), args)

    # compile: ours first and alone (the user-facing first-call number), the rest in parallel
    compiled, compile_s = {}, {}

    def compile_job(key):
      fn, a = jobs[key]
      t = time.perf_counter()
      try:
        compiled[key] = fn.lower(*a).compile()
      except Exception as e:  # noqa: BLE001
        compiled[key] = e
      compile_s[key] = time.perf_counter() - t

    for key in (("ours", "fwd"), ("ours", "fwdbwd")):
      compile_job(key)
    with cf.ThreadPoolExecutor(8) as pool:
      list(pool.map(compile_job, [k for k in jobs if k not in compiled]))

    ref = compiled[("ref", "fwdbwd")](*args)
    if isinstance(ref, Exception) or isinstance(compiled[("ref", "fwdbwd")], Exception):
      raise RuntimeError(f"reference failed: {compiled[('ref', 'fwdbwd')]}")
    ref = jax.block_until_ready(ref)
    if name in save_ref_for:
      for n, x in zip(GRADS, ref):
        np.save(f"{out_dir}/ref_{name}_{n}.npy", np.asarray(x, np.float32))
    for impl in impls:
      rec = {"kind": "result", "shape": name, "dims": shape, "impl": impl,
             "floor_fwd_ms": floor_ms(shape, False), "floor_ms": floor_ms(shape, True)}
      for mode, a in (("fwd", args[:4]), ("fwdbwd", args)):
        c = compiled[(impl, mode)]
        rec[f"{mode}_compile_s"] = round(compile_s[(impl, mode)], 2)
        if isinstance(c, Exception):
          rec[f"{mode}_error"] = f"{type(c).__name__}: {str(c)[:300]}"
          continue
        try:
          out = jax.block_until_ready(c(*a))
          if mode == "fwdbwd":
            rec["err"] = {n: _rel(x, r) for n, x, r in zip(GRADS, out, ref)}
          else:
            rec["err_fwd_o"] = _rel(out, ref[0])
          del out
          rec[f"{mode}_ms"] = _time(c, a)
        except Exception as e:  # noqa: BLE001
          rec[f"{mode}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
      _emit(f"{out_dir}/jax.jsonl", rec)
    del ref, compiled, args


def run_breakdown(out_dir, shape_names, interpret: bool = False):
  """Time each of our kernels alone (default block sizes) to see where fwd+bwd time goes."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  from pallas_kernels.gla.triton import bwd as triton_bwd, fwd as triton_fwd, scan as triton_scan
  from pallas_kernels.gla.triton import prepare

  for name in shape_names:
    shape = SHAPES[name]
    q, k, v, g, do = make_inputs_np(shape)
    bf = lambda x: jnp.asarray(x, jnp.bfloat16)
    q, k, v, g, do = bf(q), bf(k), bf(v), jnp.asarray(g), bf(do)
    opts, (q, k, v, g, h0, doc) = prepare(q, k, v, g, interpret=interpret)
    B, T, H, K, V = shape
    dht = jnp.zeros((B, H, opts.K, opts.V), jnp.float32)
    blocks = lambda **kw: dataclasses.replace(opts, blocks=dataclasses.replace(opts.blocks, **kw))
    par, seq = blocks(fwd_parallel=True), blocks(fwd_parallel=False)
    fused, scan = blocks(state_scan=False), blocks(state_scan=True)
    stages = {
        "chunk_fwd (sequential forward, +fixup)": (
            lambda q, k, v, g: triton_fwd.chunk_fwd(q, k, v, g, None, None, seq), (q, k, v, g)),
        "sequence-parallel forward (state pass + chunk_output + fixup)": (
            lambda q, k, v, g: triton_fwd.chunk_fwd(q, k, v, g, None, None, par), (q, k, v, g)),
        "chunk_state_pass": (lambda k, v, g: triton_fwd.chunk_state_pass(k, v, g, None, None, opts),
                             (k, v, g)),
        "chunk_state_grad_pass": (
            lambda q, do, g: triton_bwd.chunk_state_grad_pass(q, do, g, dht, None, opts), (q, do, g)),
        "chunk_state_pass (fused)": (
            lambda k, v, g: triton_fwd.chunk_state_pass(k, v, g, None, None, fused), (k, v, g)),
        "chunk_state_pass (scan)": (
            lambda k, v, g: triton_fwd.chunk_state_pass(k, v, g, None, None, scan), (k, v, g)),
        "chunk_summaries (k side)": (
            lambda k, v, g: triton_scan.chunk_summaries(k, v, g, None, scan, "k", jnp.bfloat16),
            (k, v, g)),
        "chunk_state_grad_pass (fused)": (
            lambda q, do, g: triton_bwd.chunk_state_grad_pass(q, do, g, dht, None, fused), (q, do, g)),
        "chunk_state_grad_pass (scan)": (
            lambda q, do, g: triton_bwd.chunk_state_grad_pass(q, do, g, dht, None, scan), (q, do, g)),
    }
    u, gam = jax.jit(stages["chunk_summaries (k side)"][0])(k, v, g)
    stages["state_scan"] = (lambda u, gam: triton_scan.state_scan(u, gam, None, scan, False), (u, gam))
    hs = jax.jit(stages["chunk_state_pass"][0])(k, v, g)
    dhs, _ = jax.jit(stages["chunk_state_grad_pass"][0])(q, do, g)
    stages["chunk_grads"] = (
        lambda q, k, g, v, do, hs, dhs: triton_bwd.chunk_grads(q, k, g, v, do, hs, dhs, None, opts),
        (q, k, g, v, do, hs, dhs))
    rec = {"kind": "breakdown", "shape": name, "dims": shape, "blocks": str(opts.blocks)}
    for stage, (fn, a) in stages.items():
      rec[stage] = _time(jax.jit(fn), a)
    _emit(f"{out_dir}/jax.jsonl", rec)


# ------------------------------------------------------------------------------------------------
# fla (torch), in its own process
# ------------------------------------------------------------------------------------------------


def run_fla(out_dir, shape_names):
  import torch
  import triton
  from fla.ops.gla import chunk_gla

  _emit(f"{out_dir}/fla.jsonl", {"kind": "meta", "device": torch.cuda.get_device_name(),
                                 "torch": torch.__version__, "triton": triton.__version__})
  for name in shape_names:
    shape = SHAPES[name]
    qn, kn, vn, gn, don = make_inputs_np(shape)
    t = lambda x: torch.from_numpy(x).cuda()
    q, k, v, do = (t(x).to(torch.bfloat16) for x in (qn, kn, vn, don))
    g = t(gn)
    del qn, kn, vn, gn, don
    rec = {"kind": "result", "shape": name, "dims": shape, "impl": "fla",
           "floor_fwd_ms": floor_ms(shape, False), "floor_ms": floor_ms(shape, True)}
    with torch.no_grad():
      fwd = lambda: chunk_gla(q, k, v, g)[0]
      t0 = time.perf_counter()
      o = fwd()
      torch.cuda.synchronize()
      rec["fwd_compile_s"] = round(time.perf_counter() - t0, 2)
      rec["fwd_ms"] = triton.testing.do_bench(fwd, warmup=25, rep=100, return_mode="median")
    qg, kg, vg, gg = (x.clone().requires_grad_() for x in (q, k, v, g))

    def fwdbwd():
      o = chunk_gla(qg, kg, vg, gg)[0]
      return (o, *torch.autograd.grad(o, (qg, kg, vg, gg), do))

    t0 = time.perf_counter()
    out = fwdbwd()
    torch.cuda.synchronize()
    rec["fwdbwd_compile_s"] = round(time.perf_counter() - t0, 2)
    ref_files = [f"{out_dir}/ref_{name}_{n}.npy" for n in GRADS]
    if all(os.path.exists(f) for f in ref_files):
      err = {}
      for n, x, f in zip(GRADS, out, ref_files):
        r = torch.from_numpy(np.load(f)).cuda()
        err[n] = float(torch.linalg.vector_norm(x.float() - r) / torch.linalg.vector_norm(r))
        del r
      rec["err"] = err
    del out
    rec["fwdbwd_ms"] = triton.testing.do_bench(fwdbwd, warmup=25, rep=100, return_mode="median")
    _emit(f"{out_dir}/fla.jsonl", rec)
    del q, k, v, g, do, qg, kg, vg, gg
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _load(path):
  if not os.path.exists(path):
    return []
  return [json.loads(line) for line in open(path) if line.strip()]


def report(out_dir) -> str:
  recs = _load(f"{out_dir}/jax.jsonl") + _load(f"{out_dir}/fla.jsonl")
  metas = [r for r in recs if r["kind"] == "meta"]
  res = [r for r in recs if r["kind"] == "result"]
  breakdowns = [r for r in recs if r["kind"] == "breakdown"]
  lines = ["Environment: " + "; ".join(
      ", ".join(f"{k}={v}" for k, v in m.items() if k != "kind") for m in metas), ""]
  lines.append("| shape B,T,H,K,V | impl | fwd ms | fwd+bwd ms | ×floor | fla ÷ this | rel err "
               "(o, dq, dk, dv, dg) | compile s (fwd / fwd+bwd) |")
  lines.append("|---|---|---|---|---|---|---|---|")
  by_shape = {}
  for r in res:
    by_shape.setdefault(r["shape"], []).append(r)
  order = {"ours": 0, "mosaic": 1, "mosaic_fwd": 2, "fla": 3, "jla": 4, "xla": 5}
  for name in [n for n in SHAPES if n in by_shape]:
    rows = sorted(by_shape[name], key=lambda r: (order.get(r["impl"], 9), r["impl"]))
    fla = next((r for r in rows if r["impl"] == "fla" and "fwdbwd_ms" in r), None)
    for r in rows:
      fb = r.get("fwdbwd_ms")
      err = r.get("err")
      cells = [",".join(map(str, r["dims"])), r["impl"],
               f"{r['fwd_ms']:.3f}" if "fwd_ms" in r else r.get("fwd_error", "–")[:50],
               f"{fb:.3f}" if fb is not None else r.get("fwdbwd_error", "–")[:80],
               f"{fb / r['floor_ms']:.1f}" if fb is not None else "–",
               f"{fla['fwdbwd_ms'] / fb:.2f}×" if (fla and fb) else "–",
               " / ".join(f"{err[n]:.1e}" for n in GRADS) if err else "–",
               f"{r.get('fwd_compile_s', '–')} / {r.get('fwdbwd_compile_s', '–')}"]
      lines.append("| " + " | ".join(cells) + " |")
  for r in breakdowns:
    stages = {k: v for k, v in r.items() if k not in ("kind", "shape", "dims", "blocks")}
    lines.append("")
    lines.append(f"Per-kernel ms at {','.join(map(str, r['dims']))} ({r['blocks']}): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()))
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("mode", choices=["jax", "fla", "report", "breakdown"])
  p.add_argument("--out", required=True)
  p.add_argument("--shapes", default="s1,s2,s3,s4,s5")
  p.add_argument("--variants-for", default="", help="shapes at which to also time variants of ours")
  p.add_argument("--impls", default="", help="comma list to restrict to (ours, mosaic, mosaic_fwd, xla, jla)")
  p.add_argument("--save-ref-for", default="s1,s2,s3", help="shapes whose reference fla is scored on")
  p.add_argument("--interpret", action="store_true", help="run ours in interpret mode (CPU smoke test)")
  a = p.parse_args(argv)
  os.makedirs(a.out, exist_ok=True)
  shapes = [s for s in a.shapes.split(",") if s]
  if a.mode == "jax":
    run_jax(a.out, shapes, set(a.variants_for.split(",")), set(a.save_ref_for.split(",")), a.interpret,
            set(a.impls.split(",")) - {""} or None)
  elif a.mode == "breakdown":
    run_breakdown(a.out, shapes, a.interpret)
  elif a.mode == "fla":
    run_fla(a.out, shapes)
  else:
    print(report(a.out))


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
