"""Mamba-2 layer, equal in math to fla 0.6.0's `Mamba2` (fla layers/mamba2.py; docs/models.md).

    z, xBC, dt = split(x W_in, [I, I + 2·G·N, H])          (fla's d_mlp part is always empty)
    xBC        = silu(causal_conv1d(xBC) + b)                 depthwise over x, B and C together
    x, B, C    = split(xBC, [I, G·N, G·N])                    x [.., H, P]; B, C [.., G, N]
    Δ          = clamp(softplus(dt + dt_bias), *dt_limit)      [B, T, H], float32
    A          = −exp(A_log)                                   [H]
    y          = SSD(x, Δ, A, B, C) + D · x
    o          = RMSNorm_groups(y · silu(z)) · w               (norm_before_gate=False, fla's default)
    out        = o W_out

The SSD is one call of `chunk_simple_gla` (docs/ops.md, gate kind "scalar"):

    S_t = exp(Δ_t A) S_{t−1} + B_tᵀ (Δ_t x_t),  y_t = C_t S_t   ⇔   q = C, k = B, v = Δ·x, g = Δ·A, scale 1

with B and C of group j serving heads j·H/G … (j+1)·H/G − 1 (the CUDA kernels' and fla's decode order),
the state S [B, H, N, P] float32 in the op's layout (fla's `recurrent_state` is its transpose [B, H, P, N]).
With `segment_ids` the state and the conv restart at each document. Decoding carries
`RecurrentCache(state=S, conv=(xBC tail [B, W−1, C],))`; one token takes `fused_recurrent_simple_gla`.

Mamba-2's streams come from one in_proj and its conv covers their concatenation, so it subclasses `Mixer`
directly rather than `LinearAttentionMixer` (whose streams each have a projection and a conv).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from gla_jax.layers.conv import ShortConvolution
from gla_jax.layers.linear import dense
from gla_jax.layers.mixers.base import Mixer, RecurrentCache, config_dtypes
from gla_jax.layers.per_shard import per_shard
from gla_jax.layers.remat import OP_OUT
from gla_jax.layers.sharding import make_param, with_axes
from pallas_kernels.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

_f32 = jnp.float32


class GroupedGatedRMSNorm(nnx.Module):
  """fla's `RMSNormGated` (group_size = dim / groups): x, z [..., dim] → [..., dim] in x's dtype.

      norm_before_gate False:  RMSNorm_g(x · silu(z)) · w        True:  RMSNorm_g(x) · w · silu(z)

  RMSNorm_g normalises each of the `groups` contiguous slices of the last axis on its own (float32).
  Weight [dim] ("norm"), ones.
  """

  def __init__(self, dim: int, *, groups: int = 1, eps: float = 1e-5, norm_before_gate: bool = False,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if dim % groups:
      raise ValueError(f"groups ({groups}) must divide dim ({dim})")
    self.dim, self.groups, self.eps, self.norm_before_gate = dim, groups, eps, norm_before_gate
    self.weight = make_param(nnx.initializers.ones, ("norm",), rngs.params(), (dim,), param_dtype)

  def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
    x32, z32 = x.astype(_f32), z.astype(_f32)
    if not self.norm_before_gate:
      x32 = x32 * jax.nn.silu(z32)
    xg = x32.reshape(*x32.shape[:-1], self.groups, self.dim // self.groups)
    xg = xg * jax.lax.rsqrt(jnp.mean(jnp.square(xg), axis=-1, keepdims=True) + self.eps)
    y = xg.reshape(x32.shape) * self.weight[...].astype(_f32)
    if self.norm_before_gate:
      y = y * jax.nn.silu(z32)
    return y.astype(x.dtype)


def _dt_bias_init(num_heads: int, dt_min: float, dt_max: float, floor: float):
  """fla: Δ ~ exp(U(log dt_min, log dt_max)) floored, stored as its inverse softplus Δ + log(−expm1(−Δ))."""
  def init(key, shape, dtype=_f32):
    del shape
    u = jax.random.uniform(key, (num_heads,), _f32)
    dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), floor)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)
  return init


def _a_log_init(lo: float, hi: float):
  def init(key, shape, dtype=_f32):
    return jnp.log(jax.random.uniform(key, shape, _f32, lo, hi)).astype(dtype)
  return init


def _symmetric_uniform(bound: float):
  def init(key, shape, dtype=_f32):
    return jax.random.uniform(key, shape, _f32, -bound, bound).astype(dtype)
  return init


class Mamba2(Mixer):
  """Mamba-2 token mixer: x [B, T, D] → y [B, T, D]. Arguments and defaults are fla's layer's.

  I = expand·D, H = I / head_dim (P), N = state_size, G = n_groups, C = I + 2·G·N (conv channels).
  Params (kernels [in, out], sharding names in brackets): in_proj [D, 2I + 2GN + H] (+ bias if use_bias)
  (embed, heads); conv1d weight [W, C] (conv, heads) + bias [C]; dt_bias, A_log [H] (heads); D [H], or [I]
  when D_has_hdim (heads); norm weight [I] (norm); out_proj [I, D] (heads, embed). in_proj's and the
  conv's channels are a concatenation (z | x | B | C | dt): under a tensor-parallel mesh XLA reshards
  after the split (correct; the op itself runs per shard on whole heads).

  Init (fla's model init): in_proj, conv1d N(0, init_std) (conv U(±conv_init) if given), biases 0;
  A = U(A_init_range), A_log = log A; dt_bias = softplus⁻¹(Δ), Δ log-uniform in [dt_min, dt_max] floored
  at dt_init_floor; D = 1; norm 1; out_proj U(±1/√I)/√out_proj_rescale_layers (fla's kaiming-uniform
  rescale, rescale_prenorm_residual) or N(0, init_std) when that is None.

  Example:
    >>> mixer = Mamba2(64, head_dim=16, state_size=32, rngs=nnx.Rngs(0))
    >>> y, _ = mixer(jnp.ones((2, 40, 64)))                          # y [2, 40, 64]
    >>> cache = mixer.init_cache(2)
    >>> y_t, cache = mixer.decode_step(jnp.ones((2, 64)), cache)    # one token
  """

  kind = "mamba2"
  op = staticmethod(chunk_simple_gla)
  recurrent_op = staticmethod(fused_recurrent_simple_gla)

  def __init__(self, hidden_size: int = 2048, *, num_heads: int | None = None, head_dim: int = 64,
               state_size: int = 128, expand: int = 2, n_groups: int = 1, conv_kernel: int = 4,
               conv_init: float | None = None, use_conv_bias: bool = True, hidden_act: str = "silu",
               A_init_range: tuple[float, float] = (1, 16), D_has_hdim: bool = False, rmsnorm: bool = True,
               norm_before_gate: bool = False, dt_min: float = 0.001, dt_max: float = 0.1,
               dt_init_floor: float = 1e-4, dt_limit: tuple[float, float] = (0.0, float("inf")),
               use_bias: bool = False, norm_eps: float = 1e-5, init_std: float = 0.02,
               out_proj_rescale_layers: int | None = None, impl: str = "auto", chunk_size: int = 64,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    for name, n in (("hidden_size", hidden_size), ("head_dim", head_dim), ("state_size", state_size),
                    ("expand", expand), ("n_groups", n_groups), ("conv_kernel", conv_kernel)):
      if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    inner = int(expand * hidden_size)
    if inner % head_dim:
      raise ValueError(f"head_dim ({head_dim}) must divide expand · hidden_size ({inner})")
    if num_heads is not None and num_heads not in (0, inner // head_dim):
      raise ValueError(f"num_heads · head_dim ({num_heads * head_dim}) must equal expand · hidden_size ({inner})")
    H = inner // head_dim
    if H % n_groups:
      raise ValueError(f"n_groups ({n_groups}) must divide num_heads ({H})")
    if hidden_act not in ("silu", "swish"):
      raise ValueError(f"hidden_act must be 'silu' or 'swish', got {hidden_act!r}")
    if len(dt_limit) != 2 or not 0.0 <= dt_limit[0] <= dt_limit[1]:
      raise ValueError(f"dt_limit must be a (min, max) pair with 0 <= min <= max, got {dt_limit!r}")
    self.hidden_size, self.inner_size, self.num_heads, self.head_dim = hidden_size, inner, H, head_dim
    self.state_size, self.n_groups, self.conv_kernel = state_size, n_groups, conv_kernel
    self.conv_dim = inner + 2 * n_groups * state_size
    self.D_has_hdim, self.rmsnorm = D_has_hdim, rmsnorm
    self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
    self.impl, self.chunk_size, self.dtype = impl, chunk_size, dtype

    proj = inner + self.conv_dim + H  # z | x B C | dt
    self.in_proj = dense(hidden_size, proj, ("embed", "heads"), use_bias=use_bias, init_std=init_std,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1d = ShortConvolution(self.conv_dim, conv_kernel, bias=use_conv_bias, activation="silu",
                                   channel_name="heads", init_std=init_std, dtype=dtype,
                                   param_dtype=param_dtype, rngs=rngs)
    if conv_init is not None:
      self.conv1d.weight = make_param(_symmetric_uniform(conv_init), ("conv", "heads"), rngs.params(),
                                      (conv_kernel, self.conv_dim), param_dtype)
    self.dt_bias = make_param(_dt_bias_init(H, dt_min, dt_max, dt_init_floor), ("heads",), rngs.params(),
                              (H,), param_dtype)
    self.A_log = make_param(_a_log_init(*A_init_range), ("heads",), rngs.params(), (H,), param_dtype)
    self.D = make_param(nnx.initializers.ones, ("heads",), rngs.params(), (inner if D_has_hdim else H,),
                        param_dtype)
    self.norm = (GroupedGatedRMSNorm(inner, groups=n_groups, eps=norm_eps, norm_before_gate=norm_before_gate,
                                     param_dtype=param_dtype, rngs=rngs) if rmsnorm else None)
    if out_proj_rescale_layers is None:
      self.out_proj = dense(inner, hidden_size, ("heads", "embed"), use_bias=use_bias, init_std=init_std,
                            dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    else:  # fla: kaiming_uniform_(a=√5) = U(±1/√fan_in), then / √num_hidden_layers
      bound = 1.0 / math.sqrt(inner) / math.sqrt(out_proj_rescale_layers)
      self.out_proj = nnx.Linear(inner, hidden_size, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                                 kernel_init=with_axes(_symmetric_uniform(bound), ("heads", "embed")),
                                 bias_init=with_axes(nnx.initializers.zeros_init(), ("embed",)), rngs=rngs)

  @classmethod
  def from_config(cls, config, layer_idx: int, *, rngs: nnx.Rngs) -> "Mamba2":
    """The Mamba-2 layer of a `Mamba2Config` (every layer alike)."""
    del layer_idx
    c = config
    return cls(c.hidden_size, head_dim=c.head_dim, state_size=c.state_size, expand=c.expand,
               n_groups=c.n_groups, conv_kernel=c.conv_kernel, conv_init=c.conv_init,
               use_conv_bias=c.use_conv_bias, hidden_act=c.hidden_act, A_init_range=c.A_init_range,
               D_has_hdim=c.D_has_hdim, rmsnorm=c.rmsnorm, norm_before_gate=c.norm_before_gate,
               dt_min=c.dt_min, dt_max=c.dt_max, dt_init_floor=c.dt_init_floor, dt_limit=c.dt_limit,
               use_bias=c.use_bias, norm_eps=c.norm_eps, init_std=c.initializer_range,
               out_proj_rescale_layers=c.num_hidden_layers if c.rescale_prenorm_residual else None,
               impl=c.attn_impl, chunk_size=c.chunk_size, **config_dtypes(c), rngs=rngs)

  def init_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> RecurrentCache:
    """Zero SSM state [B, H, N, P] float32 and conv tail [B, W−1, C] in the compute dtype; constant in max_len."""
    del max_len  # the recurrent state does not grow
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    state = jnp.zeros((batch_size, self.num_heads, self.state_size, self.head_dim), _f32)
    return RecurrentCache(state=state, conv=(self.conv1d.init_state(batch_size, dtype or self.dtype or _f32),))

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None, cache: RecurrentCache | None = None,
               offset: jax.Array | int | None = None, return_cache: bool = False):
    """x [B, T, D]; segment_ids [B, T] (packed documents: state and conv restart); cache: continue.

    Returns (y [B, T, D], the updated RecurrentCache if `cache` is given or `return_cache`, else None).
    """
    del offset  # no positions in Mamba-2
    if x.ndim != 3 or x.shape[-1] != self.hidden_size:
      raise ValueError(f"x must have shape [B, T, {self.hidden_size}], got {x.shape}")
    B, T, _ = x.shape
    I, H, P, G, N = self.inner_size, self.num_heads, self.head_dim, self.n_groups, self.state_size
    cdt = self.dtype or x.dtype
    want_cache = return_cache or cache is not None

    zxbcdt = self.in_proj(x)  # [B, T, I + C + H]
    z, xbc, dt = zxbcdt[..., :I], zxbcdt[..., I:I + self.conv_dim], zxbcdt[..., I + self.conv_dim:]
    xbc, conv_state = self.conv1d(xbc, segment_ids=segment_ids, state=None if cache is None else cache.conv[0])
    xs = xbc[..., :I].reshape(B, T, H, P)
    b = jnp.repeat(xbc[..., I:I + G * N].reshape(B, T, G, N), H // G, axis=2)  # [B, T, H, N]
    c = jnp.repeat(xbc[..., I + G * N:].reshape(B, T, G, N), H // G, axis=2)  # [B, T, H, N]

    dt = jax.nn.softplus(dt.astype(_f32) + self.dt_bias[...].astype(_f32))  # Δ [B, T, H]
    if self.dt_limit != (0.0, float("inf")):  # fla's CUDA path clamps only then (softplus > 0 anyway)
      dt = jnp.clip(dt, *self.dt_limit)
    g = dt * -jnp.exp(self.A_log[...].astype(_f32))  # Δ·A [B, T, H], ≤ 0
    v = (xs.astype(_f32) * dt[..., None]).astype(cdt)  # Δ·x [B, T, H, P]
    q, k = c.astype(cdt), b.astype(cdt)

    h0 = None if cache is None else cache.state
    if T == 1 and cache is not None:  # one decode step: the token-by-token recurrence
      o, state = per_shard(self.recurrent_op)(q, k, v, g=g, scale=1.0, initial_state=h0,
                                              output_final_state=True, segment_ids=segment_ids)
    else:
      o, state = per_shard(self.op)(q, k, v, g=g, scale=1.0, initial_state=h0, output_final_state=want_cache,
                                    segment_ids=segment_ids, chunk_size=self.chunk_size, impl=self.impl)
    o = checkpoint_name(o, OP_OUT)  # remat_policy "dots_and_op_out" keeps it (gla_jax/layers/remat.py)
    D = self.D[...].astype(_f32)
    D = D.reshape(H, P) if self.D_has_hdim else D[:, None]
    y = (o.astype(_f32) + xs.astype(_f32) * D).reshape(B, T, I)  # + D·x skip, float32
    y = self.norm(y, z) if self.rmsnorm else y * jax.nn.silu(z.astype(_f32))
    out = self.out_proj(y.astype(cdt))
    return out, (RecurrentCache(state=state, conv=(conv_state,)) if want_cache else None)
