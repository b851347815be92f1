"""HGRN2 layer, equal in math to fla 0.6.0's `HGRN2Attention` (layers/hgrn2.py; docs/models.md).

    q, f, i = conv?(x W_q), conv?(x W_f), conv?(x W_i)     (short conv WITHOUT activation, fla's)
    q       = swish(q)
    g       = logsigmoid(f)                                 log forget gate, float32
    g       = log(β + (1 − β) · exp(g))                     layer i ≥ 1 with a lower bound β [D]
    k       = 1 − exp(g)                                    input gate tied to the forget gate
    o       = chunk_gla(q, k, i, g)                         heads: K = expand_ratio, V = D / H,
                                                            scale = K ** -0.5 (fla's default)
    y       = RMSNorm_D(o) · w  W_o                         ONE RMSNorm over all heads (eps 1e-5:
                                                            fla's rms_norm_linear ignores norm_eps)

Lower bounds: fla's `HGRN2Model` holds one parameter `lower_bounds` [L, D] (zeros, `model.lower_bounds`)
and gives layer i the row i of `layer_lower_bounds(lower_bounds)` = cumsum(softmax(·, axis 0)) − its
first row (so layer 0's bound is 0, and fla skips it there). It is a model-level parameter, shared by
every layer through the softmax, so this layer takes its bound as the `lower_bound` argument of
`__call__`; the trunk owns the parameter (`init_lower_bounds`) and passes each layer its row. A layer
built with `use_lower_bound=True` and layer_idx ≥ 1 raises ValueError when called without one.
Decoding carries the float32 GLA state [B, H, K, V] (fla keeps it transposed, state_v_first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gla_jax.layers.conv import ShortConvolution
from gla_jax.layers.mixers.base import CallContext, LinearAttentionMixer, config_dtypes
from gla_jax.layers.norm import RMSNorm
from gla_jax.layers.sharding import make_param
from pallas_kernels.gla import chunk_gla, fused_recurrent_gla

_f32 = jnp.float32
OUTPUT_NORM_EPS = 1e-5  # fla's rms_norm_linear default: the layer's norm_eps is not passed to it


def init_lower_bounds(num_layers: int, hidden_size: int, *, param_dtype=jnp.float32,
                      rngs: nnx.Rngs) -> nnx.Param:
  """fla's `HGRN2Model.lower_bounds`: zeros [num_layers, hidden_size] (sharding names (None, "embed"))."""
  return make_param(nnx.initializers.zeros_init(), (None, "embed"), rngs.params(), (num_layers, hidden_size),
                    param_dtype)


def layer_lower_bounds(lower_bounds: jax.Array) -> jax.Array:
  """[L, D] parameter → [L, D] float32 bounds: cumsum(softmax(·, 0), 0) − softmax(·, 0)[0] (fla's)."""
  p = jax.nn.softmax(lower_bounds.astype(_f32), axis=0)  # [L, D]
  L = p.shape[0]
  # row i = p_1 + … + p_i, as a 0/1 matrix product (exact: no cumsum − p_0 cancellation; and a
  # jnp.cumsum gradient was seen to come out wrong under jit on CPU in the reference)
  tri = np.tril(np.ones((L, L), np.float32))
  tri[:, 0] = 0.0
  return jnp.einsum("ij,jd->id", tri, p, precision=jax.lax.Precision.HIGHEST)


class HGRN2Attention(LinearAttentionMixer):
  """HGRN2 token mixer: x [B, T, D] → y [B, T, D]. Arguments and defaults are fla's layer's.

  Params (kernels [in, out], sharding names in brackets): q_proj, f_proj [D, H·K] (embed, heads);
  i_proj [D, D] (embed, heads); g_norm weight [D] (embed); o_proj [D, D] (heads, embed); short convs
  [W, C] (conv, heads). K = expand_ratio (num_heads = D // expand_ratio when expand_ratio is given).

  Example:
    >>> layer = HGRN2Attention(64, expand_ratio=32, rngs=nnx.Rngs(0))
    >>> y, _ = layer(jnp.ones((1, 16, 64)))
  """

  kind = "hgrn2"
  streams = ("q", "f", "i")
  conv_streams = ("q", "f", "i")
  op = staticmethod(chunk_gla)
  recurrent_op = staticmethod(fused_recurrent_gla)

  def __init__(self, hidden_size: int = 1024, *, num_heads: int | None = None, expand_ratio: int | None = 128,
               use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False,
               elementwise_affine: bool = True, norm_eps: float = 1e-5, layer_idx: int = 0,
               use_lower_bound: bool = False, init_std: float = 0.02, impl: str = "auto", chunk_size: int = 64,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    del norm_eps  # fla passes it to g_norm, whose eps the fused norm-linear then ignores (see module doc)
    if expand_ratio is not None:
      if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, (int, np.integer)) or expand_ratio < 1:
        raise ValueError(f"expand_ratio must be a positive int or None, got {expand_ratio!r}")
      num_heads = hidden_size // expand_ratio  # fla: expand_ratio wins
    elif num_heads is not None:
      expand_ratio = hidden_size // num_heads
    else:
      raise ValueError("one of expand_ratio or num_heads must be given (both are None)")
    self._set_common(hidden_size, num_heads=num_heads, num_kv_heads=None, impl=impl, chunk_size=chunk_size,
                     dtype=dtype, param_dtype=param_dtype, init_std=init_std, rngs=rngs)
    if hidden_size % num_heads:
      raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if isinstance(layer_idx, bool) or not isinstance(layer_idx, (int, np.integer)) or layer_idx < 0:
      raise ValueError(f"layer_idx must be an int >= 0, got {layer_idx!r}")
    self.expand_ratio, self.layer_idx = int(expand_ratio), int(layer_idx)
    self.forget_dim = num_heads * self.expand_ratio
    self.head_f_dim, self.head_i_dim = self.expand_ratio, hidden_size // num_heads
    self.state_k_dim, self.state_v_dim = self.head_f_dim, self.head_i_dim
    # fla applies the bound from layer 1 on (layer 0's is 0 anyway)
    self.use_lower_bound = bool(use_lower_bound) and self.layer_idx > 0
    if self.use_lower_bound and self.forget_dim != hidden_size:
      raise ValueError(f"use_lower_bound needs num_heads · expand_ratio ({self.forget_dim}) == hidden_size "
                       f"({hidden_size})")

    self.q_proj = self._dense(hidden_size, self.forget_dim, ("embed", "heads"), rngs=rngs)
    self.f_proj = self._dense(hidden_size, self.forget_dim, ("embed", "heads"), rngs=rngs)
    self.i_proj = self._dense(hidden_size, hidden_size, ("embed", "heads"), rngs=rngs)
    if use_short_conv:  # the base's convs end in SiLU; fla's HGRN2 convs have no activation
      self.use_short_conv, self.conv_size = True, conv_size
      for name, c in (("q", self.forget_dim), ("f", self.forget_dim), ("i", hidden_size)):
        setattr(self, f"{name}_conv1d", ShortConvolution(c, conv_size, bias=conv_bias, activation=None,
                                                         channel_name="heads", init_std=init_std, dtype=dtype,
                                                         param_dtype=param_dtype, rngs=rngs))
    self.g_norm = RMSNorm(hidden_size, eps=OUTPUT_NORM_EPS, elementwise_affine=elementwise_affine,
                          param_dtype=param_dtype, rngs=rngs)
    self.o_proj = self._dense(hidden_size, hidden_size, ("heads", "embed"), rngs=rngs)

  @classmethod
  def from_config(cls, config, layer_idx: int, *, rngs: nnx.Rngs) -> "HGRN2Attention":
    """Layer `layer_idx` of an `HGRN2Config` (fla's HGRN2Block passes no conv_bias: False)."""
    c = config
    return cls(c.hidden_size, num_heads=c.num_heads, expand_ratio=c.expand_ratio, use_short_conv=c.use_short_conv,
               conv_size=c.conv_size, elementwise_affine=c.elementwise_affine, norm_eps=c.norm_eps,
               layer_idx=layer_idx, use_lower_bound=c.use_lower_bound, init_std=c.initializer_range,
               impl=c.attn_impl, chunk_size=c.chunk_size, **config_dtypes(c), rngs=rngs)

  def qkv(self, x: jax.Array, streams: dict[str, jax.Array], ctx: CallContext):
    """q = swish(q); g = logsigmoid(f) (floored by ctx.inputs["lower_bound"]); k = 1 − exp(g); v = i."""
    del x
    lower_bound = ctx.inputs.get("lower_bound")
    q = jax.nn.silu(streams["q"].astype(_f32)).astype(streams["q"].dtype)
    g = jax.nn.log_sigmoid(streams["f"].astype(_f32))  # [B, T, H·K] float32
    if self.use_lower_bound:
      lb = lower_bound.astype(_f32)  # [D]
      g = jnp.logaddexp(jnp.log(lb), jnp.log1p(-lb) + g)
    k = (1.0 - jnp.exp(g)).astype(streams["i"].dtype)
    q, k, g = (self.heads(a, self.head_f_dim) for a in (q, k, g))  # [B, T, H, K]
    v = self.heads(streams["i"], self.head_i_dim)  # [B, T, H, V]
    return q, k, v, {"g": g}

  def output(self, o: jax.Array, x: jax.Array) -> jax.Array:
    """o [B, T, H, V] → RMSNorm over all H·V = D channels (fla's rms_norm_linear), then o_proj."""
    del x
    B, T = o.shape[:2]
    return self.o_proj(self.g_norm(o.reshape(B, T, -1)))

  def check_inputs(self, inputs: dict) -> None:
    """`lower_bound` [D]: this layer's forget-gate floor β (a row of `layer_lower_bounds`, from the
    trunk); required when the layer uses it (use_lower_bound and layer_idx ≥ 1), ignored otherwise (the
    trunk gives layer 0 its row too, as fla does)."""
    extra = set(inputs) - {"lower_bound"}
    if extra:
      raise ValueError(f"HGRN2Attention takes only lower_bound besides x, got {sorted(extra)}")
    lower_bound = inputs.get("lower_bound")
    if self.use_lower_bound:
      if lower_bound is None:
        raise ValueError(f"HGRN2 layer {self.layer_idx} was built with use_lower_bound=True and needs its "
                         "lower_bound [hidden_size] (fla's model-level lower_bounds; see this module's doc)")
      if lower_bound.shape != (self.hidden_size,):
        raise ValueError(f"lower_bound must have shape ({self.hidden_size},), got {lower_bound.shape}")
