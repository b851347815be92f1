"""Time to the first training step, part by part: where the seconds before step 1 go.

    python benchmarks/init_time.py --model gla_340m                      # one GPU
    python benchmarks/init_time.py --model gla_340m --scan-layers 0 1 --out init.json

Parts (each timed on its own, in this order, in one process; the persistent compilation cache is off):
  abstract   nnx.eval_shape of the model (graphdef, param shapes, logical names)
  lower      tracing + lowering the sharded init (train/state.py's init_fn under jit with out_shardings)
  compile    XLA compile of that init
  run        executing it (params drawn on the device, Adam state zeros)
  step_lower / step_compile / step_run   the trainer's train step on a synthetic batch
(the second --scan-layers value repeats everything from a fresh trace). `fusions` counts the kernels
of the compiled init (HLO `fusion` computations): each random param is a threefry kernel of its own
unless layers are stacked.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import nnx  # noqa: E402

from gla_jax.models import build_model, presets  # noqa: E402
from train import mesh as mesh_lib  # noqa: E402
from train import state as state_lib  # noqa: E402
from train import step as step_lib  # noqa: E402
from train.config import MeshConfig, OptimConfig  # noqa: E402


def model_config(name: str, scan: bool | None):
  cfg = presets.preset_340m(name.split("_")[0]) if name.endswith("_340m") else presets.tiny(name.split("_")[0])
  cfg = dataclasses.replace(cfg, dtype="bfloat16", attn_impl="auto")
  if scan is not None:
    if not any(f.name == "scan_layers" for f in dataclasses.fields(cfg)):
      raise SystemExit("--scan-layers: this model config has no scan_layers field")
    cfg = dataclasses.replace(cfg, scan_layers=bool(scan))
  return cfg


class _Parts(dict):
  """Prints each part as it is timed (a run cut short still shows what finished)."""

  def __setitem__(self, key, value):
    super().__setitem__(key, value)
    print(f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}", flush=True)


def time_parts(cfg, batch: int, seq: int) -> dict:
  t = _Parts()
  clock = time.perf_counter
  build = lambda rngs: build_model(cfg, rngs=rngs)
  tx = state_lib.make_optimizer(OptimConfig(), 1000)
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])  # the trainer's mesh

  t0 = clock()
  model_def, abstract_params = state_lib.abstract_model(build)
  shardings = state_lib.state_shardings(model_def, abstract_params, tx, mesh)
  t["abstract"] = clock() - t0

  def init_fn(key):
    with nnx.use_eager_sharding(False):
      model = build(nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                rng=jnp.zeros((2,), jnp.uint32), skipped=jnp.zeros((), jnp.int32))

  t0 = clock()
  lowered = jax.jit(init_fn, out_shardings=shardings).lower(jax.random.key(0))
  t["lower"] = clock() - t0
  t0 = clock()
  compiled = lowered.compile()
  t["compile"] = clock() - t0
  text = compiled.as_text() or ""
  t["fusions"] = text.count("fused_computation") or text.count("fusion")
  t0 = clock()
  state = compiled(jax.random.key(0))
  jax.block_until_ready(state)
  t["run"] = clock() - t0

  train_step = step_lib.make_train_step(model_def, tx, mesh, shardings)
  ids = jnp.zeros((batch, seq), jnp.int32)
  batch_d = {"inputs": ids, "targets": ids, "mask": jnp.ones((batch, seq), bool)}
  with jax.set_mesh(mesh), nnx.logical_axis_rules(step_lib.TRACE_RULES):
    t0 = clock()
    lowered = train_step.jitted.lower(state, batch_d)
    t["step_lower"] = clock() - t0
    t0 = clock()
    compiled = lowered.compile()
    t["step_compile"] = clock() - t0
    t0 = clock()
    out = compiled(state, batch_d)
    jax.block_until_ready(out)
    t["step_run"] = clock() - t0
  t["ready_s"] = sum(v for k, v in t.items() if isinstance(v, float))
  return dict(t)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="gla_340m", help="<kind>_340m or <kind>_tiny")
  p.add_argument("--scan-layers", type=int, nargs="*", default=None, help="0/1 values to time (default: as preset)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--out", default=None)
  a = p.parse_args(argv)
  jax.config.update("jax_enable_compilation_cache", False)
  rows = []
  for scan in (a.scan_layers if a.scan_layers else [None]):
    cfg = model_config(a.model, scan)
    t = time_parts(cfg, a.batch, a.seq)
    row = {"model": a.model, "scan_layers": getattr(cfg, "scan_layers", None), "layers": cfg.num_hidden_layers,
           **t, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
           "date": datetime.datetime.now().isoformat(timespec="seconds")}
    print(json.dumps(row), flush=True)
    rows.append(row)
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
