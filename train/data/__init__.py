"""Data sources for the trainer: MQAR and random tokens (pure numpy), a pre-tokenized token file (numpy;
train/data/tokens.py) or packed text (tfds + grain, lazy).

Every source yields this host's rows of the global batch as numpy arrays
{"inputs", "targets" int32 [b, T], "mask" bool [b, T], optional "segment_ids" int32 [b, T]} through `next()`,
and exposes `get_state()` / `set_state()` (a JSON-able dict) and `reset()` (back to the first batch).
"""

from __future__ import annotations

import os
from typing import Any

from train.config import ConfigError, TrainConfig
from train.data.mqar import StepIndexedSource


def make_sources(config: TrainConfig, *, process_index: int = 0, process_count: int = 1) -> tuple[Any, Any, Any]:
  """(train_source, eval_source, tokenizer or None) for the config's data kind."""
  d = config.data
  vocab = config.model.vocab_size
  if d.kind in ("mqar", "synthetic"):
    kw = dict(global_batch=d.batch_size, seq_len=d.seq_len, vocab_size=vocab, seed=d.seed,
              process_index=process_index, process_count=process_count)
    if d.kind == "mqar":
      kw.update(num_kv_pairs=d.mqar.num_kv_pairs, power_a=d.mqar.power_a, random_filler=d.mqar.random_filler)
    return (StepIndexedSource(d.kind, split="train", **kw), StepIndexedSource(d.kind, split="eval", **kw), None)
  if d.kind == "tokens":
    return _token_sources(config, process_index, process_count)
  if d.kind != "text":
    raise ConfigError(f"data.kind={d.kind!r}: expected mqar, synthetic, tokens or text")
  try:
    from train.data import text  # pylint: disable=g-import-not-at-top
    builder = text.build_dataset(d.text.corpus, d.text.glob, data_dir(config), d.text.validation_every)
  except ImportError as e:
    raise ConfigError(f"data.kind=text needs tensorflow-datasets, grain and array-record ({e}); "
                      f"MQAR and synthetic data need none of them") from e
  except ValueError as e:
    raise ConfigError(str(e)) from e
  tokenizer = text.make_tokenizer(d.text.tokenizer, builder, d.text.bpe_vocab_size, d.text.text_key)
  if tokenizer.vocab_size > vocab:
    raise ConfigError(f"model.vocab_size={vocab} is smaller than the {d.text.tokenizer} tokenizer's "
                      f"{tokenizer.vocab_size} tokens")
  splits = list(builder.info.splits)
  for split in ("train", d.text.eval_split):
    if split not in splits:
      raise ConfigError(f"data.text.corpus={d.text.corpus!r} has splits {splits}, no {split!r} "
                        f"(set data.text.eval_split)")
  kw = dict(global_batch=d.batch_size, seq_len=d.seq_len, seed=d.text.shuffle_seed, text_key=d.text.text_key,
            process_index=process_index, process_count=process_count)
  try:
    return (text.TextSource(builder, tokenizer, split="train", **kw),
            text.TextSource(builder, tokenizer, split=d.text.eval_split, **kw), tokenizer)
  except ValueError as e:
    raise ConfigError(f"data.text.corpus={d.text.corpus!r}: {e}") from e


def _token_sources(config: TrainConfig, process_index: int, process_count: int) -> tuple[Any, Any, Any]:
  from train.data import tokens  # pylint: disable=g-import-not-at-top
  d = config.data
  try:
    tf = tokens.load(d.tokens.path)
    tokens.check(tf, seq_len=d.seq_len, splits=("train", d.tokens.eval_split), vocab_size=config.model.vocab_size)
    kw = dict(global_batch=d.batch_size, seq_len=d.seq_len, seed=d.seed, process_index=process_index,
              process_count=process_count)
    return (tokens.TokenSource(tf, split="train", **kw), tokens.TokenSource(tf, split=d.tokens.eval_split, **kw),
            tf.tokenizer())
  except ValueError as e:
    raise ConfigError(str(e)) from e


def data_dir(config: TrainConfig) -> str:
  if config.data.text.data_dir:
    return os.path.expanduser(config.data.text.data_dir)
  return os.path.join(os.path.dirname(os.path.abspath(config.run_dir)), "data")
