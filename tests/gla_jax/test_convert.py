"""fla checkpoint import/export on CPU: a tiny checkpoint written here in fla's naming (legacy fused
gate_proj, attn_mode fused_chunk, tied head absent), round trips, and clear errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from gla_jax.convert import config_from_fla, config_to_fla, load_fla_checkpoint, save_fla_checkpoint
from gla_jax.models import CausalLM, GLAConfig, GLAForCausalLM, TransformerForCausalLM, presets
from tests.gla_jax import fla_reference
from tests.gla_jax.helpers import make_model, random_ids, rel_err


def _fla_gla_checkpoint(path, *, tied: bool, fused_gate: bool, seed=0):
  """Write a random fla-style GLA checkpoint (torch layouts, fla names) and return its tensors."""
  D, L, H, vocab, F = 64, 2, 2, 128, 256
  K, V = D // 2, D
  rng = np.random.default_rng(seed)
  n = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
  sd = {"model.embeddings.weight": n(vocab, D), "model.norm.weight": 1 + n(D)}
  for i in range(L):
    p = f"model.layers.{i}."
    sd.update({
        p + "attn_norm.weight": 1 + n(D), p + "mlp_norm.weight": 1 + n(D),
        p + "attn.q_proj.weight": n(K, D), p + "attn.k_proj.weight": n(K, D),
        p + "attn.v_proj.weight": n(V, D), p + "attn.g_proj.weight": n(V, D),
        p + "attn.gk_proj.0.weight": n(16, D), p + "attn.gk_proj.1.weight": n(K, 16),
        p + "attn.gk_proj.1.bias": n(K), p + "attn.o_proj.weight": n(D, V),
        p + "attn.g_norm_swish_gate.weight": 1 + n(V // H),
        p + "mlp.up_proj.weight": n(F, D), p + "mlp.gate_proj.weight": n(F, D),
        p + "mlp.down_proj.weight": n(D, F),
    })
  if not tied:
    sd["lm_head.weight"] = n(vocab, D)
  on_disk = dict(sd)
  if fused_gate:
    for i in range(L):
      p = f"model.layers.{i}.mlp."
      on_disk[p + "gate_proj.weight"] = np.concatenate([sd[p + "gate_proj.weight"], sd[p + "up_proj.weight"]])
      del on_disk[p + "up_proj.weight"]
  config = {"model_type": "gla", "architectures": ["GLAForCausalLM"], "hidden_size": D,
            "num_hidden_layers": L, "num_heads": H, "vocab_size": vocab, "expand_k": 0.5, "expand_v": 1,
            "attn_mode": "fused_chunk", "tie_word_embeddings": tied, "norm_eps": 1e-6,
            "transformers_version": "4.40.0", "torch_dtype": "float32", "fuse_cross_entropy": True,
            "hidden_act": "swish", "use_gk": True, "use_gv": False}
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  save_file(on_disk, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  return sd


@pytest.mark.parametrize("tied, fused_gate", [(True, True), (False, False)], ids=["tied_fused", "untied"])
def test_load_fla_named_checkpoint(tmp_path, tied, fused_gate):
  sd = _fla_gla_checkpoint(str(tmp_path), tied=tied, fused_gate=fused_gate)
  model = load_fla_checkpoint(str(tmp_path))
  assert isinstance(model, CausalLM) and model.config.layer_kinds() == ("gla",) * model.config.num_hidden_layers
  assert model.config.attn_mode == "chunk" and model.config.tie_word_embeddings == tied
  ids = random_ids((2, 21), 128, seed=3)
  ours = nnx.jit(lambda m, x: m(x))(model, ids)
  ref = jax.jit(lambda sd, x: fla_reference.forward(sd, model.config, x))(sd, ids)
  assert rel_err(ours, ref) < 2e-5
  # the split of the fused gate is gate = first half (swapping halves would change the logits)
  q = model.layers[1].mlp.gate_proj.kernel[...]
  np.testing.assert_array_equal(q, sd["model.layers.1.mlp.gate_proj.weight"].T)


def test_load_bfloat16(tmp_path):
  _fla_gla_checkpoint(str(tmp_path), tied=True, fused_gate=False)
  model = load_fla_checkpoint(str(tmp_path), dtype="bfloat16", param_dtype="bfloat16")
  assert model.embeddings.embedding[...].dtype == jnp.bfloat16
  assert model.config.dtype == "bfloat16"


@pytest.mark.parametrize("cfg", [
    presets.gla_tiny(use_short_conv=True, num_heads=4, num_kv_heads=2, tie_word_embeddings=False),
    presets.gla_tiny(use_output_gate=False),
    presets.transformer_tiny(qk_norm=True, qkv_bias=True),
], ids=["gla_conv_gqa", "gla_no_gate", "transformer"])
def test_export_import_round_trip(tmp_path, cfg):
  from gla_jax.models import build_model
  model = build_model(cfg, rngs=nnx.Rngs(0))
  save_fla_checkpoint(model, str(tmp_path))
  tensors = load_file(os.path.join(str(tmp_path), "model.safetensors"))
  if cfg.tie_word_embeddings:
    assert "lm_head.weight" not in tensors
  if getattr(cfg, "use_short_conv", False):
    assert tensors["model.layers.0.attn.q_conv1d.weight"].shape == (32, 1, 4)
  if getattr(cfg, "use_output_gate", None) is False:
    assert "model.layers.0.attn.g_norm.weight" in tensors
  back = load_fla_checkpoint(str(tmp_path))
  assert type(back) is type(model) and back.config == model.config
  a = jax.tree.leaves(nnx.state(model, nnx.Param))
  b = jax.tree.leaves(nnx.state(back, nnx.Param))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_errors(tmp_path):
  path = str(tmp_path)
  _fla_gla_checkpoint(path, tied=False, fused_gate=False)
  tensors = load_file(os.path.join(path, "model.safetensors"))
  del tensors["model.layers.1.attn.o_proj.weight"]
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with pytest.raises(ValueError, match="lacks 1 tensors"):
    load_fla_checkpoint(path)
  with pytest.raises(ValueError, match="model_type"):
    config_from_fla({"model_type": "mamba"})
  with pytest.raises(ValueError, match="num_heads"):  # a hybrid spec needs its heads
    config_from_fla({"model_type": "gla", "attn": {"layers": [1]}})
  with pytest.raises(ValueError, match="out of range"):
    config_from_fla({"model_type": "gla", "num_hidden_layers": 2, "attn": {"layers": [2], "num_heads": 2}})
  hybrid = config_from_fla(config_to_fla(presets.hybrid_tiny()))
  assert hybrid == presets.hybrid_tiny() and hybrid.layer_kinds() == ("gla", "swa")
  with pytest.raises(ValueError, match="gate_logit_normalizer"):
    config_to_fla(GLAConfig(gate_logit_normalizer=8))
  assert config_from_fla({"model_type": "gla", "attn_mode": "fused_recurrent"}).attn_mode == "chunk"
  assert isinstance(config_from_fla(config_to_fla(presets.transformer_tiny())), type(presets.transformer_tiny()))


def test_tied_feature_map_twin_tensors(tmp_path):
  """fla stores a tied feature map under feature_map_q and feature_map_k: the equal copy is dropped,
  a different one is an error (never silently ignored)."""
  cfg = presets.tiny("linear_attn", feature_map="hedgehog", tie_feature_map_qk=True)
  model = make_model(cfg)
  path = str(tmp_path / "tied")
  save_fla_checkpoint(model, path)
  f = os.path.join(path, "model.safetensors")
  tensors = load_file(f)
  twins = {n.replace(".feature_map_q.", ".feature_map_k."): v for n, v in tensors.items() if ".feature_map_q." in n}
  assert twins
  save_file({**tensors, **twins}, f)
  back = load_fla_checkpoint(path)
  ids = random_ids((2, 12), cfg.vocab_size)
  np.testing.assert_array_equal(np.asarray(back(ids)), np.asarray(model(ids)))
  save_file({**tensors, **{n: v + 1 for n, v in twins.items()}}, f)
  with pytest.raises(ValueError, match="does not use"):
    load_fla_checkpoint(path)


def test_transformers_float_encoding_in_config():
  """transformers' config.json writes inf as {"__float__": "Infinity"} (Mamba-2's dt_limit)."""
  cfg = config_from_fla({**config_to_fla(presets.tiny("mamba2")), "dt_limit": [0.0, {"__float__": "Infinity"}]})
  assert cfg.dt_limit[1] == float("inf")
