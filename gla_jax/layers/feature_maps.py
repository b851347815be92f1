"""Feature maps φ that fla 0.6.0's linear-attention layers apply to q and k (`fla.modules.feature_map`).

Each map acts on the last axis of x [..., d] (one head's key dim) and returns φ(x) [..., out_dim]. Its
weights, if any, are shared by every head (fla applies one module to the [B, T, H, d] tensor). The names
are those fla's `LinearAttention(feature_map=...)` accepts, plus Based's "taylor":

    name                  fla class             params (fla names)            out_dim
    identity              nn.Identity           -                             d
    elu                   elu_p1                -                             d
    relu                  nn.ReLU               -                             d
    hedgehog              HedgehogFeatureMap    layer.{kernel [d, d], bias}   2·d
    t2r                   T2RFeatureMap         layer.kernel [d, d] (no bias) d
    elementwise_product   HadamardFeatureMap    layer1.*, layer2.* (biases)   d
    dpfp                  DPFPFeatureMap        -  (nu = 4)                   2·d·nu
    taylor                TaylorFeatureMap      -                             1 + d + d(d+1)/2

Kernels are [in, out], the transpose of torch's `nn.Linear.weight`; they carry no sharding name (the
[d, d] weights are tiny and replicated). Init: `init_std=None` gives the module's own init in fla
(hedgehog: identity kernel, zero bias; t2r / elementwise_product: torch's `nn.Linear` default,
U(±1/√d) for kernel and bias); a float gives fla's model-level `_init_weights`, which `post_init`
applies to every `nn.Linear` of a `*ForCausalLM` (hedgehog's included): N(0, init_std) kernel, zero bias.

Example:
  >>> fm = make_feature_map("hedgehog", 16, rngs=nnx.Rngs(0))
  >>> fm(jnp.ones((2, 8, 4, 16))).shape, fm.out_dim
  ((2, 8, 4, 32), 32)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gla_jax.layers.sharding import with_axes

_f32 = jnp.float32

FEATURE_MAP_NAMES = ("identity", "elu", "relu", "hedgehog", "t2r", "elementwise_product", "dpfp", "taylor")


def feature_map_dim(name: str | None, head_dim: int, *, nu: int = 4) -> int:
  """out_dim of the map `name` on a head dim `head_dim` (without building it)."""
  name = _check_name(name)
  if name == "hedgehog":
    return 2 * head_dim
  if name == "dpfp":
    return 2 * head_dim * nu
  if name == "taylor":
    return 1 + head_dim + head_dim * (head_dim + 1) // 2
  return head_dim


def _check_name(name: str | None) -> str:
  name = "identity" if name is None else name
  if name not in FEATURE_MAP_NAMES:
    raise ValueError(f"feature_map must be None or one of {FEATURE_MAP_NAMES}, got {name!r}")
  return name


def _torch_default_uniform(fan_in: int):
  """torch nn.Linear's default init for weight and bias: U(-1/√fan_in, 1/√fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=_f32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _identity_init(key, shape, dtype=_f32):
  del key
  return jnp.eye(shape[0], shape[1], dtype=dtype)


def _linear(d_in: int, d_out: int, *, use_bias: bool, kernel_init, bias_init, dtype, param_dtype,
            rngs: nnx.Rngs | None) -> nnx.Linear:
  """nnx.Linear [d_in, d_out] whose kernel/bias carry no sharding name (replicated)."""
  if rngs is None:
    raise ValueError("rngs must be given for a feature map with parameters")
  return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=with_axes(kernel_init, (None, None)),
                    bias_init=with_axes(bias_init, (None,)), rngs=rngs)


def _inits(init_std: float | None, module_kernel_init, fan_in: int):
  """(kernel_init, bias_init): fla's module-level init, or its model-level N(0, init_std) / zeros."""
  if init_std is not None:
    return nnx.initializers.normal(init_std), nnx.initializers.zeros_init()
  if module_kernel_init is not None:
    return module_kernel_init, nnx.initializers.zeros_init()
  return _torch_default_uniform(fan_in), _torch_default_uniform(fan_in)


class FeatureMap(nnx.Module):
  """Base: x [..., head_dim] → φ(x) [..., out_dim] in `dtype` (default x's dtype), math in float32."""

  head_dim: int
  out_dim: int
  dtype: jnp.dtype | None

  def _check(self, x: jax.Array) -> None:
    if x.shape[-1] != self.head_dim:
      raise ValueError(f"x must have last dimension head_dim={self.head_dim}, got shape {x.shape}")

  def _out(self, y: jax.Array, x: jax.Array) -> jax.Array:
    return y.astype(self.dtype or x.dtype)


class IdentityFeatureMap(FeatureMap):
  """φ(x) = x (fla "identity", nn.Identity). out_dim = d."""

  def __init__(self, head_dim: int, *, dtype=None):
    self.head_dim, self.out_dim, self.dtype = head_dim, head_dim, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x)
    return self._out(x, x)


class EluFeatureMap(FeatureMap):
  """φ(x) = elu(x) + 1 = x + 1 if x ≥ 0 else exp(x) (fla "elu", `elu_p1`). out_dim = d."""

  def __init__(self, head_dim: int, *, dtype=None):
    self.head_dim, self.out_dim, self.dtype = head_dim, head_dim, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x)
    x32 = x.astype(_f32)
    return self._out(jnp.where(x32 >= 0, x32 + 1.0, jnp.exp(jnp.minimum(x32, 0.0))), x)


class ReLUFeatureMap(FeatureMap):
  """φ(x) = max(x, 0) (fla "relu", nn.ReLU). out_dim = d."""

  def __init__(self, head_dim: int, *, dtype=None):
    self.head_dim, self.out_dim, self.dtype = head_dim, head_dim, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x)
    return self._out(jax.nn.relu(x.astype(_f32)), x)


class HedgehogFeatureMap(FeatureMap):
  """φ(x) = softmax([2y, −2y]) over the last axis, y = x W + b (fla `HedgehogFeatureMap`). out_dim = 2·d.

  `layer`: kernel W [d, d], bias b [d]; fla inits W = I, b = 0, so at init φ(x) = softmax([2x, −2x]).
  """

  def __init__(self, head_dim: int, *, init_std: float | None = None, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.head_dim, self.out_dim, self.dtype = head_dim, 2 * head_dim, dtype
    kernel_init, bias_init = _inits(init_std, _identity_init, head_dim)
    self.layer = _linear(head_dim, head_dim, use_bias=True, kernel_init=kernel_init, bias_init=bias_init,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x)
    y = 2.0 * self.layer(x).astype(_f32)  # [..., d]
    return self._out(jax.nn.softmax(jnp.concatenate([y, -y], axis=-1), axis=-1), x)


class T2RFeatureMap(FeatureMap):
  """φ(x) = relu(x W [+ b]) (fla `T2RFeatureMap`, T2R). out_dim = dot_dim (default d).

  `layer`: kernel W [d, dot_dim], bias only if `bias` (fla's default and LinearAttention's: no bias).
  """

  def __init__(self, head_dim: int, *, dot_dim: int | None = None, bias: bool = False,
               init_std: float | None = None, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    dot_dim = head_dim if dot_dim is None else dot_dim
    self.head_dim, self.out_dim, self.dtype = head_dim, dot_dim, dtype
    kernel_init, bias_init = _inits(init_std, None, head_dim)
    self.layer = _linear(head_dim, dot_dim, use_bias=bias, kernel_init=kernel_init, bias_init=bias_init,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x)
    return self._out(jax.nn.relu(self.layer(x).astype(_f32)), x)


class HadamardFeatureMap(FeatureMap):
  """φ(x) = (x W1 + b1) ⊙ (x W2 + b2) (fla `HadamardFeatureMap`, "elementwise_product", the default
  of fla's LinearAttention). out_dim = d. `layer1`, `layer2`: kernel [d, d], bias [d]."""

  def __init__(self, head_dim: int, *, init_std: float | None = None, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.head_dim, self.out_dim, self.dtype = head_dim, head_dim, dtype
    kernel_init, bias_init = _inits(init_std, None, head_dim)
    kw = dict(use_bias=True, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype,
              param_dtype=param_dtype, rngs=rngs)
    self.layer1 = _linear(head_dim, head_dim, **kw)
    self.layer2 = _linear(head_dim, head_dim, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x)
    return self._out(self.layer1(x).astype(_f32) * self.layer2(x).astype(_f32), x)


class DPFPFeatureMap(FeatureMap):
  """DPFP (fla `DPFPFeatureMap`): r = [relu(x), relu(−x)] [..., 2d], then
  φ(x) = [r ⊙ roll(r, 1), r ⊙ roll(r, 2), …, r ⊙ roll(r, nu)], i.e.
  φ(x)[(j−1)·2d + i] = r[i] · r[(i − j) mod 2d] for j = 1..nu. out_dim = 2·d·nu. No params."""

  def __init__(self, head_dim: int, *, nu: int = 4, dtype=None):
    if nu < 1:
      raise ValueError(f"nu must be >= 1, got {nu}")
    self.head_dim, self.nu, self.out_dim, self.dtype = head_dim, nu, 2 * head_dim * nu, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x)
    x32 = x.astype(_f32)
    r = jnp.concatenate([jax.nn.relu(x32), jax.nn.relu(-x32)], axis=-1)  # [..., 2d]
    rolled = jnp.concatenate([jnp.roll(r, j, axis=-1) for j in range(1, self.nu + 1)], axis=-1)
    return self._out(jnp.tile(r, (1,) * (r.ndim - 1) + (self.nu,)) * rolled, x)  # [..., 2d·nu]


class TaylorFeatureMap(FeatureMap):
  """2nd-order Taylor map of exp (fla `TaylorFeatureMap`, Based):

      φ(x) = [1,  x / d^¼,  x_i² / (√d·√2) for i = 0..d−1,  x_i x_j / √d for i < j (row-major)]

  so φ(q)·φ(k) = 1 + s + s²/2 with s = q·k / √d. out_dim = 1 + d + d(d+1)/2. No params.
  """

  def __init__(self, head_dim: int, *, dtype=None):
    self.head_dim, self.dtype = head_dim, dtype
    self.out_dim = 1 + head_dim + head_dim * (head_dim + 1) // 2
    iu, ju = np.triu_indices(head_dim, 1)  # same order as torch.triu_indices(d, d, 1)
    self._iu, self._ju = tuple(int(i) for i in iu), tuple(int(j) for j in ju)

  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x)
    d = self.head_dim
    x32 = x.astype(_f32)
    rd = math.sqrt(d)
    iu, ju = np.asarray(self._iu, np.int32), np.asarray(self._ju, np.int32)
    off = x32[..., iu] * x32[..., ju]  # [..., d(d−1)/2]
    parts = [jnp.ones_like(x32[..., :1]), x32 / math.sqrt(rd), x32 * x32 / (rd * math.sqrt(2.0)), off / rd]
    return self._out(jnp.concatenate(parts, axis=-1), x)


def make_feature_map(name: str | None, head_dim: int, *, init_std: float | None = None, dtype=None,
                     param_dtype=jnp.float32, rngs: nnx.Rngs | None = None) -> FeatureMap:
  """The feature map `name` (see FEATURE_MAP_NAMES; None = "identity") on head dim `head_dim`, with
  fla's defaults (t2r: dot_dim = d, no bias; dpfp: nu = 4). `init_std`: None = fla's module init, a
  float = fla's model-level N(0, init_std) init (see the module docstring). `rngs` is needed only for
  hedgehog, t2r and elementwise_product. Raises ValueError for an unknown name.

  Example:
    >>> make_feature_map("taylor", 16).out_dim
    153
  """
  name = _check_name(name)
  if head_dim < 1:
    raise ValueError(f"head_dim must be >= 1, got {head_dim}")
  learnable = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if name == "hedgehog":
    return HedgehogFeatureMap(head_dim, **learnable)
  if name == "t2r":
    return T2RFeatureMap(head_dim, **learnable)
  if name == "elementwise_product":
    return HadamardFeatureMap(head_dim, **learnable)
  if name == "dpfp":
    return DPFPFeatureMap(head_dim, dtype=dtype)
  if name == "taylor":
    return TaylorFeatureMap(head_dim, dtype=dtype)
  cls = {"identity": IdentityFeatureMap, "elu": EluFeatureMap, "relu": ReLUFeatureMap}[name]
  return cls(head_dim, dtype=dtype)
