"""The token-mixer interface, and the base that every linear-attention mixer shares (docs/models.md).

A mixer maps x [B, T, D] → y [B, T, D] and owns its decode-time state:

    y, _     = mixer(x, segment_ids=...)                    training / scoring (packed documents)
    cache    = mixer.init_cache(batch_size, max_len, dtype)  empty decode state
    y, cache = mixer(x, cache=cache, offset=n)               continue from `cache` with T new tokens
    y, cache = mixer.decode_step(x_t, cache, offset=n)       one token ([B, D] or [B, 1, D])

`offset` is the number of tokens already in the cache (positions for RoPE / KV caches; recurrent mixers
ignore it). Every mixer is built from a model config and its layer index by `from_config` (the kinds'
registry, registry.py, names the class for each kind), and renames its parameters to fla's names with
`fla_names` (our attribute → fla's, for names Flax cannot hold, such as "gk_proj.0").

`LinearAttentionMixer` is the shared body of the recurrent mixers:

    streams  = {name: x W_name}                      projections (subclass lists them in `streams`)
    streams  = short_conv(streams)                   causal depthwise conv + SiLU on `conv_streams`
    q, k, v, gate = self.qkv(x, streams, ctx)        the subclass: heads, feature maps, RoPE, decays
    o, S     = per_shard(op)(q, k, v, **gate, initial_state=S0, ...)    chunk op, or the recurrent
                                                     op for a single decode token
    y        = self.output(o, x)                     output norm / gate / o_proj (default: fla's
                                                     per-head RMSNorm · swish(x W_g), then o_proj)

so a mixer is a short subclass: its projections and convs in `__init__`, and `qkv`. The base owns the
short convs' states, GQA (`repeat_kv`), the per-shard op call and the cache.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from gla_jax.layers.conv import ShortConvolution
from gla_jax.layers.linear import dense
from gla_jax.layers.norm import GatedRMSNorm, RMSNorm
from gla_jax.layers.per_shard import per_shard
from gla_jax.layers.remat import OP_OUT

_f32 = jnp.float32


class Mixer(nnx.Module):
  """The token-mixer protocol (see the module doc). Subclasses set `kind` and implement the methods."""

  kind: ClassVar[str] = ""
  # our module attribute name → fla's (e.g. {"gk_down": "gk_proj.0"}); applied by gla_jax.convert.fla
  fla_names: ClassVar[dict[str, str]] = {}

  @classmethod
  def from_config(cls, config, layer_idx: int, *, rngs: nnx.Rngs) -> "Mixer":
    """The mixer of layer `layer_idx` of a model with `config`."""
    raise NotImplementedError

  @classmethod
  def fla_param_names(cls, config, layer_idx: int) -> dict[str, str]:
    """Our submodule names → fla's, for layer `layer_idx` of `config` (default: `fla_names`)."""
    del config, layer_idx
    return dict(cls.fla_names)

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None, cache: Any = None,
               offset: jax.Array | int | None = None, return_cache: bool = False) -> tuple[jax.Array, Any]:
    """x [B, T, D] → (y [B, T, D], the updated cache if `cache` is given or `return_cache`, else None)."""
    raise NotImplementedError

  def init_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> Any:
    """An empty decode cache for `batch_size` rows (`max_len`: total tokens, for caches that grow)."""
    raise NotImplementedError

  def decode_step(self, x: jax.Array, cache: Any, offset: jax.Array | int | None = None) -> tuple[jax.Array, Any]:
    """One token per row: x [B, D] or [B, 1, D] → (y of the same shape, the updated cache)."""
    squeeze = x.ndim == 2
    if squeeze:
      x = x[:, None]
    if x.ndim != 3 or x.shape[1] != 1:
      raise ValueError(f"x must have shape [B, D] or [B, 1, D], got {x.shape}")
    y, cache = self(x, cache=cache, offset=offset, return_cache=True)
    return (y[:, 0] if squeeze else y), cache

  def cache_bytes(self, max_len: int, batch_size: int = 1) -> int:
    """Bytes of the decode cache of `batch_size` sequences of `max_len` tokens (nothing allocated)."""
    shapes = jax.eval_shape(lambda: self.init_cache(batch_size, max_len))
    return int(sum(np.prod(s.shape) * jnp.dtype(s.dtype).itemsize for s in jax.tree.leaves(shapes)))


@flax.struct.dataclass
class RecurrentCache:
  """Decode-time state of a recurrent mixer: the op's state and the short convs' input tails."""

  state: Any  # the op's final state: S float32 [B, H, K, V], or the pair (S, z [B, H, K]) when normalised
  conv: tuple = ()  # one [B, W-1, C] per stream in `conv_streams` (empty without short convs)


@dataclasses.dataclass(frozen=True)
class CallContext:
  """What `qkv` may need besides the streams: packed documents, and positions for RoPE."""

  segment_ids: jax.Array | None  # [B, T]
  offset: jax.Array | int | None  # tokens already in the cache (None: a fresh sequence)
  decoding: bool  # continuing from a cache
  inputs: dict = dataclasses.field(default_factory=dict)  # per-layer inputs from the model (`check_inputs`)

  def positions(self, T: int) -> jax.Array:
    """[B or 1, T] int32: token positions (restarting at every document start with segment_ids)."""
    from gla_jax.layers.mixers.attention import segment_positions  # pylint: disable=g-import-not-at-top
    if self.segment_ids is not None:
      return segment_positions(self.segment_ids)
    start = 0 if self.offset is None else jnp.asarray(self.offset, jnp.int32)
    return start + jnp.arange(T, dtype=jnp.int32)[None]


class LinearAttentionMixer(Mixer):
  """Shared body of the recurrent mixers (see the module doc). A subclass sets, in `__init__`:

    self.<stream>_proj    one `dense` per name in `streams` (names fla's, e.g. "q", "k", "v" → q_proj …)
    self.<stream>_conv1d  one ShortConvolution per name in `conv_streams` when use_short_conv
    self.g_proj, self.g_norm, self.o_proj   the output side used by the default `output`
    self.op, self.recurrent_op              the chunk op and the one-token op (pallas_kernels)
    self.state_shape(batch_size)            via `_set_dims` (H, K, V of the op's state; normalised: (S, z))

  and implements `qkv(x, streams, ctx) -> (q, k, v, gate_kwargs)`: q, k [B, T, H, K], v [B, T, H, V],
  gate_kwargs the op's gate arguments ({"g": …}, {"g_gamma": …}, {} …, GLA: {"g": gk [B, T, H, K]}).
  `op_options` (scale, normalize, … as (name, value) pairs: modules must hash) are fixed per layer.
  """

  streams: tuple[str, ...] = ("q", "k", "v")
  conv_streams: tuple[str, ...] = ("q", "k", "v")

  # -- construction helpers -----------------------------------------------------------------------
  def _set_common(self, hidden_size: int, *, num_heads: int, num_kv_heads: int | None, impl: str,
                  chunk_size: int, dtype, param_dtype, init_std: float, rngs: nnx.Rngs) -> int:
    """Store the fields every mixer has; returns num_kv_heads (num_heads when None)."""
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    for name, n in (("hidden_size", hidden_size), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
      if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
    self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
    self.num_kv_groups = num_heads // num_kv_heads
    self.impl, self.chunk_size, self.dtype = impl, chunk_size, dtype
    del rngs  # taken for a uniform signature; every param maker below gets it explicitly
    self.init_std, self.param_dtype = init_std, param_dtype
    self.use_short_conv = False
    self.op_options: tuple[tuple[str, Any], ...] = ()  # fixed op keywords, e.g. (("normalize", True),)
    return num_kv_heads

  def _head_dims(self, hidden_size: int, expand_k: float, expand_v: float) -> tuple[int, int]:
    """key_dim = D·expand_k and value_dim = D·expand_v (integers divisible by num_heads, fla's rule) →
    sets key_dim / value_dim, the per-head head_k_dim / head_v_dim and the state's K, V; returns the two."""
    key_dim, value_dim = hidden_size * expand_k, hidden_size * expand_v
    if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
      raise ValueError(f"hidden_size·expand_k ({key_dim}) and hidden_size·expand_v ({value_dim}) "
                       "must be integers")
    key_dim, value_dim = round(key_dim), round(value_dim)
    if key_dim % self.num_heads or value_dim % self.num_heads:
      raise ValueError(f"key_dim ({key_dim}) and value_dim ({value_dim}) must be divisible by "
                       f"num_heads ({self.num_heads})")
    self.key_dim, self.value_dim = key_dim, value_dim
    self.head_k_dim, self.head_v_dim = key_dim // self.num_heads, value_dim // self.num_heads
    self.state_k_dim, self.state_v_dim = self.head_k_dim, self.head_v_dim
    return key_dim, value_dim

  def _dense(self, d_in: int, d_out: int, names: tuple[str, str], *, rngs: nnx.Rngs, **kw) -> nnx.Module:
    """A Linear [d_in, d_out] with the layer's init std and dtypes (`kw`: use_bias=…, overrides)."""
    kw = {**dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype), **kw}
    return dense(d_in, d_out, names, **kw, rngs=rngs)

  def _short_convs(self, channels: dict[str, tuple[int, str]], *, conv_size: int, conv_bias: bool,
                   rngs: nnx.Rngs) -> None:
    """One causal conv + SiLU per stream: channels {name: (C, sharding name)} → self.<name>_conv1d."""
    self.use_short_conv, self.conv_size = True, conv_size
    for name in self.conv_streams:
      c, axis = channels[name]
      setattr(self, f"{name}_conv1d", ShortConvolution(c, conv_size, bias=conv_bias, activation="silu",
                                                       channel_name=axis, init_std=self.init_std, dtype=self.dtype,
                                                       param_dtype=self.param_dtype, rngs=rngs))

  def _output_norm(self, head_dim: int, *, use_output_gate: bool, gate_fn: str = "swish",
                   norm_eps: float = 1e-5, elementwise_affine: bool = True, param_dtype=jnp.float32,
                   rngs: nnx.Rngs) -> None:
    """fla's per-head output norm: RMSNorm(o) · act(x W_g) (FusedRMSNormGated) or a plain RMSNorm."""
    kw = dict(eps=norm_eps, elementwise_affine=elementwise_affine, param_dtype=param_dtype, rngs=rngs)
    if use_output_gate:
      if gate_fn not in ("swish", "silu", "sigmoid"):
        raise ValueError(f"gate_fn must be 'swish' or 'sigmoid', got {gate_fn!r}")
      self.g_norm = GatedRMSNorm(head_dim, activation=gate_fn, **kw)
    else:
      self.g_norm = RMSNorm(head_dim, **kw)

  # -- pieces a subclass uses -----------------------------------------------------------------------
  @staticmethod
  def heads(x: jax.Array, d: int) -> jax.Array:
    """[B, T, h·d] → [B, T, h, d]."""
    return x.reshape(*x.shape[:-1], x.shape[-1] // d, d)

  def repeat_kv(self, x: jax.Array) -> jax.Array:
    """[B, T, Hkv, ·] → [B, T, H, ·]: kv head j serves query heads j·G … j·G + G − 1 (fla's order)."""
    return x if self.num_kv_groups == 1 else jnp.repeat(x, self.num_kv_groups, axis=2)

  # -- the template -----------------------------------------------------------------------------------
  def state_shapes(self, batch_size: int) -> Any:
    """The op state's shapes (a tuple, or a pair of tuples when normalised). Subclasses may override."""
    S = (batch_size, self.num_heads, self.state_k_dim, self.state_v_dim)
    if dict(self.op_options).get("normalize"):
      return (S, (batch_size, self.num_heads, self.state_k_dim))
    return S

  def init_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> RecurrentCache:
    """Zero state (float32) and conv tails [B, W−1, C] in the compute dtype; constant in max_len."""
    del max_len  # the recurrent state does not grow
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    shapes = self.state_shapes(batch_size)
    state = (tuple(jnp.zeros(s, _f32) for s in shapes) if isinstance(shapes[0], tuple)
             else jnp.zeros(shapes, _f32))
    dt = dtype or self.dtype or _f32
    conv = (tuple(getattr(self, f"{n}_conv1d").init_state(batch_size, dt) for n in self.conv_streams)
            if self.use_short_conv else ())
    return RecurrentCache(state=state, conv=conv)

  def project(self, x: jax.Array) -> dict[str, jax.Array]:
    """{name: x W_name [B, T, C]} for every name in `streams`."""
    return {n: getattr(self, f"{n}_proj")(x) for n in self.streams}

  def qkv(self, x: jax.Array, streams: dict[str, jax.Array], ctx: CallContext):
    raise NotImplementedError

  def check_inputs(self, inputs: dict) -> None:
    """Per-layer inputs the model passes besides x (HGRN2's lower bound); by default there are none."""
    if inputs:
      raise ValueError(f"{type(self).__name__} takes no inputs besides x, got {sorted(inputs)}")

  def output(self, o: jax.Array, x: jax.Array) -> jax.Array:
    """o [B, T, H, V] → y [B, T, D]: per-head norm (gated by x W_g when there is a g_proj), o_proj."""
    B, T = o.shape[:2]
    if getattr(self, "g_proj", None) is not None:
      o = self.g_norm(o, self.heads(self.g_proj(x), o.shape[-1]))
    elif getattr(self, "g_norm", None) is not None:
      o = self.g_norm(o)
    return self.o_proj(o.reshape(B, T, -1))

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None, cache: RecurrentCache | None = None,
               offset: jax.Array | int | None = None, return_cache: bool = False, **inputs):
    """x [B, T, D]; segment_ids [B, T] (packed documents: state and convs restart); cache: continue;
    `inputs`: per-layer inputs from the model, checked by `check_inputs`, seen by `qkv` as `ctx.inputs`.

    Returns (y [B, T, D], the updated RecurrentCache if `cache` is given or `return_cache`, else None).
    """
    if x.ndim != 3 or x.shape[-1] != self.hidden_size:
      raise ValueError(f"x must have shape [B, T, {self.hidden_size}], got {x.shape}")
    self.check_inputs(inputs)
    T = x.shape[1]
    want_cache = return_cache or cache is not None
    streams = self.project(x)
    conv_states = ()
    if self.use_short_conv:
      prev = cache.conv if cache is not None else (None,) * len(self.conv_streams)
      new = []
      for name, s in zip(self.conv_streams, prev):
        streams[name], c = getattr(self, f"{name}_conv1d")(streams[name], segment_ids=segment_ids, state=s)
        new.append(c)
      conv_states = tuple(new)
    ctx = CallContext(segment_ids=segment_ids, offset=offset, decoding=cache is not None, inputs=inputs)
    q, k, v, gate = self.qkv(x, streams, ctx)
    h0 = None if cache is None else cache.state
    if T == 1 and cache is not None:  # one decode step: the token-by-token recurrence
      o, state = per_shard(self.recurrent_op)(q, k, v, **gate, **dict(self.op_options), initial_state=h0,
                                              output_final_state=True, segment_ids=segment_ids)
    else:
      o, state = per_shard(self.op)(q, k, v, **gate, **dict(self.op_options), initial_state=h0,
                                    output_final_state=want_cache, segment_ids=segment_ids,
                                    chunk_size=self.chunk_size, impl=self.impl)
    o = checkpoint_name(o, OP_OUT)  # remat_policy "dots_and_op_out" keeps it (gla_jax/layers/remat.py)
    y = self.output(o, x)
    return y, (RecurrentCache(state=state, conv=conv_states) if want_cache else None)


def config_dtypes(config) -> dict:
  """dtype / param_dtype of a model config as jnp dtypes (the keyword arguments of every mixer)."""
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


Factory = Callable[..., Mixer]
