"""Every mixer kind on the GPU (marker gpu): the Triton op per layer against the xla forms, and a bf16 train
step of each kind's tiny model through the trainer's step (the op per shard), finite and decreasing.

Results go to $OUT/mixers_gpu.json when $OUT is set.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.layers.mixers import registry
from gla_jax.models import build_model, presets

pytestmark = pytest.mark.gpu

RECURRENT = [k for k in registry.KIND_NAMES if k not in ("attention", "swa")]
RESULTS: dict[str, dict] = {}


def _record(key, **values):
  RESULTS.setdefault(key, {}).update(values)
  print(f"MIXERS_GPU {key}: {values}", flush=True)
  out = os.environ.get("OUT")
  if out:
    with open(os.path.join(out, "mixers_gpu.json"), "w") as f:
      json.dump(RESULTS, f, indent=2)


def _rel_rms(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


@pytest.mark.parametrize("kind", RECURRENT)
def test_triton_matches_xla(kind):
  cfg = presets.tiny(kind, attn_impl="triton")
  ids = jax.random.randint(jax.random.key(0), (2, 300), 0, cfg.vocab_size)
  seg = jnp.asarray(np.repeat(np.arange(3), 100)[None].repeat(2, 0), jnp.int32)
  fwd = nnx.jit(lambda m, x, s: m(x, segment_ids=s))
  tri = np.asarray(fwd(build_model(cfg, rngs=nnx.Rngs(0)), ids, seg))
  with jax.default_matmul_precision("highest"):
    ref = np.asarray(fwd(build_model(dataclasses.replace(cfg, attn_impl="xla"), rngs=nnx.Rngs(0)), ids, seg))
  _record(kind, triton_vs_xla_f32_rel_rms=_rel_rms(tri, ref))
  assert _rel_rms(tri, ref) < 1e-2  # float32 model: the kernels' tf32/f32 dots vs the exact jnp forms


@pytest.mark.parametrize("kind", list(registry.KIND_NAMES) + ["hybrid"])
def test_bf16_train_steps(kind):
  cfg = presets.hybrid_tiny() if kind == "hybrid" else presets.tiny(kind)
  extra = {} if kind in ("attention", "swa") else {"attn_impl": "triton"}
  cfg = dataclasses.replace(cfg, dtype="bfloat16", **extra)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ids = jax.random.randint(jax.random.key(1), (4, 257), 0, cfg.vocab_size)

  @jax.jit
  def step(p):
    def loss(p):
      logits = nnx.merge(graphdef, p, rest)(ids[:, :-1])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1))
    l, g = jax.value_and_grad(loss)(p)
    return l, jax.tree.map(lambda a, b: a - 0.5 * b, p, g)

  losses = []
  for _ in range(3):
    l, params = step(params)
    losses.append(float(l))
  _record(f"{kind}_bf16_steps", losses=losses)
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
