"""Compile the GLA TPU kernels for a TPU that is not there, and read the compiler's static schedule.

JAX can compile ahead of time for a TPU topology without a TPU ("deviceless AOT") when libtpu is importable.
That runs the whole Mosaic pipeline (layout inference, relayouts, lowering to LLO) and the TPU backend's
VLIW scheduler, so it proves that the kernels *compile* for v5e / v5p / v6e, and the length of the
scheduled loop body is the number of bundles (≈ cycles, when no DMA wait stalls) that one grid step — one
chunk of one head — issues. It is a static count, not a measurement: nothing runs.

Usage (libtpu is not a dependency; install it anywhere, e.g. `pip install --target /tmp/libtpu libtpu==0.0.42.*`
for jax 0.10.2):

    PYTHONPATH=/tmp/libtpu:. python -m pallas_kernels.gla.tpu.aot --chip v5e --K 128 --V 256 --C 64

prints, per kernel, the bundles of one grid step. The work happens in a child process, because libtpu reads
its flags and the TPU_* variables once, at import.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

TOPOLOGIES = {  # chip → (topology name, TPU_ACCELERATOR_TYPE)
    "v5e": ("v5e:2x2", "v5litepod-4"),
    "v5p": ("v5p:2x2x1", "v5p-8"),
    "v6e": ("v6e:2x2", "v6e-4"),
}
KERNELS = ("gla_chunk_fwd", "gla_chunk_state_pass", "gla_chunk_bwd")


def loop_bundles(path: str) -> int:
  """Bundles of the grid loop body in a `final_bundles` dump: from the `LB` (loop body) marker to the
  branch that follows the loop exit test."""
  start = end = None
  exit_test = False
  with open(path) as f:
    for line in f:
      m = re.match(r"\s*0x([0-9a-f]+)\s+(LB)?", line)
      if not m:
        continue
      addr = int(m.group(1), 16)
      if m.group(2) == "LB" and start is None:
        start = addr
      if "loop exit test" in line:
        exit_test = True
      if exit_test and "sbr.rel" in line:
        end = addr
        break
  if start is None or end is None:
    raise ValueError(f"no grid loop found in {path}")
  return end - start + 1


def _child(args) -> dict:
  """Runs in the child: compile forward + backward once, return {kernel: bundles per grid step}."""
  import functools

  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies
  from jax.sharding import SingleDeviceSharding

  from pallas_kernels.gla.tpu import chunk_gla_tpu

  topo = topologies.get_topology_desc(topology_name=TOPOLOGIES[args.chip][0], platform="tpu")
  sharding = SingleDeviceSharding(topo.devices[0])
  dt = jnp.dtype(args.dtype)
  B, H, T = 1, args.hb, 4 * args.C
  sds = lambda shape, d: jax.ShapeDtypeStruct(shape, d, sharding=sharding)
  q = sds((B, T, H, args.K), dt)
  v = sds((B, T, H, args.V), dt)
  g = sds((B, T, H, args.K), jnp.float32)
  h0 = sds((B, H, args.K, args.V), jnp.float32)
  seg = sds((B, T), jnp.int32) if args.segments else None

  def loss(q, k, v, g, h0, seg):
    o, ht = chunk_gla_tpu(q, k, v, g, initial_state=h0, output_final_state=True, segment_ids=seg,
                          chunk_size=args.C, sub_chunk=args.S, heads_per_block=args.hb)
    return jnp.sum(o.astype(jnp.float32)) + jnp.sum(ht)

  f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))  # value: keeps the forward alive
  f.trace(q, q, v, g, h0, seg).lower(lowering_platforms=("tpu",)).compile()
  out = {}
  for name in KERNELS:
    files = glob.glob(os.path.join(args.dump, f"*{name}*final_bundles.txt"))
    files = [p for p in files if "schedule-analysis" not in p]
    out[name] = loop_bundles(files[0]) if files else None
  return out


def static_bundles(chip: str, K: int, V: int, C: int, S: int = 8, hb: int = 1,
                   dtype: str = "bfloat16", segments: bool = False) -> dict:
  """{kernel name: bundles per grid step} from a deviceless compile for `chip` (needs libtpu)."""
  with tempfile.TemporaryDirectory() as dump:
    env = dict(os.environ, TPU_SKIP_MDS_QUERY="1", TPU_WORKER_HOSTNAMES="localhost",
               ALLOW_MULTIPLE_LIBTPU_LOAD="1",  # libtpu locks /tmp/libtpu_lockfile otherwise
               TPU_ACCELERATOR_TYPE=TOPOLOGIES[chip][1],
               LIBTPU_INIT_ARGS=f"--xla_jf_dump_to={dump} --xla_jf_dump_llo_text=true")
    cmd = [sys.executable, "-m", "pallas_kernels.gla.tpu.aot", "--child", "--chip", chip, "--K",
           str(K), "--V", str(V), "--C", str(C), "--S", str(S), "--hb", str(hb), "--dtype", dtype, "--dump", dump]
    if segments:
      cmd.append("--segments")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
      raise RuntimeError(f"deviceless compile failed:\n{res.stderr[-4000:]}")
    return json.loads(lines[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--chip", choices=sorted(TOPOLOGIES), default="v5e")
  p.add_argument("--K", type=int, default=128)
  p.add_argument("--V", type=int, default=256)
  p.add_argument("--C", type=int, default=64)
  p.add_argument("--S", type=int, default=8, help="sub_chunk")
  p.add_argument("--hb", type=int, default=1, help="heads per block (grid step)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--segments", action="store_true")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--dump", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print(json.dumps(_child(args)))
    return
  print(json.dumps({"chip": args.chip, "K": args.K, "V": args.V, "C": args.C, "S": args.S,
                    "hb": args.hb, "dtype": args.dtype, "segments": args.segments,
                    **static_bundles(args.chip, args.K, args.V, args.C, args.S, args.hb, args.dtype,
                                     args.segments)}))


if __name__ == "__main__":
  main()
