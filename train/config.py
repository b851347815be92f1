"""Training configuration: one frozen dataclass tree, loaded from `configs/<name>.py`, overridable by `--set`.

A config file defines `get_config() -> TrainConfig`; the `TrainConfig` contains the model config (one source
of truth for the architecture). Overrides are dotted paths into that tree,
`--set optim.lr=1e-3 model.num_hidden_layers=2 mesh.fsdp=2`, parsed by the field's declared type and applied
with `dataclasses.replace`; an unknown key or a value of the wrong type raises `ConfigError`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
import sys
import types
import typing
from typing import Any, Literal

import numpy as np


class ConfigError(ValueError):
  """A bad config file, override or config value; the CLI prints it without a traceback."""


# ------------------------------------------------------------------------------------------------ pieces


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
  """Device mesh over the axes (data, fsdp, tensor); -1 means "the devices left over" (at most one -1)."""

  data: int = -1  # data-parallel replicas: batch split, params replicated
  fsdp: int = 1  # fully-sharded data parallel: batch split AND params/optimizer state split (ZeRO-3)
  tensor: int = 1  # tensor parallel: heads, MLP width and vocab split; batch replicated


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
  """AdamW with linear warmup then cosine decay, global-norm clipping and a weight-decay mask."""

  lr: float = 3e-4  # peak learning rate, reached after `warmup_steps`
  warmup_steps: int = 100  # linear warmup from 0
  min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
  b1: float = 0.9  # Adam beta1
  b2: float = 0.95  # Adam beta2
  eps: float = 1e-8  # Adam epsilon
  weight_decay: float = 0.1  # decoupled decay on matrices only (not norms, biases or embeddings)
  clip_norm: float = 1.0  # clip the global gradient norm to this (0 turns clipping off)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MQARConfig:
  """Multi-query associative recall (Zoology): key-value pairs, then queries of the keys at power-law gaps."""

  num_kv_pairs: int = 8  # pairs in the context (keys unique per example)
  power_a: float = 0.01  # query gap distribution p(gap = g) ∝ g^(a - 1): small a = mostly short gaps
  random_filler: bool = True  # fill non-query positions with random tokens (Zoology's default) instead of 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig:
  """Text LM data: a tfds array_record dataset over local files, read through grain, packed with EOS."""

  corpus: str = "stdlib"  # "stdlib" (this interpreter's stdlib sources), a directory of text files, or
  #                         "tfds:<name>" for a tfds catalog dataset (downloads at build time: needs the network)
  text_key: str = "text"  # feature holding the text in a catalog dataset
  eval_split: str = "validation"  # split used for evaluation (catalog sets may only have "test")
  glob: str = "**/*.py"  # which files of a directory corpus to take (sorted)
  tokenizer: Literal["byte", "bpe"] = "byte"  # byte-level (nothing to download) or a BPE trained locally
  bpe_vocab_size: int = 4096  # vocabulary of the locally trained BPE
  data_dir: str = ""  # where tfds writes the dataset ("" = <workdir>/../data, shared by runs)
  validation_every: int = 50  # every n-th file (by sorted path) goes to the validation split
  shuffle_seed: int = 0  # document order; each epoch reshuffles


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokensConfig:
  """Pre-tokenized LM data: a token file of `python -m train.data.tokens export` (numpy only, train/data/tokens.py)."""

  path: str = ""  # the .npz token file (flat token stream and document starts per split, metadata)
  eval_split: str = "validation"  # split used for evaluation (fixed windows 0, T, 2T, ... in order)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """What the model is trained on; `batch_size` is global (all hosts, one optimizer step)."""

  kind: Literal["mqar", "text", "synthetic", "tokens"] = "mqar"  # synthetic = uniform random tokens (throughput
  #                                                              only); tokens = a pre-tokenized token file
  batch_size: int = 64  # sequences per optimizer step, over all hosts and micro-batches
  seq_len: int = 128  # tokens per sequence
  seed: int = 0  # data seed (MQAR/synthetic draws and token-file windows: a pure function of seed, step and row)
  mqar: MQARConfig = dataclasses.field(default_factory=MQARConfig)
  text: TextConfig = dataclasses.field(default_factory=TextConfig)
  tokens: TokensConfig = dataclasses.field(default_factory=TokensConfig)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
  """Orbax checkpoints in `<workdir>/checkpoints`."""

  every: int = 500  # save every this many steps (and always at the end); 0 = only at the end
  keep: int = 3  # most recent checkpoints kept
  async_save: bool = True  # write in a background thread while training goes on
  resume: bool = True  # continue from the latest checkpoint in the workdir if there is one


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """Everything one training run needs. `model` is a `GLAConfig` or `TransformerConfig`."""

  name: str  # run name; default workdir is runs/<name>
  model: Any  # model config dataclass (gla_jax.models); its dtype / param_dtype / remat fields apply
  steps: int = 1000  # optimizer steps
  grad_accum: int = 1  # micro-batches per step (batch_size must divide by grad_accum * data * fsdp)
  loss_chunk: int = 1024  # chunked cross-entropy: ~tokens per device per chunk (train/losses.py); 0 = full logits
  seed: int = 0  # parameter init seed
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
  eval_every: int = 200  # evaluate every this many steps (and at the end); 0 = only at the end
  eval_batches: int = 8  # batches per evaluation (held-out seed for MQAR, validation split for text)
  log_every: int = 10  # JSONL / TensorBoard / progress-bar update interval in steps
  workdir: str = ""  # "" = runs/<name>
  progress: bool = True  # tqdm progress bar
  tensorboard: bool = True  # also write TensorBoard event files (no TensorFlow needed)
  plot: bool = True  # write a loss/accuracy PNG at the end

  @property
  def run_dir(self) -> str:
    return self.workdir or os.path.join("runs", self.name)


# ------------------------------------------------------------------------------------------------ loading


def load_config(spec: str) -> TrainConfig:
  """Config from a file path (`configs/mqar_gla.py`) or a bare name (`mqar_gla`) in the configs folder.

  Any failure of the file itself (a SyntaxError, a missing import, a `get_config` that raises, e.g. a model
  config's own ValueError) becomes one ConfigError line naming the file, not a traceback.
  """
  path = spec
  if not path.endswith(".py"):
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    path = os.path.join(here, spec + ".py")
  if not os.path.isfile(path):
    raise ConfigError(f"--config {spec!r}: no such file {path!r}; available: {', '.join(available_configs())}")
  name = "gla_config_" + os.path.splitext(os.path.basename(path))[0]
  try:
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    sys.modules.pop(name, None)
    raise ConfigError(f"--config {path!r}: syntax error at line {e.lineno}: {e.msg}") from e
  except Exception as e:  # ImportError, NameError, ...: anything the file's top level raises
    sys.modules.pop(name, None)
    raise ConfigError(f"--config {path!r}: loading it raised {_one_line(e)}") from e
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config {path!r} defines no get_config()")
  try:
    config = module.get_config()
  except Exception as e:
    raise ConfigError(f"--config {path!r}: get_config() raised {_one_line(e)}") from e
  if not isinstance(config, TrainConfig):
    raise ConfigError(f"--config {path!r}: get_config() returned {type(config).__name__}, expected TrainConfig")
  return config


def _one_line(e: BaseException) -> str:
  """`Type: first line of the message` (where the error came from is in the chained traceback, if wanted)."""
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def available_configs() -> list[str]:
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  if not os.path.isdir(here):
    return []
  return sorted(f[:-3] for f in os.listdir(here) if f.endswith(".py") and not f.startswith("_"))


# ------------------------------------------------------------------------------------------------ overrides


def apply_overrides(config: Any, overrides: list[str]) -> Any:
  """Applies `key.sub=value` strings in order; values are parsed by the field's type."""
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"--set {item!r}: expected key=value (e.g. optim.lr=1e-3)")
    key, raw = item.split("=", 1)
    config = _set_path(config, key.strip().split("."), raw.strip(), key.strip())
  return config


def _set_path(obj: Any, parts: list[str], raw: str, full_key: str) -> Any:
  if not dataclasses.is_dataclass(obj):
    raise ConfigError(f"--set {full_key}: {type(obj).__name__} has no sub-fields")
  fields = {f.name: f for f in dataclasses.fields(obj)}
  name = parts[0]
  if name not in fields:
    close = difflib.get_close_matches(name, fields, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"--set {full_key}: unknown key {name!r} in {type(obj).__name__}.{hint} "
        f"Valid keys: {', '.join(sorted(fields))}")
  current = getattr(obj, name)
  if len(parts) > 1:
    value = _set_path(current, parts[1:], raw, full_key)
  else:
    if dataclasses.is_dataclass(current):
      raise ConfigError(f"--set {full_key}: {name!r} is a group; set one of its fields "
                        f"({', '.join(f.name for f in dataclasses.fields(current))})")
    hint = _type_hints(type(obj)).get(name, Any)
    value = parse_value(raw, hint, current, full_key)
  try:
    return dataclasses.replace(obj, **{name: value})
  except (TypeError, ValueError) as e:
    raise ConfigError(f"--set {full_key}={raw}: {e}") from e


def _type_hints(cls: type) -> dict[str, Any]:
  try:
    return typing.get_type_hints(cls)
  except Exception:  # unresolvable forward references: fall back to the current value's type
    return {}


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(raw: str, hint: Any, current: Any, key: str) -> Any:
  """Parses `raw` as `hint` (or, without a usable hint, as the type of `current`)."""
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    if raw.lower() in ("none", "null") and type(None) in args:
      return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return parse_value(raw, arg, current, key)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"--set {key}={raw}: expected {_type_name(hint)}")
  if origin is Literal:
    for choice in args:
      if str(choice) == raw:
        return choice
    raise ConfigError(f"--set {key}={raw}: expected one of {', '.join(map(str, args))}")
  if origin in (tuple, list):
    items = [s.strip() for s in raw.strip("()[]").split(",") if s.strip()]
    inner = args[0] if args else Any
    return origin(parse_value(s, inner, None, key) for s in items)
  if hint is Any or hint is None or isinstance(hint, (str, typing.TypeVar)):
    if current is None:
      return _literal(raw)
    hint = type(current)
  if _is_dtype(hint, current):
    try:
      import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
      dtype = jnp.dtype(raw)
    except TypeError as e:
      raise ConfigError(f"--set {key}={raw}: expected a dtype name (float32, bfloat16, ...)") from e
    return dtype if not isinstance(current, type) else dtype.type
  if hint is bool:
    if raw.lower() in _TRUE:
      return True
    if raw.lower() in _FALSE:
      return False
    raise ConfigError(f"--set {key}={raw}: expected a bool (true/false)")
  if hint is int:
    try:
      return int(raw.replace("_", ""))
    except ValueError:
      try:  # allow 1e4 for counts when it is integral
        f = float(raw)
        if f.is_integer():
          return int(f)
      except ValueError:
        pass
      raise ConfigError(f"--set {key}={raw}: expected an int") from None
  if hint is float:
    try:
      return float(raw)
    except ValueError:
      raise ConfigError(f"--set {key}={raw}: expected a float") from None
  if hint is str:
    return raw
  value = _literal(raw)
  if isinstance(hint, type) and not isinstance(value, hint):
    raise ConfigError(f"--set {key}={raw}: expected {_type_name(hint)}")
  return value


def _is_dtype(hint: Any, current: Any) -> bool:
  if isinstance(current, np.dtype) or (isinstance(current, type) and issubclass(current, np.generic)):
    return True
  return hint is np.dtype or (isinstance(hint, type) and issubclass(hint, np.dtype))


def _literal(raw: str) -> Any:
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _type_name(hint: Any) -> str:
  return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# ------------------------------------------------------------------------------------------------ checks


_SEED_MAX = 2**32 - 1  # grain's shuffle and numpy's SeedSequence take seeds in [0, 2**32)

# dotted key -> (low, high, low_open, high_open) for every number of the tree outside `model` (the model
# config checks its own fields); a bound of None is no bound, and every float must be finite.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "steps": (1, None, False, False), "grad_accum": (1, None, False, False), "loss_chunk": (0, None, False, False),
    "seed": (0, _SEED_MAX, False, False),
    "eval_every": (0, None, False, False), "eval_batches": (1, None, False, False),
    "log_every": (1, None, False, False),
    "optim.lr": (0, None, True, False), "optim.warmup_steps": (0, None, False, False),
    "optim.min_lr_ratio": (0, 1, False, False), "optim.b1": (0, 1, False, True), "optim.b2": (0, 1, False, True),
    "optim.eps": (0, None, True, False), "optim.weight_decay": (0, None, False, False),
    "optim.clip_norm": (0, None, False, False),
    "data.batch_size": (1, None, False, False), "data.seq_len": (1, None, False, False),
    "data.seed": (0, _SEED_MAX, False, False), "data.mqar.num_kv_pairs": (1, None, False, False),
    "data.mqar.power_a": (None, None, False, False), "data.text.bpe_vocab_size": (257, None, False, False),
    "data.text.validation_every": (2, None, False, False),
    "data.text.shuffle_seed": (0, _SEED_MAX, False, False),
    "checkpoint.every": (0, None, False, False), "checkpoint.keep": (1, None, False, False),
}


def validate(config: TrainConfig) -> None:
  """Checks values that do not depend on the devices (the mesh is checked in train.mesh).

  Every field outside `model` is checked against its declared type (a config file is Python: nothing
  parsed it) and every number against its range in RANGES, so nonsense stops here with one line instead
  of training on it (a NaN learning rate, a negative interval, beta1 = 1.5).
  """
  _check_types(config, "")
  for key, (low, high, low_open, high_open) in RANGES.items():
    value = config
    for part in key.split("."):
      value = getattr(value, part)
    _check_range(key, value, low, high, low_open, high_open)
  if not config.name:
    raise ConfigError("name='': a run needs a name (it names the default workdir runs/<name>)")
  for key in ("data", "fsdp", "tensor"):
    size = getattr(config.mesh, key)
    if size == 0 or size < -1:
      raise ConfigError(f"mesh.{key}={size}: must be a positive size or -1 (the devices left over)")
  if config.data.batch_size % config.grad_accum:
    raise ConfigError(f"data.batch_size={config.data.batch_size} must be a multiple of grad_accum={config.grad_accum}")
  vocab = getattr(config.model, "vocab_size", None)
  if vocab is None:
    raise ConfigError(f"model: {type(config.model).__name__} has no vocab_size; expected a gla_jax model config")
  if config.data.kind == "mqar":
    mq = config.data.mqar
    if 4 * mq.num_kv_pairs > config.data.seq_len:
      raise ConfigError(
          f"data.mqar.num_kv_pairs={mq.num_kv_pairs} needs data.seq_len >= {4 * mq.num_kv_pairs} "
          f"(the context takes 2 tokens per pair and each query 2 slots)")
    if vocab < 4 * mq.num_kv_pairs:
      raise ConfigError(f"model.vocab_size={vocab} too small for {mq.num_kv_pairs} MQAR pairs "
                        f"(keys and values come from halves of the vocabulary)")


def _check_types(obj: Any, prefix: str) -> None:
  """Each field's value has its declared type (bool is not an int; an int is a float); `model` excepted."""
  hints = _type_hints(type(obj))
  for f in dataclasses.fields(obj):
    key, value, hint = prefix + f.name, getattr(obj, f.name), hints.get(f.name, Any)
    if key == "model":
      continue
    if dataclasses.is_dataclass(value):
      _check_types(value, key + ".")
    elif not _has_type(value, hint):
      raise ConfigError(f"{key}={value!r}: expected {_type_name(hint)}, got {type(value).__name__}")


def _has_type(value: Any, hint: Any) -> bool:
  origin = typing.get_origin(hint)
  if origin is Literal:
    return value in typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return any(_has_type(value, a) for a in typing.get_args(hint))
  if hint is type(None):
    return value is None
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
  if hint is str:
    return isinstance(value, str)
  return True  # Any and the rest: not checked


def _check_range(key: str, value: Any, low, high, low_open: bool, high_open: bool) -> None:
  if isinstance(value, (float, np.floating)) and not np.isfinite(value):
    raise ConfigError(f"{key}={value}: must be a finite number")
  too_low = low is not None and (value <= low if low_open else value < low)
  too_high = high is not None and (value >= high if high_open else value > high)
  if too_low or too_high:
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    raise ConfigError(f"{key}={value}: must be {' and '.join(x for x in (lo, hi) if x)}")


# the op each kind's layers run (registry.MixerKind.op, "name(gate form)") → its pallas_kernels Op object
_OPS = {"chunk_gla": "pallas_kernels.gla.ops:CHUNK_GLA",
        "chunk_simple_gla": "pallas_kernels.simple_gla.ops:CHUNK_SIMPLE_GLA",
        "chunk_linear_attn": "pallas_kernels.linear_attn.ops:CHUNK_LINEAR_ATTN"}
_ATTENTION_IMPLS = ("auto", "xla", "cudnn")  # jax.nn.dot_product_attention (attention, swa)


def check_platform(config: TrainConfig, platform: str) -> None:
  """An explicit `model.attn_impl` that is not an implementation of the op the model's native kind runs
  (gla_jax/layers/mixers/registry.py: chunk_gla, chunk_simple_gla, chunk_linear_attn or softmax
  attention), or that cannot run on `platform` (Triton off GPU, TPU kernels off TPU, cuDNN off GPU).

  Example: a RetNetConfig (chunk_simple_gla) with attn_impl="triton" passes on "gpu", raises ConfigError
  on "cpu"; attn_impl="cudnn" raises everywhere (not a chunk_simple_gla implementation).
  """
  import importlib  # pylint: disable=g-import-not-at-top
  from gla_jax.layers.mixers import registry  # pylint: disable=g-import-not-at-top
  model = config.model
  impl = getattr(model, "attn_impl", "auto")  # a config without the field runs its op's "auto"
  if impl == "auto":
    return
  kind = getattr(type(model), "kind", "")
  op_name = registry.kind(kind).op.split("(")[0] if kind in registry.KINDS else ""
  what = f"{type(model).__name__}'s kind {kind!r}"
  if op_name == "dot_product_attention":
    if impl not in _ATTENTION_IMPLS:
      raise ConfigError(f"model.attn_impl={impl!r}: expected one of {', '.join(_ATTENTION_IMPLS)} "
                        f"(softmax attention, {what})")
    if impl == "cudnn" and platform != "gpu":
      raise ConfigError(f"model.attn_impl='cudnn' needs an NVIDIA GPU, this is {platform} (use auto or xla)")
    return
  if op_name not in _OPS:
    raise ConfigError(f"model.attn_impl={impl!r}: no op is known for {what}, so it cannot be checked; use auto")
  module, _, attr = _OPS[op_name].partition(":")
  op = getattr(importlib.import_module(module), attr)
  candidate = op.lookup(impl)
  if candidate is None:
    raise ConfigError(f"model.attn_impl={impl!r}: expected auto or one of {', '.join(op.available_impls())} "
                      f"(the implementations of {op.name}, the op of {what})")
  if platform not in candidate.platforms:
    raise ConfigError(f"model.attn_impl={impl!r} runs on {', '.join(sorted(candidate.platforms))}, "
                      f"not on {platform} (use auto, which picks the platform's best)")
