"""The one causal-LM trunk of every model (fla's `*ForCausalLM` layout); the layers' mixers are data.

    h = embeddings[ids]
    for each layer i:  h = h + mixer_i(RMSNorm(h));  h = h + SwiGLU(RMSNorm(h))   (no MLP: Mamba-2)
    logits = RMSNorm(h) · W_head           (W_head = embeddingsᵀ when tie_word_embeddings)

mixer_i is the layer of kind `config.layer_kinds()[i]` (gla_jax/layers/mixers/registry.py), built by
`from_config(config, i)`: a GLAConfig gives GLA layers, a GLAConfig with an `attn` spec a GLA/SWA hybrid,
a RetNetConfig RetNet layers, and so on. `CausalLM(config)` works for any model config.

Decoding: `init_cache` / `prefill` / `decode_step` / `forward_with_cache` carry a `ModelCache` (one
cache per layer, and the number of tokens seen); none of them mutate the module, so they jit as pure
functions of (module, inputs, cache).

`config.scan_layers` (gla_jax/models/scan.py): runs of identical layers are stored as one Block with
stacked params (`self.runs[r]`, leaves [n_r, …]; `self.layers` is None) and applied by one lax.scan per
run; the cache then holds one stacked cache per run. Same logits as unscanned with the same params
(`scan.stack_layers` / `scan.unstack_layers` convert them).

Checks that need values (they cannot raise under jit, where the values are traced):
* token ids outside [0, vocab_size): ValueError on concrete ids; under jit they are clamped into range
  (an id < 0 reads token 0, an id ≥ vocab_size the last token), never NaN or wrapped silently.
* a KV cache (Transformer) holds `max_len` positions: going past it raises ValueError when the cache's
  offset is concrete (eager `decode_step`), and gives NaN logits for every row under jit (every later
  step from that cache too). Check `cache.offset < cache.max_len`, or use `generate`, which sizes the
  cache statically. Recurrent caches (GLA, …) and sliding-window attention's rolling KV cache (window_size
  slots) are constant-size and have no limit: `ModelCache.max_len` is None when every layer's is.
"""

from __future__ import annotations

import warnings

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gla_jax.layers import remat as remat_lib
from gla_jax.layers.linear import dense, embedding, take_rows
from gla_jax.layers.mixers import registry
from gla_jax.layers.mlp import GatedMLP
from gla_jax.layers.norm import RMSNorm
from gla_jax.models import scan

_f32 = jnp.float32


@flax.struct.dataclass
class ModelCache:
  """Decode-time state of a whole model."""

  layers: tuple  # one cache per block (its mixer's: RecurrentCache, KVCache, …); stacked: one per run
  offset: jax.Array  # int32 []: tokens processed so far (the next token's position)
  stacked: bool = flax.struct.field(pytree_node=False, default=False)  # scan_layers: leaves [n_run, …]

  @property
  def max_len(self) -> int | None:
    """Positions the cache can hold (the smallest KV cache's), None when unbounded (recurrent, SWA)."""
    layers = [scan.cache_slice_shapes(c) for c in self.layers] if self.stacked else self.layers
    lens = [c.max_len for c in layers if getattr(c, "max_len", None) is not None]
    return min(lens) if lens else None

  @property
  def batch_size(self) -> int | None:
    """Rows the cache was made for (None for a model without layer caches)."""
    leaves = jax.tree.leaves(self.layers)
    return None if not leaves else leaves[0].shape[1 if self.stacked else 0]


class Block(nnx.Module):
  """Pre-norm block: h + mixer(norm(h)), then + mlp(norm(·)). h [B, T, D] → [B, T, D].

  Without an MLP (`config.has_mlp` False, Mamba-2's block): h + mixer(norm(h)).
  """

  def __init__(self, mixer: nnx.Module, config, *, rngs: nnx.Rngs):
    dt, pdt = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    D = config.hidden_size
    self.attn_norm = RMSNorm(D, eps=config.norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.attn = mixer
    if config.has_mlp:
      self.mlp_norm = RMSNorm(D, eps=config.norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
      self.mlp = GatedMLP(D, hidden_ratio=config.hidden_ratio, intermediate_size=config.intermediate_size,
                          hidden_act=config.hidden_act, init_std=config.initializer_range, dtype=dt,
                          param_dtype=pdt, rngs=rngs)
    else:
      self.mlp_norm = self.mlp = None

  def __call__(self, h: jax.Array, *, segment_ids=None, cache=None, offset=None, return_cache=False,
               **mixer_inputs):
    """`mixer_inputs`: per-layer inputs from the model (HGRN2's lower bound), passed to the mixer."""
    o, new_cache = self.attn(self.attn_norm(h), segment_ids=segment_ids, cache=cache, offset=offset,
                             return_cache=return_cache, **mixer_inputs)
    if self.mlp is None:
      return h + o.astype(h.dtype), new_cache
    x, h = self.mlp_norm(o, h)  # fla's fused prenorm: norm(o + h), new residual o + h
    return h + self.mlp(x), new_cache


def _block_forward(block: Block, h: jax.Array, segment_ids, mixer_inputs):
  return block(h, segment_ids=segment_ids, **mixer_inputs)[0]


def make_block(config, layer_idx: int, rngs: nnx.Rngs) -> Block:
  """Block `layer_idx` of `config`: its mixer (of kind `config.layer_kinds()[layer_idx]`) and MLP."""
  kind = config.layer_kinds()[layer_idx]
  return Block(registry.mixer_class(kind).from_config(config, layer_idx, rngs=rngs), config, rngs=rngs)


def _remat(fn, config):
  """`fn` rematerialised per `config.remat` / `config.remat_policy` (remat False or policy "none": as is)."""
  policy = getattr(config, "remat_policy", "full")
  if not config.remat or policy == "none":
    return fn
  chosen = remat_lib.policy(policy)
  return nnx.remat(fn) if chosen is None else nnx.remat(fn, policy=chosen)


class CausalLM(nnx.Module):
  """Embeddings → blocks (mixer of each layer's kind) → final RMSNorm → lm_head, for any model config.

  `model(input_ids [B, T] int, *, segment_ids [B, T] | None) -> logits float32 [B, T, vocab]`.
  Params: embeddings.embedding [vocab, D] (vocab, embed); lm_head.kernel [D, vocab] (embed, vocab)
  unless tied; every block's params as in `Block` (layers/{i}/…), or with `config.scan_layers` each
  run's stacked (runs/{r}/…, leading axis n_r named "layers"; gla_jax/models/scan.py).
  """

  def __init__(self, config, *, rngs: nnx.Rngs):
    self.config = config
    dt, pdt = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    D, std = config.hidden_size, config.initializer_range
    self.embeddings = embedding(config.vocab_size, D, init_std=std, dtype=dt, param_dtype=pdt, rngs=rngs)
    if config.scan_layers:
      if not config.remat or getattr(config, "remat_policy", "full") == "none":
        warnings.warn("scan_layers without remat: the backward keeps every intermediate of every layer "
                      "(about 5x the activation memory of remat_policy='dots_and_op_out' at GLA-340M; "
                      "gla_jax/layers/remat.py); set remat=True with a remat_policy", stacklevel=2)
      self.layers = None
      self.runs = nnx.List([scan.stacked_module(lambda r, i=run[0]: make_block(config, i, r), len(run), rngs=rngs)
                            for run in scan.layer_runs(config)])
    else:
      self.layers = nnx.List([make_block(config, i, rngs) for i in range(config.num_hidden_layers)])
      self.runs = None
    if getattr(config, "use_lower_bound", False):  # HGRN2: fla's model-level lower_bounds [L, D]
      from gla_jax.layers.mixers.hgrn2 import init_lower_bounds  # pylint: disable=g-import-not-at-top
      self.lower_bounds = init_lower_bounds(config.num_hidden_layers, D, param_dtype=pdt, rngs=rngs)
    else:
      self.lower_bounds = None
    self.norm = RMSNorm(D, eps=config.norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.lm_head = (None if config.tie_word_embeddings else
                    dense(D, config.vocab_size, ("embed", "vocab"), init_std=std, dtype=dt,
                          param_dtype=pdt, preferred_element_type=_f32, rngs=rngs))

  def _mixer_inputs(self) -> list[dict]:
    """Per-layer extra mixer inputs: HGRN2 layers get their row of the model's lower bounds."""
    if self.lower_bounds is None:
      return [{} for _ in range(self.config.num_hidden_layers)]
    from gla_jax.layers.mixers.hgrn2 import layer_lower_bounds  # pylint: disable=g-import-not-at-top
    lb = layer_lower_bounds(self.lower_bounds[...])
    return [{"lower_bound": lb[i]} if k == "hgrn2" else {} for i, k in enumerate(self.config.layer_kinds())]

  def _run_inputs(self) -> list[dict]:
    """scan_layers: each run's mixer inputs stacked over its layers (leaves [n_run, …], scanned)."""
    per_layer = self._mixer_inputs()
    return [jax.tree.map(lambda *xs: jnp.stack(xs), *[per_layer[i] for i in run])
            for run in scan.layer_runs(self.config)]

  def _run_templates(self) -> list[Block]:
    """scan_layers: each run's unstacked Block (abstract; the graph its scan body merges slices into)."""
    return [scan.template(make_block, self.config, run[0]) for run in scan.layer_runs(self.config)]

  # -- pieces -------------------------------------------------------------------------------------
  def _check_ids(self, input_ids, segment_ids=None, *, name="input_ids") -> None:
    """Shape and dtype; the values too when concrete (traced ids are clamped by `_embed`)."""
    if not hasattr(input_ids, "shape") or input_ids.ndim != 2 or 0 in input_ids.shape:
      raise ValueError(f"{name} must be an int array [B, T] with B, T >= 1, got shape "
                       f"{getattr(input_ids, 'shape', None)}")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f"{name} must have an integer dtype, got {input_ids.dtype}")
    if not isinstance(input_ids, jax.core.Tracer) and getattr(input_ids, "is_fully_addressable", True):
      a, vocab = np.asarray(input_ids), self.config.vocab_size
      lo, hi = int(a.min()), int(a.max())
      if lo < 0 or hi >= vocab:
        raise ValueError(f"{name} must be token ids in [0, vocab_size={vocab}), got values from {lo} to {hi}")
    if segment_ids is not None:
      if segment_ids.shape != input_ids.shape:
        raise ValueError(f"segment_ids must have the shape of input_ids {input_ids.shape}, got {segment_ids.shape}")
      if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(f"segment_ids must have an integer dtype, got {segment_ids.dtype}")

  def _embed(self, input_ids: jax.Array) -> jax.Array:
    """Embeddings of the ids clamped into [0, vocab): traced ids cannot be checked, and out of range they
    would give NaN (≥ vocab) or wrap (< 0)."""
    hi = min(self.config.vocab_size - 1, int(jnp.iinfo(input_ids.dtype).max))
    ids = jnp.clip(input_ids, jnp.asarray(0, input_ids.dtype), jnp.asarray(hi, input_ids.dtype))
    ids = ids.astype(jnp.int32)
    grad = getattr(self.config, "embed_grad", "scatter")
    if grad == "scatter":
      return self.embeddings(ids)
    table = self.embeddings.embedding[...]
    return take_rows(table, ids, grad=grad).astype(self.embeddings.dtype or table.dtype)

  def logits(self, h: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D] (after the final norm) → float32 logits [B, T, vocab]."""
    if self.lm_head is None:
      dt = jnp.dtype(self.config.dtype)
      emb = self.embeddings.embedding[...].astype(dt)
      return jnp.einsum("btd,vd->btv", h.astype(dt), emb, preferred_element_type=_f32)
    return self.lm_head(h).astype(_f32)

  def hidden_states(self, input_ids: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, T] token ids → final-normed hidden states [B, T, D] in the compute dtype."""
    self._check_ids(input_ids, segment_ids)
    h = self._embed(input_ids)
    if self.config.scan_layers:
      def body(block, h, extra):
        return _block_forward(block, h, segment_ids, extra), None
      for stacked, layer, extra in zip(self.runs, self._run_templates(), self._run_inputs()):
        h, _ = scan.scan_run(stacked, layer, h, extra, body, remat_config=self.config)
      return self.norm(h)
    step = _remat(_block_forward, self.config)
    for block, extra in zip(self.layers, self._mixer_inputs()):
      h = step(block, h, segment_ids, extra)
    return self.norm(h)

  def __call__(self, input_ids: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
    """input_ids int [B, T], segment_ids int [B, T] (packed documents) → logits float32 [B, T, vocab]."""
    return self.logits(self.hidden_states(input_ids, segment_ids=segment_ids))

  # -- decoding -----------------------------------------------------------------------------------
  def init_cache(self, batch_size: int, max_len: int | None = None) -> ModelCache:
    """An empty cache for `batch_size` rows (`max_len`: total tokens, needed by KV caches)."""
    dt = jnp.dtype(self.config.dtype)
    if self.config.scan_layers:
      layers = tuple(scan.stack_cache(t.attn.init_cache(batch_size, max_len, dt), len(run))
                     for t, run in zip(self._run_templates(), scan.layer_runs(self.config)))
      return ModelCache(layers=layers, offset=jnp.zeros((), jnp.int32), stacked=True)
    layers = tuple(b.attn.init_cache(batch_size, max_len, dt) for b in self.layers)
    return ModelCache(layers=layers, offset=jnp.zeros((), jnp.int32))

  def forward_with_cache(self, input_ids: jax.Array, cache: ModelCache) -> tuple[jax.Array, ModelCache]:
    """Continue from `cache` with T new tokens [B, T] → (logits float32 [B, T, vocab], updated cache).

    Past a KV cache's max_len: ValueError with a concrete `cache.offset`, NaN logits under jit.
    """
    self._check_ids(input_ids)
    return self._forward_with_cache(input_ids, cache)

  def _forward_with_cache(self, input_ids, cache, last_only: bool = False):
    if cache.stacked != self.config.scan_layers:
      raise ValueError(f"the cache is {'stacked' if cache.stacked else 'per layer'} but the model has "
                       f"scan_layers={self.config.scan_layers}: make it with this model's init_cache")
    if cache.batch_size is not None and cache.batch_size != input_ids.shape[0]:
      raise ValueError(f"the ids have {input_ids.shape[0]} rows but the cache was made for {cache.batch_size}")
    h = self._embed(input_ids)
    if self.config.scan_layers:
      def body(block, h, x):
        layer_cache, extra = x
        return block(h, cache=layer_cache, offset=cache.offset, return_cache=True, **extra)
      new_runs = []
      for stacked, layer, run_cache, extra in zip(self.runs, self._run_templates(), cache.layers,
                                                  self._run_inputs()):
        h, c = scan.scan_run(stacked, layer, h, (run_cache, extra), body)
        new_runs.append(c)
      logits = self.logits(self.norm(h[:, -1:] if last_only else h))
      return logits, ModelCache(layers=tuple(new_runs), offset=cache.offset + input_ids.shape[1], stacked=True)
    new_layers = []
    for block, layer_cache, extra in zip(self.layers, cache.layers, self._mixer_inputs()):
      h, c = block(h, cache=layer_cache, offset=cache.offset, return_cache=True, **extra)
      new_layers.append(c)
    logits = self.logits(self.norm(h[:, -1:] if last_only else h))
    return logits, ModelCache(layers=tuple(new_layers), offset=cache.offset + input_ids.shape[1])

  def prefill(self, input_ids: jax.Array, *, max_len: int | None = None,
              last_only: bool = False) -> tuple[jax.Array, ModelCache]:
    """Run a prompt [B, T] → (logits float32 [B, T, vocab], cache); `last_only`: logits of the last
    position only, [B, 1, vocab] (what sampling needs; [B, T, vocab] float32 is 16.8 GB at B = 64, T = 2048).

    `max_len`: the total tokens (prompt + decode steps) the cache must hold; default T, which leaves a
    Transformer no room to decode (KV caches are sized by it; the GLA state is constant-size).
    """
    self._check_ids(input_ids)
    B, T = input_ids.shape
    if max_len is None:
      max_len = T
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < T:
      raise ValueError(f"max_len must be an int >= the prompt length {T}, got {max_len!r}")
    return self._forward_with_cache(input_ids, self.init_cache(B, int(max_len)), last_only=bool(last_only))

  def decode_step(self, token_ids: jax.Array, cache: ModelCache) -> tuple[jax.Array, ModelCache]:
    """One token per row ([B] or [B, 1]) → (logits float32 [B, vocab], updated cache). O(1) for GLA.

    A Transformer's KV cache holds `max_len` tokens (prefill / init_cache): a step past it raises
    ValueError when `cache.offset` is concrete, and returns NaN logits under jit (see the module doc).
    """
    if not hasattr(token_ids, "ndim"):
      raise ValueError(f"token_ids must be an int array [B] or [B, 1], got {type(token_ids).__name__}")
    if token_ids.ndim == 1:
      token_ids = token_ids[:, None]
    if token_ids.ndim != 2 or token_ids.shape[1] != 1:
      raise ValueError(f"token_ids must have shape [B] or [B, 1], got {token_ids.shape}")
    logits, cache = self.forward_with_cache(token_ids, cache)
    return logits[:, 0], cache
