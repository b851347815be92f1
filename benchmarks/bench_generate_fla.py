"""The torch side of `benchmarks/bench_generate.py --compare-fla`: times fla's `GLAForCausalLM.generate`.

    python benchmarks/bench_generate_fla.py SPEC.json RESULT.json

SPEC (written by bench_generate.compare_fla): fla's config dict (gla_jax.convert.fla.config_to_fla), batch
(a list), prompt, new, reps. fla's model (random init, bf16 weights, eval, CUDA) runs transformers'
`generate` (fla's GenerationMixin: greedy, use_cache=True, its recurrent cache) on random prompts
[B, prompt] of ids ≥ 3 (no pad / bos / eos id, so the all-ones attention mask transformers builds is
right), with min_new_tokens = max_new_tokens = new. prefill = generate(max_new_tokens=1), so
decode tokens/s = B · (new − 1) / (t(new) − t(1)). RESULT: per batch the median times and rates, the
first call's time (Triton compile + autotune), or {"skipped": why} when torch, CUDA or fla is missing
(exit 0). The result is rewritten after every batch. Imports no JAX.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def run(spec: dict, result_path: str) -> int:
  rec: dict = {"results": []}

  def write():
    with open(result_path, "w") as f:
      json.dump(rec, f)
  try:
    import torch
  except ImportError:
    rec = {"skipped": "torch is not installed"}
    write()
    return 0
  if not torch.cuda.is_available():
    rec = {"skipped": "no CUDA device for torch"}
    write()
    return 0
  try:
    import fla.models
    from fla.models import GLAConfig, GLAForCausalLM
  except ImportError as e:
    rec = {"skipped": f"fla is not installed ({e})"}
    write()
    return 0
  import transformers
  rec.update(device=torch.cuda.get_device_name(), torch=torch.__version__,
             fla=getattr(fla, "__version__", "?"), transformers=transformers.__version__)
  cfg = {k: v for k, v in spec["config"].items() if k != "architectures"}
  torch.manual_seed(0)
  t0 = time.perf_counter()
  with torch.device("cuda"):
    model = GLAForCausalLM(GLAConfig(**cfg)).to(torch.bfloat16).eval()
  torch.cuda.synchronize()
  rec["init_s"] = time.perf_counter() - t0
  write()
  T, N, reps = spec["prompt"], spec["new"], spec["reps"]
  vocab = spec["config"]["vocab_size"]

  def gen(ids, n):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                         use_cache=True, pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t, out

  for B in spec["batch"]:
    r = {"B": B, "prompt": T, "new": N}
    try:
      ids = torch.randint(3, vocab, (B, T), device="cuda")
      with torch.inference_mode():
        r["first_call_s"], out = gen(ids, N)  # Triton compile + autotune
        r["new_tokens_out"] = int(out.shape[1] - T)
        t1 = statistics.median(gen(ids, 1)[0] for _ in range(reps))
        tn = statistics.median(gen(ids, N)[0] for _ in range(reps))
      r.update(prefill_s=t1, generate_s=tn, total_tok_s=B * N / tn)
      if tn > t1:
        r.update(decode_s=tn - t1, decode_tok_s=B * (N - 1) / (tn - t1),
                 ms_per_decode_step=(tn - t1) / (N - 1) * 1e3)
      r["peak_bytes"] = torch.cuda.max_memory_allocated()
    except Exception as e:  # noqa: BLE001  (record and go on to the next batch)
      r["error"] = f"{type(e).__name__}: {str(e)[:500]}"
      torch.cuda.empty_cache()
    rec["results"].append(r)
    print(json.dumps({"fla": r}), flush=True)
    write()
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 2:
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2
  with open(argv[0]) as f:
    spec = json.load(f)
  missing = {"config", "batch", "prompt", "new", "reps"} - set(spec)
  if missing:
    print(f"{argv[0]}: spec lacks {sorted(missing)}", file=sys.stderr)
    return 2
  return run(spec, argv[1])


if __name__ == "__main__":
  sys.exit(main())
