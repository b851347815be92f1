"""Checks shared by the per-kind model tests (test_retnet / test_lightning / test_hgrn2): fla-reference
parity of logits and every gradient in one jit, prefill + decode, token-by-token decode, packed ==
separate, checkpoint and config round trips, abstract param counts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gla_jax.convert import config_from_fla, config_to_fla, load_fla_checkpoint, save_fla_checkpoint
from gla_jax.models import build_model
from tests.gla_jax import fla_reference
from tests.gla_jax.helpers import fla_params, make_model, named_grads, random_ids, rel_err

TOL = 1e-4  # f32, relative to the largest entry (a wrong sign / decay / mask gives O(1))


def check_parity(config, T=24, segment_ids=None, seed=0):
  """Logits and all parameter gradients (random cotangent) == the fla-named reference, one jit."""
  model = make_model(config, seed)
  ids = random_ids((2, T), config.vocab_size, seed)
  cot = jax.random.normal(jax.random.key(seed + 1), (2, T, config.vocab_size), jnp.float32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def run(p, sd):
    ours, vjp_ours = jax.vjp(lambda p: nnx.merge(graphdef, p, rest)(ids, segment_ids=segment_ids), p)
    ref, vjp_ref = jax.vjp(lambda sd: fla_reference.forward(sd, config, ids, segment_ids), sd)
    return ours, ref, vjp_ours(cot)[0], vjp_ref(cot)[0]

  ours, ref, g_ours, g_ref = run(params, fla_params(model))
  assert rel_err(ours, ref) < TOL, rel_err(ours, ref)
  g_ours = named_grads(model, g_ours)
  assert set(g_ours) == set(g_ref), sorted(set(g_ours) ^ set(g_ref))
  for name, g in g_ref.items():
    assert float(np.max(np.abs(g))) > 0, f"{name}: zero reference gradient (untested)"
    assert rel_err(g_ours[name], g) < TOL, (name, rel_err(g_ours[name], g))


def check_decode(config, T=12, prompt=5, seed=0):
  """prefill + decode_step == forward, and token-by-token decoding from an empty cache == forward."""
  model = make_model(config, seed)
  ids = random_ids((2, T), config.vocab_size, seed + 3)
  full = np.asarray(nnx.jit(lambda m, x: m(x))(model, ids))
  step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
  logits, cache = nnx.jit(lambda m, x: m.prefill(x, max_len=T))(model, ids[:, :prompt])
  got = [np.asarray(logits)]
  for t in range(prompt, T):
    out, cache = step(model, ids[:, t], cache)
    got.append(np.asarray(out)[:, None])
  assert rel_err(np.concatenate(got, 1), full) < 1e-5
  cache = model.init_cache(2, T)
  got = []
  for t in range(T):
    out, cache = step(model, ids[:, t], cache)
    got.append(np.asarray(out)[:, None])
  assert rel_err(np.concatenate(got, 1), full) < 1e-5


def check_packed_equals_separate(config, T=24, cut=9, seed=0):
  """Two documents packed in one row give the logits of each run alone."""
  model = make_model(config, seed)
  ids = random_ids((1, T), config.vocab_size, seed + 5)
  seg = jnp.asarray((np.arange(T) >= cut).astype(np.int32))[None]

  @nnx.jit
  def run(m, ids, seg):
    return m(ids, segment_ids=seg), m(ids[:, :cut]), m(ids[:, cut:])

  packed, first, second = run(model, ids, seg)
  assert rel_err(packed[:, :cut], first) < 1e-5
  assert rel_err(packed[:, cut:], second) < 1e-5


def check_roundtrip(config, tmp_path, seed=0):
  """save_fla_checkpoint → load_fla_checkpoint: same params and logits; the config round trips."""
  assert config_from_fla(config_to_fla(config)) == config
  model = make_model(config, seed)
  save_fla_checkpoint(model, str(tmp_path))
  loaded = load_fla_checkpoint(str(tmp_path))
  assert loaded.config == config
  a = nnx.to_flat_state(nnx.state(model, nnx.Param))
  b = dict(nnx.to_flat_state(nnx.state(loaded, nnx.Param)))
  assert len(a) == len(b)
  for path, var in a:
    np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(b[path][...]))
  ids = random_ids((1, 16), config.vocab_size, seed)
  fwd = nnx.jit(lambda m, x: m(x))
  np.testing.assert_array_equal(np.asarray(fwd(model, ids)), np.asarray(fwd(loaded, ids)))


def param_count(config) -> int:
  """Parameters of `build_model(config)`, from abstract shapes (nothing allocated)."""
  abstract = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  return sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))


def trunk_count(config, mixer_per_layer: int) -> int:
  """fla's trunk around the mixers: embeddings (+ untied head), per layer 2 RMSNorms + SwiGLU, final norm."""
  D, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
  head = 0 if config.tie_word_embeddings else V * D
  return V * D + head + D + L * (mixer_per_layer + 2 * D + 3 * D * config.mlp_size)


def layer_sd(layer, renames=None) -> dict[str, jax.Array]:
  """A standalone mixer's params under fla's in-layer names (prefix "") in torch layouts."""
  return layer_sd_from_state(nnx.state(layer, nnx.Param), renames)


def layer_sd_from_state(state, renames=None) -> dict[str, jax.Array]:
  """`layer_sd` of an nnx.State of a layer's params (or of their gradients)."""
  out, renames = {}, renames or {}
  for path, var in nnx.to_flat_state(state):
    *mods, leaf = (str(p) for p in path)
    mods = [renames.get(m, m) for m in mods]
    x = jnp.asarray(var[...], jnp.float32)
    if leaf == "kernel":
      leaf, x = "weight", x.T
    elif leaf == "weight" and mods[-1].endswith("_conv1d"):
      x = x.T[:, None, :]
    out[".".join([*mods, leaf])] = x
  return out


def check_layer_parity(layer, ref, x, *, renames=None, segment_ids=None, **kw):
  """A standalone layer == `ref(x, sd, **kw)` (values and the gradients w.r.t. x, every param and every
  array in `kw`), for options the model configs cannot reach (fla's RetNet ignores short convs)."""
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  names = [n for n, a in kw.items() if hasattr(a, "shape")]
  static = {n: a for n, a in kw.items() if n not in names}

  def ours(x, p, arrays):
    y, _ = nnx.merge(graphdef, p, rest)(x, segment_ids=segment_ids, **arrays)
    return y

  def theirs(x, sd, arrays):
    return ref(x, sd, "", segment_ids=segment_ids, **arrays, **static)

  arrays = {n: kw[n] for n in names}
  cot = jax.random.normal(jax.random.key(7), x.shape, jnp.float32)

  @jax.jit
  def run(x, params, sd, arrays):
    y1, vjp1 = jax.vjp(ours, x, params, arrays)
    y2, vjp2 = jax.vjp(theirs, x, sd, arrays)
    return y1, y2, vjp1(cot), vjp2(cot)

  y1, y2, (dx1, dp1, da1), (dx2, dp2, da2) = run(x, params, layer_sd(layer, renames), arrays)
  assert rel_err(y1, y2) < TOL, rel_err(y1, y2)
  assert rel_err(dx1, dx2) < TOL
  dp1 = layer_sd_from_state(dp1, renames)
  assert set(dp1) == set(dp2)
  for n in dp2:
    assert float(np.max(np.abs(dp2[n]))) > 0, n
    assert rel_err(dp1[n], dp2[n]) < TOL, (n, rel_err(dp1[n], dp2[n]))
  for n in da1:
    assert rel_err(da1[n], da2[n]) < TOL, (n, rel_err(da1[n], da2[n]))
