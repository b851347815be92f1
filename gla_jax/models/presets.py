"""Model presets: fla's published shapes and CPU-sized ones for tests and examples.

| preset             | D    | layers | heads | vocab | tied | params   |
|--------------------|------|--------|-------|-------|------|----------|
| gla_340m           | 1024 | 24     | 4     | 32000 | yes  | 341.7M   |
| gla_1p3b           | 2048 | 24     | 4     | 32000 | no   | 1.3655B  |
| transformer_340m   | 1024 | 24     | 16    | 32000 | yes  | 341.1M   |
| transformer_1p3b   | 2048 | 24     | 32    | 32000 | no   | 1.3643B  |
| gla_tiny           | 64   | 2      | 2     | 256   | yes  | 0.151M   |
| transformer_tiny   | 64   | 2      | 2     | 256   | yes  | 0.148M   |

Every function takes keyword overrides (`gla_340m(dtype="bfloat16", remat=True)`).
"""

from __future__ import annotations

from gla_jax.models.configs import GLAConfig, TransformerConfig


def gla_340m(**overrides) -> GLAConfig:
  """fla-hub/gla-340M: hidden 1024, 24 layers, 4 heads, vocab 32000, tied embeddings (341.7M params)."""
  return GLAConfig(**{**dict(hidden_size=1024, num_hidden_layers=24, num_heads=4, vocab_size=32000,
                             tie_word_embeddings=True), **overrides})


def gla_1p3b(**overrides) -> GLAConfig:
  """fla-hub/gla-1.3B: hidden 2048, 24 layers, 4 heads, vocab 32000, untied (1.3655B params)."""
  return GLAConfig(**{**dict(hidden_size=2048, num_hidden_layers=24, num_heads=4, vocab_size=32000,
                             tie_word_embeddings=False), **overrides})


def transformer_340m(**overrides) -> TransformerConfig:
  """Transformer++ at the 340M GLA shape: hidden 1024, 24 layers, 16 heads of 64, tied."""
  return TransformerConfig(**{**dict(hidden_size=1024, num_hidden_layers=24, num_heads=16,
                                     vocab_size=32000, tie_word_embeddings=True), **overrides})


def transformer_1p3b(**overrides) -> TransformerConfig:
  """Transformer++ at the 1.3B GLA shape: hidden 2048, 24 layers, 32 heads of 64, untied."""
  return TransformerConfig(**{**dict(hidden_size=2048, num_hidden_layers=24, num_heads=32,
                                     vocab_size=32000, tie_word_embeddings=False), **overrides})


def gla_tiny(**overrides) -> GLAConfig:
  """CPU-sized GLA: hidden 64, 2 layers, 2 heads (head dims 16/32), vocab 256 (bytes), tied."""
  return GLAConfig(**{**dict(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=256,
                             tie_word_embeddings=True), **overrides})


def transformer_tiny(**overrides) -> TransformerConfig:
  """CPU-sized Transformer++: hidden 64, 2 layers, 2 heads of 32, vocab 256 (bytes), tied."""
  return TransformerConfig(**{**dict(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=256,
                                     tie_word_embeddings=True), **overrides})
