"""GPU parity with fla for every model type we import (marker gpu): a random fla model in torch, saved with
`save_pretrained`, imported with `load_fla_checkpoint`, logits compared in float32 (< 1e-4 relative).

Model types: gla, transformer, retnet, linear_attn, hgrn2, mamba2, and a GLA/SWA hybrid (fla's `attn`
spec). fla's init is scaled up (initializer_range 0.08) and norms/biases perturbed so every sub-layer
moves the logits; `history_sensitivity` records how much the logits of late tokens depend on the first
token (a mixer that ignored its state would show ~0). TRITON_F32_DEFAULT=ieee keeps fla's float32 Triton
dots exact; ours runs the xla forms under `jax.default_matmul_precision("highest")`. fla's autotune is
narrowed to each kernel's first config (tests/peers.py) unless GLA_PARITY_FULL_AUTOTUNE=1. Results go to
$OUT/parity_mixers.json when $OUT is set.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from gla_jax.convert import load_fla_checkpoint  # noqa: E402
from tests.peers import narrow_fla_autotune  # noqa: E402

pytestmark = pytest.mark.gpu

_BASE = dict(hidden_size=256, num_hidden_layers=2, vocab_size=1000, tie_word_embeddings=False)
# name → (fla config class, fla model class, config kwargs)
FLA_MODELS = {
    "gla": ("GLAConfig", "GLAForCausalLM", dict(num_heads=4, use_short_conv=True)),
    "transformer": ("TransformerConfig", "TransformerForCausalLM", dict(num_heads=4)),
    "retnet": ("RetNetConfig", "RetNetForCausalLM", dict(num_heads=4)),
    "linear_attn": ("LinearAttentionConfig", "LinearAttentionForCausalLM",
                    dict(num_heads=4, feature_map="hedgehog", tie_feature_map_qk=False)),
    "hgrn2": ("HGRN2Config", "HGRN2ForCausalLM", dict(expand_ratio=64, use_lower_bound=True)),  # 4 heads
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM",
               dict(head_dim=64, state_size=32, n_groups=1, expand=2)),  # 8 heads
    "gla_swa_hybrid": ("GLAConfig", "GLAForCausalLM",
                       dict(num_heads=4, attn={"layers": [1], "num_heads": 4, "window_size": 64})),
}
RESULTS: dict[str, dict] = {}
_T0 = time.time()


def _log(msg):
  print(f"[{time.time() - _T0:6.1f}s] {msg}", flush=True)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _record(key, **values):
  RESULTS.setdefault(key, {}).update(values)
  print(f"PARITY {key}: {values}", flush=True)
  out = os.environ.get("OUT")
  if out:
    with open(os.path.join(out, "parity_mixers.json"), "w") as f:
      json.dump(RESULTS, f, indent=2)


def _sdpa_flash_attn_func(torch):
  """flash_attn_func's contract (q, k, v [B, T, H(kv), d], causal, window_size=(left, 0)) in plain torch
  float32, for fla's `Attention` layer when the flash-attn package is absent (it is on the GPU image):
  fla's projections, RoPE and names run unchanged; only the attention kernel is this one."""
  def flash_attn_func(q, k, v, causal=True, window_size=(-1, -1), **_):
    B, T, H, d = q.shape
    g = H // k.shape[2]
    k, v = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
    s = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) / d ** 0.5
    t = torch.arange(T, device=q.device)
    allowed = t[None, :] <= t[:, None]
    if window_size[0] >= 0:
      allowed = allowed & (t[None, :] >= t[:, None] - window_size[0])
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", torch.softmax(s, -1), v.float()).to(q.dtype)
  return flash_attn_func


def _build_fla(name, path):
  torch = pytest.importorskip("torch")
  pytest.importorskip("triton")
  narrow_fla_autotune()
  fla_models = pytest.importorskip("fla.models")
  import fla.layers.attn as fla_attn  # pylint: disable=g-import-not-at-top
  if fla_attn.flash_attn_func is None:
    fla_attn.flash_attn_func = _sdpa_flash_attn_func(torch)
  config_cls, model_cls, kwargs = FLA_MODELS[name]
  torch.manual_seed(0)
  config = getattr(fla_models, config_cls)(initializer_range=0.08, **{**_BASE, **kwargs})
  model = getattr(fla_models, model_cls)(config).cuda().float().eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if "norm" in pname or "bias" in pname or "lower_bounds" in pname:
        p.add_(0.2 * torch.randn_like(p))
  model.save_pretrained(path)
  return torch, model


# measured on one H200, 2026-12-01: retnet 1.41e-4 (within the first 50 tokens; 9e-6 after), while fla's
# own chunk and fused_recurrent kernels differ by 2.0e-5 on the same weights — an open discrepancy
_OPEN = {"retnet": "1.41e-4 > 1e-4 at the first 50 tokens (H200, 2026-12-01); cause not yet found"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=_OPEN[n], strict=False))
                                  if n in _OPEN else n for n in FLA_MODELS])
def test_logits_match_fla_float32(tmp_path, name):
  path = str(tmp_path / name)
  _log(f"{name}: building fla model")
  torch, fla_model = _build_fla(name, path)
  ours = load_fla_checkpoint(path, attn_impl="xla")  # the jnp forms: the algorithm of record
  T = 200
  ids = torch.randint(0, _BASE["vocab_size"], (2, T), generator=torch.Generator().manual_seed(T))
  with torch.no_grad():
    ref = fla_model(input_ids=ids.cuda(), use_cache=False).logits.float().cpu().numpy()
  jids = jnp.asarray(ids.numpy(), jnp.int32)
  fwd = nnx.jit(lambda m, x: m(x))
  with jax.default_matmul_precision("highest"):
    got = np.asarray(fwd(ours, jids))
    other = np.asarray(fwd(ours, jids.at[:, 0].set((jids[:, 0] + 1) % _BASE["vocab_size"])))
  err = np.abs(got - ref).max(axis=(0, 2)) / np.abs(ref).max()  # [T]: where along the sequence
  extra = {}
  if hasattr(fla_model.config, "attn_mode"):  # fla's other kernel family on the same weights
    for layer in fla_model.model.layers:
      if hasattr(layer.attn, "mode"):
        layer.attn.mode = "fused_recurrent"
    with torch.no_grad():
      rec = fla_model(input_ids=ids.cuda(), use_cache=False).logits.float().cpu().numpy()
    extra = dict(fla_chunk_vs_fla_recurrent=_rel(ref, rec), ours_vs_fla_recurrent=_rel(got, rec))
  _record(name, f32_rel=_rel(got, ref), kinds=list(ours.config.layer_kinds()),
          history_sensitivity=_rel(other[:, T // 2:], got[:, T // 2:]),
          rel_by_quarter=[float(err[i * T // 4:(i + 1) * T // 4].max()) for i in range(4)], **extra)
  assert _rel(got, ref) < 1e-4
