"""gla_jax: Flax NNX layers and models for Gated Linear Attention Transformers.

    from gla_jax.models import GLAConfig, GLAForCausalLM, build_model
    from gla_jax.models import presets
    model = build_model(presets.gla_tiny(), rngs=nnx.Rngs(0))
    logits = model(input_ids)                        # [B, T, vocab] float32

Layers (`gla_jax.layers`) mirror fla 0.6.0's modules number for number (docs/models.md); models
(`gla_jax.models`) are the GLA LM and the Transformer++ baseline; `gla_jax.generate` samples under
`jax.jit`; `gla_jax.convert` reads and writes fla checkpoints.
"""
