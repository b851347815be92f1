"""The cross-kind suite: every mixer kind of the registry (and the GLA/SWA hybrid) through the same checks.

Per kind, on `presets.tiny(kind)` (hybrid: `presets.hybrid_tiny()`), f32, B = 2, T = 40 (longer than the
SWA window of 32, so the rolling cache wraps):
  generate() (greedy, 4 tokens after a 36-token prompt) == argmax of the forward of its output;
  forward finite; token-by-token decode_step from an empty cache == forward; prefill of 35 tokens
  (> the window) + decode == forward; two packed documents == each run alone; gradients of a random
  functional finite and nonzero for every parameter; cache_bytes == the bytes of the decode cache;
and on configs/mqar_<kind>.py shrunk (batch 8, seq 64, 4 pairs, 3 steps) with the trainer's API: the
losses finite, and the same 3 steps on 8 fake CPU devices (mesh data 2 × fsdp 2 × tensor 2) == one device.

Two tests per kind (one jit computes every model-level value; one test runs both trainings), each
reporting every failing check. A kind whose module is missing FAILS here (no skip).
"""

from __future__ import annotations

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.generate import generate
from gla_jax.layers.mixers import registry
from gla_jax.models import presets
from tests.gla_jax.helpers import make_model, random_ids, rel_err
from train.config import CheckpointConfig, DataConfig, MeshConfig, MQARConfig

KINDS = (*registry.KIND_NAMES, "hybrid")
B, T, P, NEW, CUT = 2, 40, 35, 4, 17  # batch, length, prefill length, generated tokens, packed doc boundary
TOL = 1e-4  # f32 relative error (chunked vs recurrent op forms differ by ~1e-6)
MQAR_CONFIG = {"attention": "mqar_transformer"}  # other kinds: configs/mqar_<kind>.py


def _config(kind: str):
  if kind == "hybrid":
    return presets.hybrid_tiny(initializer_range=0.1)
  return presets.tiny(kind, initializer_range=0.1)  # a larger init: the mixers' share of the logits shows


def _scan_decode(model, cache, ids):
  """decode_step over ids [B, n] in a lax.scan → (logits [B, n, vocab], cache)."""
  def body(c, tok):
    logits, c = model.decode_step(tok, c)
    return c, logits
  cache, logits = jax.lax.scan(body, cache, ids.T)
  return jnp.swapaxes(logits, 0, 1), cache


@nnx.jit
def _everything(model, ids, cot):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  full, pullback = jax.vjp(lambda p: nnx.merge(graphdef, p, rest)(ids), params)
  (grads,) = pullback(cot)
  tokenwise, _ = _scan_decode(model, model.init_cache(B, T), ids)
  pre, cache = model.prefill(ids[:, :P], max_len=T)
  after, cache = _scan_decode(model, cache, ids[:, P:])
  # packed rows [doc A | doc B], and doc B moved to the start of a row of its own (causal: its first
  # T − CUT logits are those of doc B alone); doc A alone is the plain forward's first CUT positions
  seg = jnp.concatenate([jnp.where(jnp.arange(T)[None] < CUT, 0, 1) * jnp.ones((B, 1), jnp.int32),
                         jnp.zeros((B, T), jnp.int32)])
  both = model(jnp.concatenate([ids, jnp.roll(ids, -CUT, axis=1)]), segment_ids=seg)
  separate = jnp.concatenate([full[:, :CUT], both[B:, :T - CUT]], axis=1)
  return dict(full=full, tokenwise=tokenwise, prefilled=jnp.concatenate([pre, after], axis=1),
              packed=both[:B], separate=separate, grads=grads, cache=cache)


def _checks(kind: str):
  """Every model-level check of `kind` as (name, callable raising AssertionError)."""
  cfg = _config(kind)
  model = make_model(cfg)
  prompt = random_ids((B, T - NEW), cfg.vocab_size, seed=11)
  generated = np.asarray(generate(model, prompt, max_new_tokens=NEW, greedy=True))
  cot = jax.random.normal(jax.random.key(5), (B, T, cfg.vocab_size))
  out = jax.device_get(_everything(model, generated, cot))

  def finite():
    for name in ("full", "packed", "separate", "tokenwise", "prefilled"):
      assert np.all(np.isfinite(out[name])), name
    assert out["full"].shape == (B, T, cfg.vocab_size)

  def greedy_generate():
    assert generated.shape == (B, T)
    np.testing.assert_array_equal(np.argmax(out["full"][:, T - NEW - 1:-1], axis=-1), generated[:, T - NEW:])

  def decode_token_by_token():
    assert rel_err(out["tokenwise"], out["full"]) < TOL, rel_err(out["tokenwise"], out["full"])

  def prefill_then_decode():
    assert rel_err(out["prefilled"], out["full"]) < TOL, rel_err(out["prefilled"], out["full"])

  def packed_equals_separate():
    assert rel_err(out["packed"], out["separate"]) < TOL, rel_err(out["packed"], out["separate"])
    assert rel_err(out["packed"][:, CUT:], out["full"][:, CUT:]) > 1e-3  # the boundary matters

  def gradients():
    flat = nnx.to_flat_state(out["grads"])
    assert len(flat) > 4
    for path, var in flat:
      g = np.asarray(var[...])
      assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 0, ("/".join(map(str, path)), np.max(np.abs(g)))

  def cache_bytes():
    nbytes = lambda tree: sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))
    assert int(out["cache"].offset) == T
    for block, layer_cache in zip(model.layers, out["cache"].layers):
      assert block.attn.cache_bytes(T, B) == nbytes(layer_cache), type(block.attn).__name__
    if "attention" not in cfg.layer_kinds():  # constant-size caches: the same for any length, no max_len
      assert all(b.attn.cache_bytes(10 * T, B) == b.attn.cache_bytes(T, B) for b in model.layers)
      assert out["cache"].max_len is None

  return (finite, greedy_generate, decode_token_by_token, prefill_then_decode, packed_equals_separate,
          gradients, cache_bytes)


def _run_all(checks) -> None:
  """Runs every check and fails with the list of those that failed (not only the first)."""
  failed = []
  for check in checks:
    try:
      check()
    except AssertionError as e:
      failed.append(f"{check.__name__}: {e}"[:1500])
  assert not failed, "\n".join(failed)


@pytest.mark.parametrize("kind", KINDS)
def test_model(kind):
  """forward finite, greedy generate, decode token by token, prefill + decode, packed == separate,
  gradients, cache_bytes (one test per kind: the checks share one compiled function, and pytest-xdist
  would compute it on both workers if they were separate tests)."""
  _run_all(_checks(kind))


# ------------------------------------------------------------------------------------------- training

def _mqar_config(kind: str, workdir, mesh: MeshConfig):
  name = MQAR_CONFIG.get(kind, f"mqar_{kind}")
  config = importlib.import_module(f"configs.{name}").get_config()
  return dataclasses.replace(
      config, steps=4, data=DataConfig(kind="mqar", batch_size=8, seq_len=64, mqar=MQARConfig(num_kv_pairs=4)),
      optim=dataclasses.replace(config.optim, warmup_steps=1), mesh=mesh,
      checkpoint=CheckpointConfig(every=0, keep=1, async_save=False), eval_every=0, log_every=1,
      workdir=str(workdir), progress=False, tensorboard=False, plot=False)


def _train(kind: str, workdir, mesh: MeshConfig, devices):
  from train.trainer import Trainer  # pylint: disable=g-import-not-at-top
  trainer = Trainer(_mqar_config(kind, workdir, mesh), devices=devices)
  try:
    summary = trainer.run(until=3)  # 3 of 4 steps: no final evaluation to compile
    params = jax.device_get(trainer.state.params)
  finally:
    trainer.close()
  return summary["losses"], params


@pytest.mark.parametrize("kind", KINDS)
def test_mqar_training(kind, tmp_path):
  """3 MQAR steps with the Trainer: finite losses and params; on a (2, 2, 2) mesh of 8 fake devices the
  same losses and params as on one device."""
  l1, p1 = _train(kind, tmp_path / "one", MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  assert len(l1) == 3 and np.all(np.isfinite(l1)), l1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(p1))
  if len(jax.devices()) < 8:
    pytest.skip("the sharded half needs 8 (fake) devices (tests/conftest.py sets XLA_FLAGS)")
  l8, p8 = _train(kind, tmp_path / "eight", MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  np.testing.assert_allclose(l8, l1, rtol=1e-4)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p1), jax.tree.leaves(p8), strict=True):
    # Adam's first steps are ~lr·sign(g): where g ≈ 0 reduction order shows; a wrong shard would be ~lr
    np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-4, err_msg=jax.tree_util.keystr(path))
