"""The torch side of `benchmarks/bench_train.py --compare-fla`: times fla's `*ForCausalLM` train step.

    python benchmarks/bench_train_fla.py SPEC.json RESULT.json

SPEC (written by bench_train.fla_spec): fla's config dict (gla_jax.convert.fla.config_to_fla), batch,
seq, steps, warmup, fla_configs (autotune configs per kernel, 0 = fla's full search), optim (OptimConfig
fields). The step: float32 params, bf16 autocast, fla's loss (fused cross-entropy etc. as the config
says), clipping at optim.clip_norm, fused AdamW. RESULT: step times, tokens/s, peak memory (torch's
max_memory_allocated), init and first-step (Triton compile + autotune) seconds; or {"skipped": why} when
torch, CUDA or fla is missing (exit 0). Imports no JAX.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests.peers


def run(spec: dict, result_path: str) -> int:
  """The torch child: times fla's model on `spec`, writes its result (or why it skipped) as JSON."""
  def write(rec):
    with open(result_path, "w") as f:
      json.dump(rec, f)
  try:
    import torch
  except ImportError:
    write({"skipped": "torch is not installed"})
    return 0
  if not torch.cuda.is_available():
    write({"skipped": "no CUDA device for torch"})
    return 0
  if spec["fla_configs"]:
    from tests.peers import narrow_fla_autotune
    os.environ.pop("GLA_PARITY_FULL_AUTOTUNE", None)
    narrow_fla_autotune(keep=spec["fla_configs"], prefer=True)  # before fla defines its kernels
  try:
    import fla.models
  except ImportError as e:
    write({"skipped": f"fla is not installed ({e})"})
    return 0
  arch = spec["config"]["architectures"][0]
  model_cls = getattr(fla.models, arch, None)
  config_cls = getattr(fla.models, arch.replace("ForCausalLM", "Config"), None)
  if model_cls is None or config_cls is None:
    write({"skipped": f"fla.models has no {arch}"})
    return 0
  B, T, o = spec["batch"], spec["seq"], spec["optim"]
  rec = {"impl": "fla", "batch": B, "seq": T, "tokens_per_step": B * T, "device": torch.cuda.get_device_name(),
         "torch": torch.__version__, "fla": getattr(fla, "__version__", "?"), "fla_configs": spec["fla_configs"]}
  torch.manual_seed(0)
  t0 = time.perf_counter()
  with torch.device("cuda"):
    model = model_cls(config_cls(**{k: v for k, v in spec["config"].items() if k != "architectures"}))
  model.train()
  params = list(model.parameters())
  opt = torch.optim.AdamW(params, lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"],
                          weight_decay=o["weight_decay"], fused=True)
  torch.cuda.synchronize()
  rec["init_s"] = time.perf_counter() - t0
  data = [torch.randint(0, spec["config"]["vocab_size"], (B, T), device="cuda") for _ in range(4)]

  def step(x):
    with torch.autocast("cuda", dtype=torch.bfloat16):
      loss = model(input_ids=x, labels=x).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, o["clip_norm"], foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  t0 = time.perf_counter()
  rec["loss_first"] = float(step(data[0]))
  rec["first_step_s"] = time.perf_counter() - t0  # Triton compile + autotune
  write(rec)  # a partial result survives a timeout later on
  for i in range(spec["warmup"]):
    step(data[i % 4])
  torch.cuda.synchronize()
  times = []
  for i in range(spec["steps"]):
    t = time.perf_counter()
    loss = float(step(data[i % 4]))  # blocks on the step
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  rec.update(step_s_median=med, step_s_min=min(times), step_s_max=max(times), tokens_per_s=B * T / med,
             loss_last=loss, peak_bytes_in_use=torch.cuda.max_memory_allocated(),
             peak_bytes_reserved=torch.cuda.max_memory_reserved())
  write(rec)
  return 0


def triton_cache_in(path: str | None) -> None:
  """Extract `path` (a tar of *.autotune.json) into TRITON_CACHE_DIR (set to a temp dir when unset)."""
  if "TRITON_CACHE_DIR" not in os.environ:
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton_cache_")
  if path and os.path.isfile(path):
    with tarfile.open(path) as t:
      try:
        t.extractall(os.environ["TRITON_CACHE_DIR"], filter="data")
      except TypeError:  # Python without extraction filters
        t.extractall(os.environ["TRITON_CACHE_DIR"])


def triton_cache_out(out: str) -> int:
  """Pack every *.autotune.json under TRITON_CACHE_DIR into `out` (tar.gz); the file count."""
  root = os.environ.get("TRITON_CACHE_DIR") or os.path.expanduser("~/.triton/cache")
  with tarfile.open(out, "w:gz") as t:
    n = 0
    for d, _, files in os.walk(root):
      for f in files:
        if f.endswith(".autotune.json"):
          t.add(os.path.join(d, f), arcname=os.path.relpath(os.path.join(d, f), root))
          n += 1
  return n


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 2:
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2
  with open(argv[0]) as f:
    spec = json.load(f)
  missing = {"config", "batch", "seq", "steps", "warmup", "fla_configs", "optim"} - set(spec)
  if missing:
    print(f"{argv[0]}: spec lacks {sorted(missing)}", file=sys.stderr)
    return 2
  return run(spec, argv[1])


if __name__ == "__main__":
  sys.exit(main())
