"""Model presets: fla's published shapes and CPU-sized ones for tests and examples.

| preset             | D    | layers | heads | vocab | tied | params   |
|--------------------|------|--------|-------|-------|------|----------|
| gla_340m           | 1024 | 24     | 4     | 32000 | yes  | 341.7M   |
| gla_1p3b           | 2048 | 24     | 4     | 32000 | no   | 1.3655B  |
| transformer_340m   | 1024 | 24     | 16    | 32000 | yes  | 341.1M   |
| transformer_1p3b   | 2048 | 24     | 32    | 32000 | no   | 1.3643B  |
| gla_tiny           | 64   | 2      | 2     | 256   | yes  | 0.151M   |
| transformer_tiny   | 64   | 2      | 2     | 256   | yes  | 0.148M   |

Every function takes keyword overrides (`gla_340m(dtype="bfloat16", remat=True)`). The 340M and 1.3B
presets scan over layers (`scan_layers=True`: stacked params, one lax.scan per run of identical layers,
gla_jax/models/scan.py; pass scan_layers=False for the per-layer layout) with remat on, policy
"dots_and_op_out" (matmul and op outputs kept; a scanned step needs remat, gla_jax/layers/remat.py); the
tiny ones do neither.
`tiny(kind)` is the CPU-sized model of any mixer kind (gla_jax/layers/mixers/registry.py), `hybrid_tiny()`
a GLA model whose second layer is sliding-window attention.
"""

from __future__ import annotations

import importlib

from gla_jax.layers.mixers import registry
from gla_jax.models.configs import GLAConfig, ModelConfig, TransformerConfig

# the large presets' default: depth-independent compile and init (scan_layers), and the remat that a scanned
# step needs: without it the loop keeps every intermediate of every layer (GLA-340M at 16 x 2048: ~105 GiB,
# out of memory on an H200; gla_jax/layers/remat.py)
_LARGE = {"scan_layers": True, "remat": True, "remat_policy": "dots_and_op_out"}


def tiny(kind: str, **overrides) -> ModelConfig:
  """The CPU-sized model of mixer kind `kind` (≈ 0.15M params, vocab 256, 2 layers); overrides win."""
  k = registry.kind(kind)
  return registry.config_class(kind).tiny(**{**dict(k.tiny), **overrides})


def preset_340m(kind: str, **overrides) -> ModelConfig:
  """The 340M-class model of mixer kind `kind` (fla's published shape where fla has one; see each config
  module's `preset_340m`); gla / attention / swa: gla_340m, transformer_340m (swa: window 2048).
  scan_layers is on unless overridden."""
  overrides = {**_LARGE, **overrides}
  if kind == "gla":
    return gla_340m(**overrides)
  if kind in ("attention", "swa"):
    return transformer_340m(**({"window_size": 2048} if kind == "swa" else {}), **overrides)
  module = importlib.import_module(registry.kind(kind).config.split(":")[0])
  return module.preset_340m(**overrides)


def hybrid_tiny(**overrides) -> GLAConfig:
  """CPU-sized GLA/SWA hybrid: gla_tiny whose layer 1 is sliding-window attention (window 32, 2 heads)."""
  attn = {"layers": [1], "num_heads": 2, "window_size": 32}
  return GLAConfig.tiny(**{"attn": attn, **overrides})


def gla_340m(**overrides) -> GLAConfig:
  """fla-hub/gla-340M: hidden 1024, 24 layers, 4 heads, vocab 32000, tied embeddings (341.7M params)."""
  return GLAConfig(**{**dict(hidden_size=1024, num_hidden_layers=24, num_heads=4, vocab_size=32000,
                             tie_word_embeddings=True), **_LARGE, **overrides})


def gla_1p3b(**overrides) -> GLAConfig:
  """fla-hub/gla-1.3B: hidden 2048, 24 layers, 4 heads, vocab 32000, untied (1.3655B params)."""
  return GLAConfig(**{**dict(hidden_size=2048, num_hidden_layers=24, num_heads=4, vocab_size=32000,
                             tie_word_embeddings=False), **_LARGE, **overrides})


def transformer_340m(**overrides) -> TransformerConfig:
  """Transformer++ at the 340M GLA shape: hidden 1024, 24 layers, 16 heads of 64, tied."""
  return TransformerConfig(**{**dict(hidden_size=1024, num_hidden_layers=24, num_heads=16,
                                     vocab_size=32000, tie_word_embeddings=True), **_LARGE, **overrides})


def transformer_1p3b(**overrides) -> TransformerConfig:
  """Transformer++ at the 1.3B GLA shape: hidden 2048, 24 layers, 32 heads of 64, untied."""
  return TransformerConfig(**{**dict(hidden_size=2048, num_hidden_layers=24, num_heads=32,
                                     vocab_size=32000, tie_word_embeddings=False), **_LARGE, **overrides})


def gla_tiny(**overrides) -> GLAConfig:
  """CPU-sized GLA: hidden 64, 2 layers, 2 heads (head dims 16/32), vocab 256 (bytes), tied."""
  return GLAConfig.tiny(**overrides)


def transformer_tiny(**overrides) -> TransformerConfig:
  """CPU-sized Transformer++: hidden 64, 2 layers, 2 heads of 32, vocab 256 (bytes), tied."""
  return TransformerConfig.tiny(**overrides)
