"""The model-config base: the trunk's fields, the per-layer mixer pattern, validation helpers.

Every model config (one per kind: GLAConfig, TransformerConfig, RetNetConfig, …) is a frozen dataclass
subclassing `ModelConfig`; its fields and defaults follow the fla 0.6.0 config of the same model_type,
so that a fla `config.json` maps one to one. fla-only switches that do not change the math (`attn_mode`,
`fuse_*`, `use_cache`) are kept; the JAX-side fields are `dtype`, `param_dtype`, `remat`, `remat_policy`,
`scan_layers`, `embed_grad` and, per kind, `attn_impl` / `chunk_size`.

The layer pattern is data: `layer_kinds()` gives each layer's mixer kind — the config's native `kind`,
or softmax attention ("attention", or "swa" with a window) for the layers listed in `attn`, fla's hybrid
spec (one `AttnSpec` or several, each: layers, num_heads, num_kv_heads, qkv_bias, window_size,
rope_theta). `GLAConfig(attn={"layers": [1], "num_heads": 2, "window_size": 64})` is a GLA/SWA hybrid.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax.numpy as jnp

from gla_jax.layers.activations import ACTIVATION_NAMES
from gla_jax.layers.mlp import mlp_intermediate_size

_DTYPES = ("float32", "bfloat16", "float16")
# what a rematerialised block saves for its backward (gla_jax/models/lm.py): "full" and
# "nothing_saveable" keep only the block's input (everything recomputed); "dots_saveable" and
# "dots_with_no_batch_dims_saveable" also keep matmul outputs (jax.checkpoint_policies); "dots_and_op_out"
# also each mixer's op output (no chunk-kernel recompute); "none": no remat
from gla_jax.layers.remat import POLICIES as REMAT_POLICIES  # noqa: E402  (gla_jax/layers/remat.py)


def _check_common(cfg) -> None:
  for name in ("dtype", "param_dtype"):
    value = getattr(cfg, name)
    if str(jnp.dtype(value)) not in _DTYPES:
      raise ValueError(f"{name} must be one of {_DTYPES}, got {value!r}")
  for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads"):
    if not hasattr(cfg, name):
      continue
    if isinstance(getattr(cfg, name), bool) or not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
      raise ValueError(f"{name} must be a positive int, got {getattr(cfg, name)!r}")
  if cfg.hidden_act not in ("swish", "silu"):
    raise ValueError(f"hidden_act must be 'swish' (SwiGLU MLP), got {cfg.hidden_act!r}")
  if hasattr(cfg, "num_kv_heads"):
    _check_int(cfg, "num_kv_heads", 1, optional=True)
  if getattr(cfg, "num_kv_heads", None) is not None and cfg.num_heads % cfg.num_kv_heads:
    raise ValueError(f"num_heads ({cfg.num_heads}) must be divisible by num_kv_heads ({cfg.num_kv_heads})")
  _check_int(cfg, "intermediate_size", 1, optional=True)
  _check_int(cfg, "max_position_embeddings", 1)
  for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
    _check_int(cfg, name, 0, optional=True)
  _check_real(cfg, "hidden_ratio", positive=True, optional=True)
  _check_real(cfg, "norm_eps", positive=True)
  _check_real(cfg, "initializer_range", positive=False)
  if getattr(cfg, "remat_policy", "full") not in REMAT_POLICIES:
    raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {cfg.remat_policy!r}")
  if getattr(cfg, "embed_grad", "scatter") not in ("scatter", "sorted"):
    raise ValueError(f"embed_grad must be 'scatter' or 'sorted', got {cfg.embed_grad!r}")
  for name in ("elementwise_affine", "tie_word_embeddings", "remat", "use_cache", "scan_layers"):
    if not hasattr(cfg, name):
      continue
    if not isinstance(getattr(cfg, name), bool):
      raise ValueError(f"{name} must be a bool, got {getattr(cfg, name)!r}")


def _check_int(cfg, name: str, low: int, optional: bool = False) -> None:
  """An int (not a bool) >= low; None allowed when `optional`."""
  value = getattr(cfg, name)
  if value is None and optional:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name} must be an int >= {low}{' or None' if optional else ''}, got {value!r}")


def _check_real(cfg, name: str, *, positive: bool, optional: bool = False) -> None:
  """A finite real number, > 0 when `positive` (else >= 0); None allowed when `optional`."""
  value = getattr(cfg, name)
  if value is None and optional:
    return
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if not ok or (value <= 0 if positive else value < 0):
    raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}"
                     f"{' or None' if optional else ''}, got {value!r}")




def _check_bool(cfg, name: str) -> None:
  if not isinstance(getattr(cfg, name), bool):
    raise ValueError(f"{name} must be a bool, got {getattr(cfg, name)!r}")


# ------------------------------------------------------------------------------------------------
# the hybrid pattern
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttnSpec:
  """Softmax attention at the listed layers of a model (fla's `attn` config entry).

  window_size None: full causal attention (kind "attention"); an int: sliding-window attention over
  that many tokens, the token itself included (kind "swa").
  """

  layers: tuple[int, ...]
  num_heads: int
  num_kv_heads: int | None = None  # None: num_heads
  qkv_bias: bool = False
  window_size: int | None = None
  rope_theta: float = 10000.0

  def __post_init__(self):
    if not isinstance(self.layers, (tuple, list)) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in self.layers):
      raise ValueError(f"attn layers must be a list of int layer indices, got {self.layers!r}")
    object.__setattr__(self, "layers", tuple(self.layers))
    if len(set(self.layers)) != len(self.layers):
      raise ValueError(f"attn layers contains a duplicate layer: {self.layers}")
    _check_int(self, "num_heads", 1)
    _check_int(self, "num_kv_heads", 1, optional=True)
    if self.num_kv_heads is None:  # fla fills it the same way
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"attn num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
    _check_int(self, "window_size", 1, optional=True)
    _check_real(self, "rope_theta", positive=True)
    _check_bool(self, "qkv_bias")

  @property
  def kind(self) -> str:
    return "attention" if self.window_size is None else "swa"

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["layers"] = list(self.layers)
    return d


def parse_attn(attn, num_hidden_layers: int) -> tuple[AttnSpec, ...] | None:
  """fla's `attn` value (None, a dict, a list of dicts, AttnSpecs) → a tuple of AttnSpec (or None)."""
  if attn is None:
    return None
  items = [attn] if isinstance(attn, (dict, AttnSpec)) else attn
  if not isinstance(items, (list, tuple)) or not items:
    raise ValueError(f"attn must be None, a dict, or a list of dicts (fla's hybrid spec), got {attn!r}")
  specs = []
  for item in items:
    if isinstance(item, dict):
      unknown = set(item) - {f.name for f in dataclasses.fields(AttnSpec)}
      if unknown:
        raise ValueError(f"attn has unknown fields {sorted(unknown)}")
      if "layers" not in item or "num_heads" not in item:
        raise ValueError(f"attn entries need 'layers' and 'num_heads', got {item!r}")
      item = AttnSpec(**item)
    elif not isinstance(item, AttnSpec):
      raise ValueError(f"attn entries must be dicts, got {item!r}")
    specs.append(item)
  seen: set[int] = set()
  for spec in specs:
    for i in spec.layers:
      if not 0 <= i < num_hidden_layers:
        raise ValueError(f"attn layer {i} is out of range [0, {num_hidden_layers})")
      if i in seen:
        raise ValueError(f"attn assigns layer {i} twice")
      seen.add(i)
  return tuple(specs)


# ------------------------------------------------------------------------------------------------
# the trunk
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Fields of the causal-LM trunk (gla_jax/models/lm.py) that every model config has.

  Class attributes say how the model meets fla: `model_type` / `architecture` (config.json), `kind` (the
  native mixer), `has_mlp` (False: blocks are norm + mixer only, as Mamba-2's), and the parameter-name
  prefix / renames of gla_jax.convert.fla.
  """

  model_type: ClassVar[str] = ""  # fla's model_type
  architecture: ClassVar[str] = ""  # fla's *ForCausalLM class name
  kind: ClassVar[str] = ""  # the native mixer kind of every layer not in `attn`
  has_mlp: ClassVar[bool] = True  # blocks with a SwiGLU MLP after the mixer
  fla_prefix: ClassVar[str] = "model"  # fla's name of the trunk module ("backbone" for Mamba-2)
  fla_block_names: ClassVar[dict[str, str]] = {}  # our Block attribute → fla's ("attn" → "mixer")
  fla_final_norm: ClassVar[str] = "norm"  # fla's name of the final norm ("norm_f" for Mamba-2)
  jax_only: ClassVar[tuple[str, ...]] = ("dtype", "param_dtype", "attn_impl", "chunk_size", "remat",
                                          "remat_policy", "scan_layers", "embed_grad")
  tiny_defaults: ClassVar[dict[str, Any]] = {}  # presets.tiny(kind): the CPU-sized model of the kind

  vocab_size: int = 32000
  hidden_size: int = 2048  # model width D
  num_hidden_layers: int = 24
  hidden_ratio: int | float | None = 4  # MLP width ≈ D · ratio · 2/3, rounded up to 256
  intermediate_size: int | None = None  # explicit MLP width (overrides hidden_ratio)
  hidden_act: str = "swish"  # MLP activation (SwiGLU)
  max_position_embeddings: int = 2048
  elementwise_affine: bool = True
  norm_eps: float = 1e-6
  use_cache: bool = True
  pad_token_id: int | None = None
  bos_token_id: int = 1
  eos_token_id: int = 2
  tie_word_embeddings: bool = False  # lm_head = embeddingsᵀ
  initializer_range: float = 0.02  # std of N(0, ·) for Linear/Embedding weights
  fuse_norm: bool = True  # fla kernel fusion switches: no effect on the math here
  fuse_swiglu: bool = True
  fuse_cross_entropy: bool = True
  attn: Any = None  # fla's hybrid spec (see the module doc), stored as a tuple of AttnSpec
  # JAX side
  dtype: str = "float32"  # compute dtype (activations); logits are float32
  param_dtype: str = "float32"  # parameter storage dtype
  remat: bool = False  # rematerialise each block in the backward pass (nnx.remat)
  remat_policy: str = "full"  # with remat: what a block keeps for the backward (REMAT_POLICIES; "none": no remat)
  embed_grad: str = "scatter"  # the embedding table's gradient (gla_jax/layers/linear.py take_rows)
  scan_layers: bool = False  # runs of identical layers: stacked params, one lax.scan each (models/scan.py)

  def __post_init__(self):
    _check_common(self)
    object.__setattr__(self, "attn", parse_attn(self.attn, self.num_hidden_layers))

  def attn_spec(self, layer_idx: int) -> AttnSpec | None:
    """The softmax-attention spec of layer `layer_idx`, None for a native layer."""
    for spec in self.attn or ():
      if layer_idx in spec.layers:
        return spec
    return None

  def layer_kinds(self) -> tuple[str, ...]:
    """The mixer kind of every layer, in order."""
    out = []
    for i in range(self.num_hidden_layers):
      spec = self.attn_spec(i)
      out.append(self.kind if spec is None else spec.kind)
    return tuple(out)

  @property
  def mlp_size(self) -> int:
    return mlp_intermediate_size(self.hidden_size, self.hidden_ratio, self.intermediate_size)

  @classmethod
  def tiny(cls, **overrides) -> "ModelConfig":
    """The CPU-sized model of this kind (≈ 0.15M params, vocab 256); `overrides` win."""
    return cls(**{**cls.tiny_defaults, **overrides})
