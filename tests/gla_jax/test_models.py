"""GLA and Transformer++ models: fla's parameter counts, init, sharding names, equality with the
independent fla-named reference (logits and every gradient), packed documents, functional training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.layers import LOGICAL_AXES, GatedLinearAttention
from gla_jax.models import (CausalLM, GLAConfig, GLAForCausalLM, TransformerConfig, TransformerForCausalLM,
                            build_model, presets)
from tests.gla_jax.helpers import (forward_both, grads_both, make_model, packed_segments, random_ids,
                                   rel_err)


def _count(config) -> int:
  abstract = nnx.eval_shape(lambda rngs: build_model(config, rngs=rngs), nnx.Rngs(0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("preset, expected", [
    # fla: 341.7M (tied) and 1.3655B (untied); per layer 4·D·K·… see docs/models.md
    (presets.gla_340m, 341_707_776),
    (presets.gla_1p3b, 1_365_514_240),
    (presets.transformer_340m, 341_099_520),
    (presets.transformer_1p3b, 1_364_297_728),
])
def test_parameter_counts(preset, expected):
  assert _count(preset()) == expected


def test_fla_rounded_counts_and_mlp_width():
  assert round(341_707_776 / 1e6, 1) == 341.7 and round(1_365_514_240 / 1e9, 4) == 1.3655
  assert presets.gla_340m().mlp_size == 2816 and presets.gla_1p3b().mlp_size == 5632


def test_init_and_sharding_names():
  model = make_model(presets.gla_tiny(hidden_size=128, vocab_size=512, tie_word_embeddings=False,
                                      use_short_conv=True, num_kv_heads=1))
  seen = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var[...].ndim, path
    assert all(n in LOGICAL_AXES for n in names), (path, names)
    seen["/".join(map(str, path))] = (names, np.asarray(var[...]))
  attn = "layers/0/attn/"
  assert seen[attn + "q_proj/kernel"][0] == ("embed", "heads")
  assert seen[attn + "k_proj/kernel"][0] == ("embed", "kv")
  assert seen[attn + "o_proj/kernel"][0] == ("heads", "embed")
  assert seen[attn + "gk_down/kernel"][0] == ("embed", "lowrank")
  assert seen[attn + "gk_up/bias"][0] == ("kv",)
  assert seen[attn + "q_conv1d/weight"][0] == ("conv", "heads")
  assert seen["layers/1/mlp/down_proj/kernel"][0] == ("mlp", "embed")
  assert seen["embeddings/embedding"][0] == ("vocab", "embed")
  assert seen["lm_head/kernel"][0] == ("embed", "vocab")
  assert seen["norm/weight"][0] == ("norm",)
  # fla init: N(0, 0.02) weights, zero biases, unit norms
  for key in ("embeddings/embedding", "lm_head/kernel", "layers/0/mlp/gate_proj/kernel"):
    assert abs(seen[key][1].std() - 0.02) < 0.002 and abs(seen[key][1].mean()) < 0.002
  np.testing.assert_array_equal(seen[attn + "gk_up/bias"][1], 0.0)
  np.testing.assert_array_equal(seen[attn + "g_norm/weight"][1], 1.0)
  np.testing.assert_array_equal(seen["layers/0/attn_norm/weight"][1], 1.0)


def _two_device_mesh(axis_type):
  devices = np.array(jax.devices()[:2])
  if devices.size < 2:
    pytest.skip("needs 2 devices")
  return jax.sharding.Mesh(devices, ("model",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))


def test_build_under_mesh_with_and_without_rules():
  mesh = _two_device_mesh("Auto")
  cfg = presets.gla_tiny(num_hidden_layers=1)
  create = lambda: make_model(cfg)
  with jax.set_mesh(mesh):
    plain = create()  # no rules: every name is unknown → replicated
    with nnx.logical_axis_rules([("heads", "model"), ("mlp", "model")]):
      sharded = create()
      specs = nnx.get_partition_spec(nnx.state(sharded, nnx.Param))
  q = sharded.layers[0].attn.q_proj.kernel
  assert tuple(q[...].sharding.spec) == (None, "model")
  assert tuple(sharded.layers[0].mlp.down_proj.kernel[...].sharding.spec)[:1] == ("model",)
  with jax.set_mesh(mesh), nnx.logical_axis_rules([("heads", "model")]), nnx.use_eager_sharding(False):
    lazy = GatedLinearAttention(64, num_heads=2, rngs=nnx.Rngs(0))  # the trainer's jit-init mode
  assert all(s is None for s in lazy.q_proj.kernel[...].sharding.spec)
  assert all(s is None for s in plain.layers[0].attn.q_proj.kernel[...].sharding.spec)
  assert q.get_metadata()["out_sharding"] == ("embed", "heads")
  # get_partition_spec keeps the logical names, mapped by the rules active at the call
  assert tuple(specs["layers"][0]["attn"]["q_proj"]["kernel"].get_value()) == ("embed", "model")
  ids = random_ids((2, 8), cfg.vocab_size)
  fwd = nnx.jit(lambda m, x: m(x))
  with jax.set_mesh(mesh):
    np.testing.assert_allclose(fwd(plain, ids), fwd(sharded, ids), rtol=1e-5, atol=1e-6)


def test_layer_params_sharded_on_explicit_mesh():
  mesh = _two_device_mesh("Explicit")
  with jax.set_mesh(mesh), nnx.logical_axis_rules([("kv", "model")]):
    layer = GatedLinearAttention(64, num_heads=2, rngs=nnx.Rngs(0))
  assert tuple(layer.k_proj.kernel[...].sharding.spec) == (None, "model")
  assert all(s is None for s in layer.q_proj.kernel[...].sharding.spec)


GLA_CASES = {
    "default_tied_2layers": presets.gla_tiny(chunk_size=16, initializer_range=0.1),
    "gqa_conv_fmap_clamp_untied": presets.gla_tiny(
        chunk_size=16, initializer_range=0.1, num_hidden_layers=1, num_heads=4, num_kv_heads=2,
        use_short_conv=True, feature_map="relu", clamp_min=-0.045, tie_word_embeddings=False,
        expand_k=1.0),
    "no_output_gate": presets.gla_tiny(chunk_size=16, initializer_range=0.1, num_hidden_layers=1,
                                       use_output_gate=False),
}
TF_CASES = {
    "default_tied_2layers": presets.transformer_tiny(initializer_range=0.1),
    "gqa_qknorm_bias_window": presets.transformer_tiny(
        initializer_range=0.1, num_hidden_layers=1, num_heads=4, num_kv_heads=2, qk_norm=True,
        qkv_bias=True, window_size=7, tie_word_embeddings=False),
}
ALL_CASES = [pytest.param(c, "gla", id=f"gla-{n}") for n, c in GLA_CASES.items()] + \
    [pytest.param(c, "transformer", id=f"transformer-{n}") for n, c in TF_CASES.items()]


@pytest.mark.parametrize("cfg, kind", ALL_CASES)
def test_logits_match_fla_reference(cfg, kind):
  """Our model = the plain-jnp statement of fla's model, on one document and on packed documents."""
  model = make_model(cfg)
  B, T = 2, 37
  ids = jnp.concatenate([random_ids((1, T), cfg.vocab_size, seed=1)] * 2)
  seg = packed_segments(B, T, (11, 30)).at[0].set(0)  # row 0: one document; row 1: three
  ours, ref = forward_both(model, ids, seg, kind)
  assert rel_err(ours, ref) < 2e-5
  # the packing matters (so the check above is not vacuous)
  assert rel_err(ours[1, 11:], ours[0, 11:]) > 1e-3


@pytest.mark.parametrize("cfg, kind", [
    pytest.param(GLA_CASES["gqa_conv_fmap_clamp_untied"], "gla", id="gla"),
    pytest.param(TF_CASES["default_tied_2layers"], "transformer", id="transformer"),
])
def test_gradients_match_fla_reference(cfg, kind):
  model = make_model(cfg)
  B, T = 2, 20
  ids = random_ids((B, T), cfg.vocab_size, seed=2)
  seg = packed_segments(B, T, (9,))
  cot = jax.random.normal(jax.random.key(2), (B, T, cfg.vocab_size))
  g_ours, g_ref = grads_both(model, ids, seg, cot, kind)
  assert set(g_ours) == set(g_ref)
  for name in g_ref:
    assert rel_err(g_ours[name], g_ref[name]) < 1e-4, name


@pytest.mark.parametrize("cfg", [GLA_CASES["gqa_conv_fmap_clamp_untied"],
                                 TF_CASES["gqa_qknorm_bias_window"]], ids=["gla", "transformer"])
def test_packed_documents_are_independent(cfg):
  model = make_model(cfg)
  ids = random_ids((2, 30), cfg.vocab_size, seed=3)
  seg = packed_segments(2, 30, (15,))
  fwd = nnx.jit(lambda m, x, s: m(x, segment_ids=s))
  packed = fwd(model, ids, seg)
  one_doc = jnp.zeros((2, 15), jnp.int32)
  first, second = fwd(model, ids[:, :15], one_doc), fwd(model, ids[:, 15:], one_doc)
  assert rel_err(packed[:, :15], first) < 1e-5
  assert rel_err(packed[:, 15:], second) < 1e-5
  # and as one document the second half does see the first
  assert rel_err(fwd(model, ids, jnp.zeros_like(seg))[:, 15:], second) > 1e-3


def test_functional_train_step_and_remat():
  """nnx.split → pure jax.jit step with nnx.merge inside; remat gives the same loss and gradients."""
  cfg = presets.gla_tiny(chunk_size=16, num_hidden_layers=1)
  ids = random_ids((2, 21), cfg.vocab_size, seed=4)

  def make_step(graphdef, rest):
    @jax.jit
    def step(params):
      def loss_fn(p):
        logits = nnx.merge(graphdef, p, rest)(ids[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))
      loss, grads = jax.value_and_grad(loss_fn)(params)
      return loss, grads, jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    return step

  results = []
  for remat in (False, True):
    graphdef, params, rest = nnx.split(make_model(dataclasses.replace(cfg, remat=remat)), nnx.Param, ...)
    step = make_step(graphdef, rest)
    loss0, grads, params = step(params)
    loss1, _, _ = step(params)
    assert np.isfinite(loss0) and float(loss1) < float(loss0)
    results.append((loss0, grads))
  assert abs(float(results[0][0]) - float(results[1][0])) < 1e-6
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["gla", "transformer"])
def test_bfloat16_compute_close_to_float32(kind):
  kw = dict(initializer_range=0.1, num_hidden_layers=1)
  base = presets.gla_tiny(chunk_size=16, **kw) if kind == "gla" else presets.transformer_tiny(**kw)
  ids = random_ids((2, 20), base.vocab_size, seed=5)
  fwd = nnx.jit(lambda m, x: m(x))
  ref = fwd(make_model(base), ids)
  low = fwd(make_model(dataclasses.replace(base, dtype="bfloat16")), ids)  # float32 params
  assert low.dtype == jnp.float32
  assert 1e-4 < rel_err(low, ref) < 3e-2  # rounded, but close


def test_build_model_dispatch_and_errors():
  assert make_model(presets.gla_tiny()).config.layer_kinds() == ("gla", "gla")
  assert make_model(presets.transformer_tiny()).config.layer_kinds() == ("attention", "attention")
  assert make_model(presets.hybrid_tiny()).config.layer_kinds() == ("gla", "swa")
  assert isinstance(GLAForCausalLM(presets.gla_tiny(), rngs=nnx.Rngs(0)), CausalLM)
  with pytest.raises(ValueError, match="GLAConfig"):
    GLAForCausalLM(presets.transformer_tiny(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="TransformerConfig"):
    TransformerForCausalLM(presets.gla_tiny(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="config"):
    build_model(dict(hidden_size=64), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_kv_heads"):
    GLAConfig(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="dtype"):
    TransformerConfig(dtype="int8")
  with pytest.raises(ValueError, match="feature_map"):
    GLAConfig(feature_map="tanh")
  model = make_model(presets.gla_tiny())
  with pytest.raises(ValueError, match="input_ids"):
    model(jnp.zeros((2, 5), jnp.float32))
  with pytest.raises(ValueError, match="segment_ids"):
    model(jnp.zeros((2, 5), jnp.int32), segment_ids=jnp.zeros((2, 4), jnp.int32))
