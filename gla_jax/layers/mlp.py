"""SwiGLU MLP (fla `GatedMLP`): down(silu(gate(x)) · up(x))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gla_jax.layers.linear import dense


def mlp_intermediate_size(hidden_size: int, hidden_ratio: int | float | None = 4,
                          intermediate_size: int | None = None) -> int:
  """fla's rule: a multiple of 256 at or above int(hidden · ratio · 2/3) (2816 for 1024, 5632 for 2048)."""
  if intermediate_size is not None:
    return int(intermediate_size)
  ratio = 4 if hidden_ratio is None else hidden_ratio
  size = int(hidden_size * ratio * 2 / 3)
  return 256 * ((size + 255) // 256)


class GatedMLP(nnx.Module):
  """SwiGLU MLP: x [B, T, D] → [B, T, D]; F = `mlp_intermediate_size(D, hidden_ratio, intermediate_size)`.

  gate_proj, up_proj: [D, F] ("embed", "mlp"); down_proj: [F, D] ("mlp", "embed"); no biases.
  silu(gate)·up is formed in float32 and rounded to the compute dtype (fla's fused swiglu).
  """

  def __init__(self, hidden_size: int, *, hidden_ratio: int | float | None = 4,
               intermediate_size: int | None = None, hidden_act: str = "swish",
               init_std: float = 0.02, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if hidden_act not in ("swish", "silu"):
      raise ValueError(f"hidden_act must be 'swish' (SwiGLU), got {hidden_act!r}")
    self.hidden_size = hidden_size
    self.intermediate_size = F = mlp_intermediate_size(hidden_size, hidden_ratio, intermediate_size)
    kw = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = dense(hidden_size, F, ("embed", "mlp"), **kw)
    self.up_proj = dense(hidden_size, F, ("embed", "mlp"), **kw)
    self.down_proj = dense(F, hidden_size, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate, up = self.gate_proj(x), self.up_proj(x)  # [B, T, F]
    h = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(gate.dtype)
    return self.down_proj(h)
