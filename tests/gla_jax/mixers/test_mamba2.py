"""Mamba-2 (fla 0.6.0 `Mamba2ForCausalLM`): logits and every gradient equal the fla-named reference
(tests/gla_jax/refs/mamba2.py) with and without packed documents and with every math option; decoding
(prefill, chunks from a cache, token by token) equals the forward; packed = separate; fla checkpoint and
config round trips; fla's init; the 340M preset's parameter count; config errors."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from gla_jax.convert import config_from_fla, config_to_fla, load_fla_checkpoint, save_fla_checkpoint
from gla_jax.layers.mixers.mamba2 import Mamba2
from gla_jax.models import build_model, presets
from gla_jax.models.configs.mamba2 import Mamba2Config, preset_340m
from tests.gla_jax.helpers import forward_both, grads_both, make_model, packed_segments, random_ids, rel_err

_BASE = dict(chunk_size=16, initializer_range=0.1)
CASES = {
    "base": presets.tiny("mamba2", **_BASE),
    # G = 2 groups of H/G = 4 heads (the group order matters), D per channel, norm before gate, biases,
    # untied head, uniform conv init
    "groups": presets.tiny("mamba2", **_BASE, n_groups=2, D_has_hdim=True, norm_before_gate=True,
                           use_bias=True, tie_word_embeddings=False, conv_init=0.3, num_hidden_layers=1),
    # no gated norm (y · silu(z)), no conv bias, an active dt clamp, plain N(0, σ) out_proj
    "plain": presets.tiny("mamba2", **_BASE, rmsnorm=False, use_conv_bias=False, dt_limit=(0.005, 0.05),
                          rescale_prenorm_residual=False, num_hidden_layers=1),
}
B, T = 2, 40
CUTS = (13, 29)


@pytest.mark.parametrize("name, packed", [("base", False), ("groups", True), ("plain", True)])
def test_logits_and_gradients_match_fla_reference(name, packed):
  cfg = CASES[name]
  model = make_model(cfg)
  ids = random_ids((B, T), cfg.vocab_size, seed=1)
  for seg in (None, packed_segments(B, T, CUTS)):
    ours, ref = forward_both(model, ids, seg, None)
    assert rel_err(ours, ref) < 1e-4, (name, seg is not None)
  seg = packed_segments(B, T, CUTS) if packed else None
  cot = jax.random.normal(jax.random.key(3), ours.shape)
  g_ours, g_ref = grads_both(model, ids, seg, cot, None)
  assert set(g_ours) == set(g_ref)
  for k in g_ref:
    assert rel_err(g_ours[k], g_ref[k]) < 1e-4, k


def test_decode_equals_forward():
  cfg = CASES["groups"]
  model = make_model(cfg)
  P, M = 9, 20  # prompt of P tokens, a chunk of M − P tokens from the cache, then single steps
  ids = random_ids((B, T), cfg.vocab_size, seed=7)
  full = nnx.jit(lambda m, x: m(x))(model, ids)
  step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
  logits, cache = nnx.jit(lambda m, x: m.prefill(x))(model, ids[:, :P])
  outs = [logits]
  logits, cache = nnx.jit(lambda m, x, c: m.forward_with_cache(x, c))(model, ids[:, P:M], cache)
  outs.append(logits)
  for t in range(M, T):
    step_logits, cache = step(model, ids[:, t], cache)
    outs.append(step_logits[:, None])
  assert rel_err(jnp.concatenate(outs, axis=1), full) < 2e-5
  assert cache.layers[0].state.shape == (B, cfg.num_heads, cfg.state_size, cfg.head_dim)
  assert cache.layers[0].conv[0].shape == (B, cfg.conv_kernel - 1, cfg.conv_dim)
  # token by token from an empty cache
  cache = model.init_cache(B)
  outs = []
  for t in range(12):
    step_logits, cache = step(model, ids[:, t], cache)
    outs.append(step_logits[:, None])
  assert rel_err(jnp.concatenate(outs, axis=1), full[:, :12]) < 2e-5
  mixer = model.layers[0].attn
  assert mixer.cache_bytes(10_000, 2) == mixer.cache_bytes(10, 2)  # constant in the length


def test_packed_equals_separate():
  cfg = CASES["plain"]
  model = make_model(cfg)
  fwd = nnx.jit(lambda m, x, s: m(x, segment_ids=s))
  ids = random_ids((1, T), cfg.vocab_size, seed=5)
  cut = 17
  packed = fwd(model, ids, packed_segments(1, T, [cut]))
  first = fwd(model, ids[:, :cut], None)
  second = fwd(model, ids[:, cut:], None)
  assert rel_err(packed[:, :cut], first) < 1e-5
  assert rel_err(packed[:, cut:], second) < 1e-5
  # without segment_ids the second document sees the first (state and conv both carry over)
  assert rel_err(fwd(model, ids, None)[:, cut:], second) > 1e-3


@pytest.mark.parametrize("name", ["base", "groups"])
def test_fla_checkpoint_round_trip(tmp_path, name):
  cfg = CASES[name]
  model = make_model(cfg)
  save_fla_checkpoint(model, str(tmp_path))
  tensors = load_file(os.path.join(str(tmp_path), "model.safetensors"))
  H, I, C = cfg.num_heads, cfg.inner_size, cfg.conv_dim
  p = f"backbone.layers.{cfg.num_hidden_layers - 1}.mixer."
  assert tensors[p + "in_proj.weight"].shape == (I + C + H, cfg.hidden_size)
  assert tensors[p + "conv1d.weight"].shape == (C, 1, cfg.conv_kernel)
  assert tensors[p + "A_log"].shape == tensors[p + "dt_bias"].shape == (H,)
  assert tensors[p + "D"].shape == ((I,) if cfg.D_has_hdim else (H,))
  assert tensors[p + "norm.weight"].shape == (I,)
  assert tensors[p + "out_proj.weight"].shape == (cfg.hidden_size, I)
  assert "backbone.layers.0.norm.weight" in tensors and "backbone.norm_f.weight" in tensors
  assert ("lm_head.weight" in tensors) != cfg.tie_word_embeddings
  assert (p + "in_proj.bias" in tensors) == cfg.use_bias
  assert not any(".mlp" in k for k in tensors)
  with open(os.path.join(str(tmp_path), "config.json")) as f:
    fla_cfg = json.load(f)
  assert fla_cfg["model_type"] == "mamba2" and fla_cfg["architectures"] == ["Mamba2ForCausalLM"]
  back = load_fla_checkpoint(str(tmp_path), chunk_size=cfg.chunk_size)
  assert back.config == cfg
  for x, y in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(back, nnx.Param))):
    np.testing.assert_array_equal(x, y)
  ids = random_ids((1, 12), cfg.vocab_size)
  fwd = nnx.jit(lambda m, x: m(x))
  np.testing.assert_array_equal(fwd(model, ids), fwd(back, ids))


def test_config_round_trip():
  for cfg in (*CASES.values(), preset_340m(), Mamba2Config()):
    fla = config_to_fla(cfg)
    assert "num_heads" not in fla or fla["num_heads"] == cfg.num_heads
    assert config_from_fla(fla, chunk_size=cfg.chunk_size) == cfg
    # JSON (lists for tuples, Infinity for the open dt_limit) reads back the same
    assert config_from_fla(json.loads(json.dumps(fla)), chunk_size=cfg.chunk_size) == cfg
  # a fla config.json (its own chunk_size 256 and num_heads are the SSD's / derived: ignored)
  fla = {"model_type": "mamba2", "hidden_size": 128, "head_dim": 32, "num_heads": 8, "state_size": 16,
         "num_hidden_layers": 2, "chunk_size": 256, "time_step_limit": [0.0, 1e9], "dt_limit": [0.0, 1e9]}
  cfg = config_from_fla(fla)
  assert isinstance(cfg, Mamba2Config) and cfg.num_heads == 8 and cfg.chunk_size == 64
  assert cfg.dt_limit == (0.0, 1e9)


def _count(config) -> int:
  abstract = nnx.eval_shape(lambda rngs: build_model(config, rngs=rngs), nnx.Rngs(0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def test_preset_340m_parameter_count():
  cfg = preset_340m()
  D, L, V = 1024, 48, 32000
  I, N, G, W, P = 2 * D, 128, 1, 4, 64
  H, C = I // P, I + 2 * G * N
  # fla Mamba2: in_proj [I + C + H, D], conv1d [C, 1, W] + bias [C], dt_bias, A_log, D [H], norm [I],
  # out_proj [D, I]; the block's norm [D]; embeddings, lm_head (untied) [V, D]; norm_f [D]
  per_layer = D * (I + C + H) + C * W + C + 3 * H + I + I * D + D
  expected = L * per_layer + 2 * V * D + D
  assert expected == 382_387_712
  assert _count(cfg) == expected
  assert cfg.num_heads == H and cfg.conv_dim == C


def test_init_matches_fla():
  cfg = presets.tiny("mamba2", hidden_size=128, head_dim=16, num_hidden_layers=3, conv_init=0.05)
  m = make_model(cfg).layers[1].attn
  dt = np.asarray(jax.nn.softplus(m.dt_bias[...]))
  assert dt.min() >= cfg.dt_min * (1 - 1e-5) and dt.max() <= cfg.dt_max * (1 + 1e-5)
  A = np.exp(np.asarray(m.A_log[...]))
  assert A.min() >= 1 and A.max() <= 16 and len(np.unique(A)) == cfg.num_heads
  np.testing.assert_array_equal(m.D[...], np.ones(cfg.num_heads))
  np.testing.assert_array_equal(m.norm.weight[...], np.ones(cfg.inner_size))
  bound = 1 / math.sqrt(cfg.inner_size) / math.sqrt(cfg.num_hidden_layers)
  w = np.asarray(m.out_proj.kernel[...])
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound  # U(±bound)
  c = np.asarray(m.conv1d.weight[...])
  assert np.abs(c).max() <= 0.05 and np.abs(c).max() > 0.045
  np.testing.assert_array_equal(m.conv1d.bias[...], 0)
  assert abs(float(np.std(np.asarray(m.in_proj.kernel[...]))) - cfg.initializer_range) < 2e-3
  names = {"/".join(map(str, p)): v.get_metadata().get("out_sharding")
           for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}
  assert names["A_log"] == ("heads",) and names["conv1d/weight"] == ("conv", "heads")
  assert names["out_proj/kernel"] == ("heads", "embed") and names["norm/weight"] == ("norm",)


def test_bfloat16_close_to_float32():
  cfg = CASES["base"]
  f32 = make_model(cfg)
  b16 = make_model(presets.tiny("mamba2", **_BASE, dtype="bfloat16"))
  ids = random_ids((B, T), cfg.vocab_size, seed=2)
  a = np.asarray(nnx.jit(lambda m, x: m(x))(f32, ids), np.float64)
  b = np.asarray(nnx.jit(lambda m, x: m(x))(b16, ids), np.float64)
  assert np.sqrt(np.mean((a - b) ** 2) / np.mean(a ** 2)) < 3e-2


@pytest.mark.parametrize("kw, field", [
    (dict(head_dim=48), "head_dim"),  # does not divide expand · hidden_size
    (dict(head_dim=0), "head_dim"),
    (dict(expand=0), "expand"),
    (dict(n_groups=3), "n_groups"),
    (dict(state_size=0), "state_size"),
    (dict(conv_kernel=0), "conv_kernel"),
    (dict(A_init_range=(0, 16)), "A_init_range"),
    (dict(A_init_range=(16, 1)), "A_init_range"),
    (dict(dt_min=0.0), "dt_min"),
    (dict(dt_min=0.2), "dt_max"),
    (dict(dt_init_floor=0.0), "dt_init_floor"),
    (dict(dt_limit=(0.1, 0.01)), "dt_limit"),
    (dict(dt_limit=(-1.0, 1.0)), "dt_limit"),
    (dict(conv_init=-0.1), "conv_init"),
    (dict(rmsnorm=1), "rmsnorm"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(chunk_size=24), "chunk_size"),
    (dict(fuse_linear_cross_entropy=True), "fuse_cross_entropy"),
])
def test_bad_config_raises(kw, field):
  with pytest.raises(ValueError, match=field):
    presets.tiny("mamba2", **kw)


def test_mixer_errors():
  with pytest.raises(ValueError, match="num_heads"):
    Mamba2(64, head_dim=16, num_heads=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="hidden_act"):
    Mamba2(64, head_dim=16, hidden_act="relu", rngs=nnx.Rngs(0))
  m = Mamba2(64, head_dim=16, state_size=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="x must have shape"):
    m(jnp.ones((2, 5, 32)))
  with pytest.raises(ValueError, match="batch_size"):
    m.init_cache(0)
