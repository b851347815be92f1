"""The chunked cross-entropy (train/losses.py) against the full-logits form: sums and every gradient (f32
tight, bf16 by relative RMS), odd T, masks, tied embeddings, the model API, a (2, 2, 2) mesh step, the
compiled memory; and the model's remat policies (identical gradients)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.models import build_model, presets
from train import losses
from train import mesh as mesh_lib
from train import state as state_lib
from train import step as step_lib
from train.config import ConfigError, MeshConfig, validate

from tests.train.common import tiny_config


def _inputs(B, T, D, V, seed=0, dtype=jnp.float32, p_mask=0.7):
  k = jax.random.split(jax.random.key(seed), 4)
  h = jax.random.normal(k[0], (B, T, D), jnp.float32).astype(dtype)
  w = jax.random.normal(k[1], (D, V), jnp.float32) * 0.5
  t = jax.random.randint(k[2], (B, T), 0, V)
  m = jax.random.bernoulli(k[3], p_mask, (B, T))
  return h, w, t, m


def _full(h, w, t, m):
  dt = h.dtype
  logits = jnp.einsum("btd,dv->btv", h, w.astype(dt), preferred_element_type=jnp.float32)
  return losses.cross_entropy_sums(logits, t, m)


@functools.partial(jax.jit, static_argnums=0)
def _vjp(fn, h, w, t, m, g):
  sums, pull = jax.vjp(lambda h, w: fn(h, w, t, m)["loss_sum"], h, w)
  return sums, pull(g)


def _chunked(h, w, t, m, *, chunk):
  return losses.chunked_cross_entropy_sums(h, w, t, m, chunk=chunk)


def _rel_rms(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


@pytest.mark.parametrize("T,chunk", [(13, 5), (16, 8), (7, 64)])
def test_chunked_equals_full_f32(T, chunk):
  h, w, t, m = _inputs(3, T, 16, 37)
  chunked = functools.partial(_chunked, chunk=chunk)
  a, b = jax.jit(chunked)(h, w, t, m), _full(h, w, t, m)
  np.testing.assert_allclose(a["loss_sum"], b["loss_sum"], rtol=1e-6)
  assert float(a["correct"]) == float(b["correct"]) and float(a["count"]) == float(b["count"])
  g = jnp.float32(0.37)  # the loss's cotangent (1 / count in the trainer)
  _, (dh, dw) = _vjp(chunked, h, w, t, m, g)
  _, (dh0, dw0) = _vjp(_full, h, w, t, m, g)
  np.testing.assert_allclose(dh, dh0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, dw0, rtol=1e-5, atol=1e-6)
  # a masked position has no gradient; the unmasked ones do
  assert float(jnp.abs(dh[~m]).max()) == 0.0 and float(jnp.abs(dh[m]).min()) > 0.0


def test_accuracy_is_exact_when_many_tokens_are_right():
  h, w, _, m = _inputs(2, 21, 16, 11, seed=3)
  t = jnp.argmax(jnp.einsum("btd,dv->btv", h, w), -1)
  t = t.at[:, ::3].set((t[:, ::3] + 1) % 11)  # every third one wrong
  a = jax.jit(functools.partial(_chunked, chunk=4))(h, w, t, m)
  b = _full(h, w, t, m)
  assert float(a["correct"]) == float(b["correct"]) > 0


def test_chunked_bf16_close_to_f32_spec():
  h, w, t, m = _inputs(2, 40, 32, 64, seed=1)
  g = jnp.float32(1.0)
  chunked = functools.partial(_chunked, chunk=16)
  s16, (dh16, dw16) = _vjp(chunked, h.astype(jnp.bfloat16), w, t, m, g)
  s32, (dh32, dw32) = _vjp(_full, h.astype(jnp.bfloat16).astype(jnp.float32), w, t, m, g)
  assert dh16.dtype == jnp.bfloat16 and dw16.dtype == jnp.float32
  np.testing.assert_allclose(s16, s32, rtol=1e-2)
  assert _rel_rms(dh16, dh32) < 1e-2 and _rel_rms(dw16, dw32) < 1e-2
  _, (dhf, dwf) = _vjp(_full, h.astype(jnp.bfloat16), w, t, m, g)  # the full form in bf16: as close
  assert _rel_rms(dh16, dhf) < 1e-2 and _rel_rms(dw16, dwf) < 1e-2


def test_bad_arguments_raise():
  h, w, t, m = _inputs(1, 4, 8, 5)
  with pytest.raises(ValueError, match="chunk"):
    losses.chunked_cross_entropy_sums(h, w, t, m, chunk=0)
  with pytest.raises(ValueError, match="w"):
    losses.chunked_cross_entropy_sums(h, w.T, t, m, chunk=2)
  with pytest.raises(ValueError, match="targets"):
    losses.chunked_cross_entropy_sums(h, w, t[:, :2], m, chunk=2)
  with pytest.raises(ConfigError, match="loss_chunk"):
    validate(tiny_config("/tmp/unused", loss_chunk=-1))
  assert losses.chunk_positions(1024, 16, 1) == 64 and losses.chunk_positions(1024, 16, 8) == 512
  assert losses.chunk_positions(4, 16, 1) == 1


def _model_grads(cfg, batch, loss_chunk):
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)

  def f(p):
    sums = losses.lm_cross_entropy_sums(nnx.merge(graphdef, p), batch, loss_chunk=loss_chunk)
    return sums["loss_sum"] / sums["count"], sums
  return jax.jit(jax.value_and_grad(f, has_aux=True))(params)


@pytest.mark.parametrize("tied", [False, True])
def test_model_loss_and_param_grads_equal_full(tied):
  cfg = presets.gla_tiny(hidden_size=32, num_heads=2, num_hidden_layers=1, vocab_size=48,
                         tie_word_embeddings=tied)
  _, _, t, m = _inputs(2, 11, 1, 48, seed=2)
  ids = jax.random.randint(jax.random.key(5), (2, 11), 0, 48)
  batch = {"inputs": ids, "targets": t, "mask": m}
  (l0, s0), g0 = _model_grads(cfg, batch, 0)
  (l1, s1), g1 = _model_grads(cfg, batch, 6)  # 3 positions of 2 rows per chunk: 4 chunks, one padded
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  assert float(s1["correct"]) == float(s0["correct"])
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_compiled_memory_chunked_far_below_full():
  B, T, D, V = 2, 512, 128, 8192
  h = jax.ShapeDtypeStruct((B, T, D), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((D, V), jnp.float32)
  t, m = jax.ShapeDtypeStruct((B, T), jnp.int32), jax.ShapeDtypeStruct((B, T), jnp.bool_)
  chunked = lambda h, w, t, m: losses.chunked_cross_entropy_sums(h, w, t, m, chunk=64)
  temp = {}
  for name, fn in (("full", _full), ("chunked", chunked)):
    grad = jax.jit(jax.grad(lambda h, w, t, m: fn(h, w, t, m)["loss_sum"], (0, 1)))
    temp[name] = grad.lower(h, w, t, m).compile().memory_analysis().temp_size_in_bytes
  logits_bytes = B * T * V * 4
  assert temp["full"] >= logits_bytes  # the full form holds at least one [B, T, V] f32 buffer
  assert temp["chunked"] < logits_bytes / 2, temp


# ------------------------------------------------------------------------------------------------ remat


def test_remat_policies_give_identical_gradients():
  base = presets.gla_tiny(hidden_size=32, num_heads=2, num_hidden_layers=1, vocab_size=48)
  ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 48)
  batch = {"inputs": ids, "targets": jnp.roll(ids, -1, 1), "mask": jnp.ones((2, 8), bool)}
  ref = None
  for remat, policy in [(False, "full"), (True, "full"), (True, "nothing_saveable"), (True, "dots_saveable"),
                        (True, "dots_with_no_batch_dims_saveable"), (True, "none")]:
    cfg = dataclasses.replace(base, remat=remat, remat_policy=policy)
    (loss, _), g = _model_grads(cfg, batch, 8)
    if ref is None:
      ref = (loss, g)
      continue
    np.testing.assert_allclose(loss, ref[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(g)):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=f"{remat=} {policy=}")


def test_remat_policy_is_validated_and_jax_only():
  with pytest.raises(ValueError, match="remat_policy"):
    presets.gla_tiny(remat_policy="everything")
  from gla_jax.convert.fla import config_to_fla
  assert "remat_policy" not in config_to_fla(presets.gla_tiny(remat=True, remat_policy="dots_saveable"))


# ------------------------------------------------------------------------------------------------ sharded


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")
def test_mesh_step_chunked_equals_full(tmp_path):
  """A (2, 2, 2) mesh step (batch over data × fsdp, vocab over tensor) with the chunked loss equals the
  full-logits one: loss, accuracy, gradient norm, params; and the chunked eval step agrees."""
  cfg = tiny_config(tmp_path, "model.hidden_size=64")
  mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
  build = lambda rngs: build_model(cfg.model, rngs=rngs)
  state, model_def, shardings = state_lib.init_state(build, tx, mesh, seed=0)
  host = jax.device_get(state)
  from train.data.mqar import StepIndexedSource
  src = StepIndexedSource("mqar", global_batch=8, seq_len=32, vocab_size=64, seed=0, num_kv_pairs=4)
  batch = mesh_lib.global_batch(src.next(), mesh)
  out = {}
  for chunk in (0, 20):  # 20 tokens per device = 10 positions of 2 rows: T=32 is 4 chunks, the last padded
    step = step_lib.make_train_step(model_def, tx, mesh, shardings, loss_chunk=chunk)
    new, m = step(jax.device_put(host, shardings), batch)
    out[chunk] = (jax.device_get(m), jax.device_get(new.params))
  (m0, p0), (m1, p1) = out[0], out[20]
  np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-5)
  assert float(m1["accuracy"]) == float(m0["accuracy"])
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  sums = step_lib.make_eval_step(model_def, mesh, shardings.params, loss_chunk=20)(
      jax.device_put(host.params, shardings.params), batch)
  np.testing.assert_allclose(float(sums["loss_sum"]) / float(sums["count"]), m0["loss"], rtol=1e-6)
