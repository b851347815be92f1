"""scan_layers (gla_jax/models/scan.py): stacked runs give the unscanned model's logits, gradients and
decode steps with the same (restacked) params; runs, layouts, fla round trip, param specs, one sharded
Trainer step, the checkpoint-layout check, and a lowered program whose size does not grow with depth."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gla_jax.convert import load_fla_checkpoint, save_fla_checkpoint
from gla_jax.convert.fla import fla_state_dict
from gla_jax.layers.mixers import registry
from gla_jax.models import build_model, presets
from gla_jax.models.lm import make_block
from gla_jax.models.scan import layer_runs, stack_layers, unstack_layers

B, T = 2, 16

CASES = {  # name: (config, its runs)
    "gla": (presets.gla_tiny(num_hidden_layers=3, remat=True), ((0, 1, 2),)),
    "hybrid": (presets.hybrid_tiny(num_hidden_layers=4, remat=True, remat_policy="dots_saveable"),
               ((0,), (1,), (2, 3))),
    "hgrn2": (presets.tiny("hgrn2", num_hidden_layers=3, remat=True), ((0,), (1, 2))),
    "lightning": (presets.tiny("lightning", num_hidden_layers=2, remat=True), ((0,), (1,))),
    "mamba2": (presets.tiny("mamba2", num_hidden_layers=2, remat=True), ((0, 1),)),
    "transformer": (presets.tiny("attention", num_hidden_layers=2, remat=True), ((0, 1),)),
}


def _scanned(cfg):
  return dataclasses.replace(cfg, scan_layers=True)


def _pure_fn(cfg, method="__call__"):
  """(params, *args) → model.method(*args) for a pure params dict of `cfg`'s layout."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))
  def fn(params, *args, **kw):
    return getattr(nnx.merge(graphdef, params), method)(*args, **kw)
  return fn


def _params(cfg, seed=0):
  return nnx.to_pure_dict(nnx.state(build_model(cfg, rngs=nnx.Rngs(seed)), nnx.Param))


def _close(a, b, what, rtol=1e-5):
  """|a − b| ≤ rtol · max|b| + 1e-7 (f32 relative to the array's scale)."""
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=0, atol=rtol * float(np.max(np.abs(b))) + 1e-7, err_msg=what)


def _inputs():
  ids = jax.random.randint(jax.random.key(1), (B, T), 0, 256)
  seg = jnp.array([[0] * 10 + [1] * 6, [0] * 16], jnp.int32)
  return ids, seg


# ------------------------------------------------------------------------------------------------ runs


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_runs(name):
  cfg, runs = CASES[name]
  assert layer_runs(cfg) == runs


@pytest.mark.parametrize("kind", registry.KIND_NAMES)
def test_every_layer_of_a_run_builds_the_same_block(kind):
  """The run key (scan._layer_key) must capture every static difference: a layer's graph (layer_idx,
  which no mixer but Lightning reads in its math, set to the run's first) equals its run's template."""
  cfg = presets.tiny(kind, num_hidden_layers=3)
  for run in layer_runs(cfg):
    want = nnx.graphdef(nnx.eval_shape(lambda: make_block(cfg, run[0], nnx.Rngs(0))))
    for i in run[1:]:
      block = nnx.eval_shape(lambda i=i: make_block(cfg, i, nnx.Rngs(0)))
      if hasattr(block.attn, "layer_idx"):
        block.attn.layer_idx = run[0]
      assert nnx.graphdef(block) == want, (kind, i)


def test_stack_unstack_round_trip_and_errors():
  cfg = _scanned(CASES["hybrid"][0])
  stacked = _params(cfg)
  assert stacked["runs"][2]["attn"]["q_proj"]["kernel"].shape[0] == 2
  flat = unstack_layers(stacked, cfg)
  assert sorted(flat["layers"]) == [0, 1, 2, 3] and "runs" not in flat
  back = stack_layers(flat, cfg)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, stacked))
  with pytest.raises(ValueError, match="unscanned params"):
    stack_layers(stacked, cfg)
  with pytest.raises(ValueError, match="scanned params"):
    unstack_layers(flat, cfg)


# ------------------------------------------------------------------------------------------------ math


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_and_every_gradient_match_unscanned(name):
  cfg, _ = CASES[name]
  scfg = _scanned(cfg)
  ps = _params(scfg)
  pu = unstack_layers(ps, scfg)
  ids, seg = _inputs()
  cot = jax.random.normal(jax.random.key(2), (B, T, cfg.vocab_size))

  def run(c, params):
    fn = _pure_fn(c)
    def f(p):
      y, vjp = jax.vjp(lambda q: fn(q, ids, segment_ids=seg), p)
      return y, vjp(cot)[0]
    return jax.jit(f)(params)

  ys, gs = run(scfg, ps)
  yu, gu = run(cfg, pu)
  _close(ys, yu, "logits")
  gs = unstack_layers(gs, scfg)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gs), jax.tree.leaves(gu)):
    _close(a, b, f"grad {jax.tree_util.keystr(path)}", rtol=2e-5)


@pytest.mark.parametrize("name", ["gla", "hybrid", "hgrn2", "transformer"])
def test_prefill_and_decode_match_unscanned(name):
  cfg, _ = CASES[name]
  scfg = _scanned(cfg)
  ps = _params(scfg)
  pu = unstack_layers(ps, scfg)
  ids, _ = _inputs()

  def run(c, params):
    prefill = jax.jit(lambda p, x: _pure_fn(c, "prefill")(p, x, max_len=12))
    step = jax.jit(_pure_fn(c, "decode_step"))
    logits, cache = prefill(params, ids[:, :8])
    out = [logits[:, -1]]
    for t in (8, 9, 10):
      lg, cache = step(params, ids[:, t], cache)
      out.append(lg)
    return jnp.stack(out), cache

  ys, cache_s = run(scfg, ps)
  yu, cache_u = run(cfg, pu)
  _close(ys, yu, "decode logits")
  assert cache_s.stacked and not cache_u.stacked
  assert cache_s.max_len == cache_u.max_len == (12 if name == "transformer" else None)
  assert cache_s.batch_size == cache_u.batch_size == B


# ------------------------------------------------------------------------------------------------ formats


def test_fla_round_trip_of_a_scanned_model(tmp_path):
  scfg = _scanned(CASES["hybrid"][0])
  model = build_model(scfg, rngs=nnx.Rngs(0))
  flat_model = build_model(CASES["hybrid"][0], rngs=nnx.Rngs(1))
  nnx.update(flat_model, unstack_layers(nnx.to_pure_dict(nnx.state(model, nnx.Param)), scfg))
  sd, sd_flat = fla_state_dict(model), fla_state_dict(flat_model)
  assert sorted(sd) == sorted(sd_flat) and "model.layers.3.attn.q_proj.weight" in sd
  for k in sd:
    np.testing.assert_array_equal(sd[k], sd_flat[k], err_msg=k)
  save_fla_checkpoint(model, str(tmp_path))
  assert "scan_layers" not in (tmp_path / "config.json").read_text()
  again = load_fla_checkpoint(str(tmp_path), scan_layers=True)
  assert again.config.scan_layers and again.layers is None
  want = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  got = nnx.to_pure_dict(nnx.state(again, nnx.Param))
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), got, want))
  plain = load_fla_checkpoint(str(tmp_path))
  assert not plain.config.scan_layers and plain.runs is None


def test_param_specs_replicate_the_stacked_axis():
  from train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from train import state as state_lib  # pylint: disable=g-import-not-at-top
  from train.config import MeshConfig  # pylint: disable=g-import-not-at-top
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  cfg = _scanned(presets.gla_tiny(num_hidden_layers=3))
  model_def, abstract = state_lib.abstract_model(lambda rngs: build_model(cfg, rngs=rngs))
  mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  specs = mesh_lib.param_specs(abstract, model_def.logical_names, mesh)
  names = model_def.logical_names["runs"][0]
  assert names["mlp"]["up_proj"]["kernel"] == ("layers", "embed", "mlp")
  assert tuple(specs["runs"][0]["mlp"]["up_proj"]["kernel"]) == (None, "fsdp", "tensor")
  for path, n in jax.tree_util.tree_leaves_with_path(model_def.logical_names["runs"],
                                                     is_leaf=lambda x: isinstance(x, tuple)):
    assert n[0] == "layers", path
  # weight decay: per-layer matrices only (a stacked norm weight [n, D] is not a matrix)
  mask = state_lib.decay_mask(abstract)
  assert mask["runs"][0]["mlp"]["up_proj"]["kernel"] and not mask["runs"][0]["attn_norm"]["weight"]


# ------------------------------------------------------------------------------------------------ train


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")
def test_trainer_step_on_a_mesh_and_the_checkpoint_layout_check(tmp_path):
  from tests.train.common import tiny_config  # pylint: disable=g-import-not-at-top
  from train.config import ConfigError  # pylint: disable=g-import-not-at-top
  from train.trainer import Trainer  # pylint: disable=g-import-not-at-top
  base = tiny_config(tmp_path / "run", "model.hidden_size=64", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2",
                     steps=2)
  config = dataclasses.replace(base, model=dataclasses.replace(base.model, num_hidden_layers=2,
                                                               scan_layers=True, remat=True))
  trainer = Trainer(config, devices=jax.devices()[:8])
  summary = trainer.run(until=2)
  assert summary["step"] == 2 and np.isfinite(summary["losses"]).all()
  kernel = trainer.state.params["runs"][0]["mlp"]["up_proj"]["kernel"]
  assert kernel.shape[0] == 2 and tuple(kernel.sharding.spec)[:3] == (None, "fsdp", "tensor")
  trainer.close()
  flat = dataclasses.replace(config, model=dataclasses.replace(config.model, scan_layers=False))
  other = Trainer(flat, devices=jax.devices()[:8])
  with pytest.raises(ConfigError, match="model.scan_layers"):
    other.initialize()
  other.close()


# ------------------------------------------------------------------------------------------------ depth


def test_lowered_loss_does_not_grow_with_depth():
  """The lowered program of a scanned model is the same size at 2 and 8 layers; unscanned it grows."""
  ids, seg = _inputs()

  def lowered_size(cfg):
    fn = _pure_fn(cfg)
    abstract = jax.eval_shape(lambda: _params(cfg))
    loss = lambda p: jnp.mean(fn(p, ids, segment_ids=seg))
    return len(jax.jit(jax.grad(loss)).lower(abstract).as_text())

  size = {(n, s): lowered_size(presets.gla_tiny(num_hidden_layers=n, scan_layers=s))
          for n in (2, 8) for s in (True, False)}
  assert size[8, True] < 1.2 * size[2, True], size
  assert size[8, False] > 2.5 * size[2, False], size
