"""Pre-tokenized LM data: one `.npz` token file per corpus, read with numpy only (no tfds, no grain).

Make the file where tensorflow_datasets and grain are installed, from the text pipeline itself (same
documents, same split, same BPE as `data.kind=text`, train/data/text.py), then train anywhere:

    python -m train.data.tokens export --corpus stdlib --tokenizer bpe --bpe-vocab 4096 \
        --out runs/tokens/stdlib_bpe4096.npz                  # 2.9 MB for the stdlib corpus (3.45M uint16 tokens)
    python -m train.data.tokens info runs/tokens/stdlib_bpe4096.npz
    python -m train --config configs/tiny_text_gla.py --set data.kind=tokens \
        data.tokens.path=runs/tokens/stdlib_bpe4096.npz model.vocab_size=4096
    python -m train.zoology_lm --tokens runs/tokens/stdlib_bpe4096.npz --out runs/zoology_lm

File layout (`np.load(path)`, no pickles):
* `<split>` (`train`, `validation`, …): the split's documents as one flat stream `EOS d1 EOS d2 … EOS dn EOS`,
  uint16 when the vocabulary has at most 65535 tokens, else int32. Each document is the text pipeline's
  `[EOS] doc [EOS]` (`text.document_features`); neighbours share the EOS between them, so every next-token
  pair (stream[i], stream[i + 1]) is one of the text pipeline's pairs and no pair is lost or invented.
* `<split>_doc_starts` int64 [documents]: the offset of each document's leading EOS (0 first). A file
  without it gets them from the EOS id (every EOS but the last).
* `meta`: a JSON string: format, vocab_size, eos_id, tokenizer (+ bpe_vocab_size, fingerprint), corpus,
  corpus_hash, dataset (the tfds config name), glob, validation_every, per-split token/document counts;
  `tokenizer_json` (BPE): the tokenizer itself, so samples can be decoded where the file goes.

Batches (`TokenSource`): row r of step s is the window stream[p : p + T + 1] → inputs = [:-1], targets = [1:],
mask all ones (a window never leaves the stream), `segment_ids` 1, 2, … by the documents inside the window
(the model restarts its state at each one, as with the text pipeline's packing). p is a pure function of
(seed, split, step, row) (and the global batch): training reads epochs of non-overlapping windows in a
seeded random order with a random phase per epoch, so each token is seen once per epoch; evaluation reads
the windows 0, T, 2T, … in order (cycling), the same for every model. The state is the step alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from typing import Any

import numpy as np

from train.data.mqar import StepState

FORMAT = "gla-jax-tokens/1"
_TRAIN_TAG = 0x746F6B  # "tok": the seed sequence's split word for training windows
_ARG = "data.tokens.path"


# ------------------------------------------------------------------------------------------------ file


@dataclasses.dataclass(frozen=True)
class TokenFile:
  """A loaded token file: `streams[split]` [N] tokens, `starts[split]` [documents] int64, `meta` dict."""

  path: str
  meta: dict[str, Any]
  streams: dict[str, np.ndarray]
  starts: dict[str, np.ndarray]
  tokenizer_json: str | None = None

  @property
  def vocab_size(self) -> int:
    return int(self.meta["vocab_size"])

  @property
  def model_vocab_size(self) -> int:
    """The vocabulary a model for this file gets: the BPE size asked for (as a text-pipeline run uses), or
    the tokenizer's own size if larger (a small corpus can stop BPE short of the size asked for)."""
    return max(self.vocab_size, int(self.meta.get("bpe_vocab_size") or 0))

  def tokenizer(self):
    """The tokenizer that made the file (byte, or BPE when `tokenizers` is installed), else None."""
    from train.data.tokenizer import BPETokenizer, ByteTokenizer  # pylint: disable=g-import-not-at-top
    if self.meta.get("tokenizer") == "byte":
      return ByteTokenizer()
    if not self.tokenizer_json:
      return None
    try:
      from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    except ImportError:
      return None
    try:
      return BPETokenizer(Tokenizer.from_str(self.tokenizer_json))
    except Exception:  # pylint: disable=broad-except  (a damaged entry: the tokens themselves are fine)
      return None


def load(path: str, *, arg: str = _ARG) -> TokenFile:
  """Reads and checks a token file; ValueError naming `arg` (the option that gave the path) otherwise.

  Example: `tf = load("runs/tokens/stdlib_bpe4096.npz"); tf.streams["train"].shape  # (N,)`
  """
  if not path:
    raise ValueError(f"{arg} is empty: give a token file (make one with `python -m train.data.tokens export`)")
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(full):
    raise ValueError(f"{arg}={path!r}: no such file (make one with `python -m train.data.tokens export "
                     f"--corpus stdlib --tokenizer bpe --out {path}` where tensorflow_datasets and grain are installed)")
  try:
    with np.load(full, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # a zip error, a truncated file, a pickle
    raise ValueError(f"{arg}={path!r}: not a readable .npz token file ({type(e).__name__}: {e})") from e
  try:
    meta = json.loads(str(arrays.pop("meta")))
  except (KeyError, ValueError) as e:
    raise ValueError(f"{arg}={path!r}: no `meta` JSON entry: not a token file of `python -m train.data.tokens`") from e
  for key in ("vocab_size", "eos_id"):
    if not isinstance(meta.get(key), int):
      raise ValueError(f"{arg}={path!r}: meta has no integer {key!r}")
  tok_json = arrays.pop("tokenizer_json", None)
  tok_json = None if tok_json is None else str(tok_json)
  streams, starts = {}, {}
  for name in sorted(k for k in arrays if not k.endswith("_doc_starts")):
    x = arrays[name]
    if x.ndim != 1 or x.dtype not in (np.uint16, np.int32) or x.size == 0:
      raise ValueError(f"{arg}={path!r}: split {name!r} is {x.dtype}{list(x.shape)}; expected a non-empty flat "
                       f"uint16 or int32 stream")
    top, low = int(x.max()), int(x.min())
    if low < 0 or top >= meta["vocab_size"]:
      raise ValueError(f"{arg}={path!r}: split {name!r} holds token ids in [{low}, {top}], outside the "
                       f"file's vocab_size {meta['vocab_size']}")
    s = arrays.get(name + "_doc_starts")
    s = _starts_from_eos(x, meta["eos_id"]) if s is None else np.asarray(s, np.int64)
    if s.ndim != 1 or s.size == 0 or s[0] != 0 or np.any(np.diff(s) <= 0) or s[-1] >= x.size:
      raise ValueError(f"{arg}={path!r}: {name}_doc_starts must rise strictly from 0 and stay below the "
                       f"split's {x.size} tokens")
    streams[name], starts[name] = x, s
  if not streams:
    raise ValueError(f"{arg}={path!r}: holds no token split")
  return TokenFile(path=full, meta=meta, streams=streams, starts=starts, tokenizer_json=tok_json)


def _starts_from_eos(x: np.ndarray, eos: int) -> np.ndarray:
  """Every EOS but the stream's last token opens a document; a stream not opening with EOS opens one at 0."""
  s = np.flatnonzero(x[:-1] == eos).astype(np.int64)
  return s if s.size and s[0] == 0 else np.concatenate([[0], s]).astype(np.int64)


def check(tf: TokenFile, *, seq_len: int, splits: tuple[str, ...], vocab_size: int | None = None,
          arg: str = _ARG, seq_arg: str = "data.seq_len", vocab_arg: str = "model.vocab_size",
          split_arg: str = "data.tokens.eval_split") -> None:
  """ValueError when a split is missing or shorter than seq_len + 1 tokens, or the model's vocabulary is
  smaller than the file's."""
  for split in splits:
    if split not in tf.streams:
      raise ValueError(f"{arg}={tf.path!r} has splits {sorted(tf.streams)}, no {split!r} (set {split_arg})")
    n = tf.streams[split].size
    if n < seq_len + 1:
      raise ValueError(f"{seq_arg}={seq_len}: the {split!r} split of {arg}={tf.path!r} has {n} tokens, fewer "
                       f"than {seq_arg} + 1 = {seq_len + 1} (one window of inputs and shifted targets)")
  if vocab_size is not None and vocab_size < tf.vocab_size:
    raise ValueError(f"{vocab_arg}={vocab_size} is smaller than the {tf.vocab_size} tokens of {arg}={tf.path!r} "
                     f"(tokenizer {tf.meta.get('tokenizer')!r}); set {vocab_arg} >= {tf.vocab_size}")


# ------------------------------------------------------------------------------------------------ windows


def _layout(num_tokens: int, seq_len: int) -> tuple[int, int]:
  """(windows per epoch W, phases): W non-overlapping windows of T + 1 tokens at phase + i·T fit the stream
  for every phase in [0, phases)."""
  S = num_tokens - seq_len  # window starts 0 .. S-1 keep the T + 1 tokens inside the stream
  W = max(1, S // seq_len)
  return W, min(seq_len, S - (W - 1) * seq_len)


@functools.lru_cache(maxsize=8)
def _epoch_order(seed: int, epoch: int, windows: int, phases: int) -> tuple[np.ndarray, int]:
  rng = np.random.default_rng(np.random.SeedSequence([seed, _TRAIN_TAG, epoch]))
  perm = rng.permutation(windows)
  perm.setflags(write=False)
  return perm, int(rng.integers(phases))


def window_starts(index: np.ndarray, *, num_tokens: int, seq_len: int, seed: int, shuffle: bool) -> np.ndarray:
  """Start offsets [n] of the windows with global indices `index` [n] (step · global_batch + row).

  shuffle: epoch e = index // W reads W non-overlapping windows in the order of a permutation seeded by
  (seed, e), shifted by a phase drawn from the same seed; else the windows 0, T, 2T, … cycle.
  """
  W, phases = _layout(num_tokens, seq_len)
  index = np.asarray(index, np.int64)
  if not shuffle:
    return (index % W) * seq_len
  out = np.empty_like(index)
  for i, g in enumerate(index):
    perm, phase = _epoch_order(seed, int(g // W), W, phases)
    out[i] = phase + perm[g % W] * seq_len
  return out


def window_batch(stream: np.ndarray, starts: np.ndarray, begin: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  """{"inputs", "targets", "segment_ids"} int32 [n, T] and "mask" bool [n, T] of the windows at `begin` [n]."""
  idx = np.asarray(begin, np.int64)[:, None] + np.arange(seq_len + 1)  # [n, T + 1]
  x = stream[idx].astype(np.int32)
  doc = np.searchsorted(starts, idx[:, :-1], side="right") - 1  # [n, T] document of each input token
  seg = (doc - doc[:, :1] + 1).astype(np.int32)  # 1, 2, … within the row
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "mask": np.ones(seg.shape, bool), "segment_ids": seg}


class TokenSource(StepState):
  """This host's rows [process_index · b, (process_index + 1) · b) of each global batch of a token split.

  Example: `src = TokenSource(load(path), split="train", global_batch=64, seq_len=512, seed=0)`;
  `src.next()["inputs"].shape == (64, 512)`; `src.get_state() == {"step": 1}`.
  """

  def __init__(self, token_file: TokenFile, *, split: str, global_batch: int, seq_len: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1, shuffle: bool | None = None):
    if global_batch % process_count:
      raise ValueError(f"global_batch={global_batch} must be a multiple of process_count={process_count}")
    check(token_file, seq_len=seq_len, splits=(split,))
    self.split, self.seed, self.seq_len, self.global_batch = split, seed, seq_len, global_batch
    self.stream, self.doc_starts = token_file.streams[split], token_file.starts[split]
    self.shuffle = split == "train" if shuffle is None else shuffle
    self.local_batch = global_batch // process_count
    self.first_row = process_index * self.local_batch
    self.windows_per_epoch = _layout(self.stream.size, seq_len)[0]
    self.step = 0

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    index = step * self.global_batch + self.first_row + np.arange(self.local_batch)
    begin = window_starts(index, num_tokens=self.stream.size, seq_len=self.seq_len, seed=self.seed,
                          shuffle=self.shuffle)
    return window_batch(self.stream, self.doc_starts, begin, self.seq_len)



# ------------------------------------------------------------------------------------------------ export


def export(out: str, *, corpus: str = "stdlib", tokenizer: str = "bpe", bpe_vocab_size: int = 4096,
           glob: str | None = None, validation_every: int | None = None, data_dir: str | None = None,
           text_key: str | None = None) -> dict[str, Any]:
  """Writes the token file of a text-pipeline corpus (needs tensorflow_datasets and grain); returns its meta.

  The dataset and the BPE come from `text.build_dataset` / `text.make_tokenizer` in `data_dir` (default
  `<dir of out>/data`): a data_dir a text run already used gives its very BPE. Documents go in index order.
  """
  from train.config import TextConfig  # pylint: disable=g-import-not-at-top
  from train.data import text  # pylint: disable=g-import-not-at-top
  d = TextConfig()
  glob = d.glob if glob is None else glob
  every = d.validation_every if validation_every is None else validation_every
  key = d.text_key if text_key is None else text_key
  data_dir = data_dir or os.path.join(os.path.dirname(os.path.abspath(out)), "data")
  builder = text.build_dataset(corpus, glob, data_dir, every)
  tok = text.make_tokenizer(tokenizer, builder, bpe_vocab_size, key)
  dtype = np.uint16 if tok.vocab_size <= 65535 else np.int32
  arrays, splits = {}, {}
  sources = builder.as_data_source()
  for split in sorted(builder.info.splits):
    src = sources[split]
    parts, starts, n = [], [], 0
    for i in range(len(src)):
      ids = text.document_features(src[i][key], tok)["inputs"]  # [EOS] doc (its closing EOS opens the next)
      starts.append(n)
      parts.append(ids.astype(dtype))
      n += ids.size
    if not starts:
      continue  # an empty split (a catalog set's) is left out
    parts.append(np.full(1, tok.eos_id, dtype))  # the last document's closing EOS
    arrays[split] = np.concatenate(parts)
    arrays[split + "_doc_starts"] = np.asarray(starts, np.int64)
    splits[split] = {"tokens": int(arrays[split].size), "documents": len(starts)}
  corpus_json = os.path.join(builder.data_dir, "corpus.json")
  corpus_hash = None
  if os.path.exists(corpus_json):
    with open(corpus_json, encoding="utf-8") as f:
      corpus_hash = json.load(f).get("sha256_12")
  meta = {"format": FORMAT, "vocab_size": int(tok.vocab_size), "eos_id": int(tok.eos_id), "tokenizer": tok.name,
          "bpe_vocab_size": bpe_vocab_size if tok.name == "bpe" else None,
          "tokenizer_fingerprint": tok.fingerprint() if hasattr(tok, "fingerprint") else None,
          "corpus": corpus, "corpus_hash": corpus_hash, "dataset": builder.info.full_name, "glob": glob,
          "validation_every": every, "text_key": key, "dtype": np.dtype(dtype).name, "splits": splits}
  if tok.name == "bpe":
    arrays["tokenizer_json"] = np.asarray(tok._tok.to_str())  # pylint: disable=protected-access
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    np.savez_compressed(f, meta=np.asarray(json.dumps(meta)), **arrays)
  os.replace(tmp, out)
  return {**meta, "bytes": os.path.getsize(out), "path": out}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m train.data.tokens", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  e = sub.add_parser("export", help="tokenize a corpus through the text pipeline into a token file")
  e.add_argument("--corpus", default="stdlib", help="stdlib, a directory of text files, or tfds:<name>")
  e.add_argument("--tokenizer", default="bpe", choices=("bpe", "byte"))
  e.add_argument("--bpe-vocab", type=int, default=4096)
  e.add_argument("--glob", default=None, help="files of a directory corpus (default: the text pipeline's)")
  e.add_argument("--validation-every", type=int, default=None, help="every n-th file is validation (default 50)")
  e.add_argument("--data-dir", default=None, help="tfds build + BPE cache (default: <dir of --out>/data)")
  e.add_argument("--out", required=True, help="the .npz to write")
  i = sub.add_parser("info", help="print a token file's metadata")
  i.add_argument("path")
  a = p.parse_args(argv)
  try:
    if a.command == "info":
      tf = load(a.path, arg="path")
      print(json.dumps({**tf.meta, "bytes": os.path.getsize(tf.path)}, indent=1))
      return 0
    meta = export(a.out, corpus=a.corpus, tokenizer=a.tokenizer, bpe_vocab_size=a.bpe_vocab, glob=a.glob,
                  validation_every=a.validation_every, data_dir=a.data_dir)
  except ValueError as err:
    print(f"train.data.tokens: error: {err}", file=sys.stderr)
    return 2
  counts = ", ".join(f"{s} {c['tokens']:,} tokens / {c['documents']} docs" for s, c in meta["splits"].items())
  print(f"{meta['path']}: {meta['bytes'] / 1e6:.2f} MB ({meta['dtype']}, vocab {meta['vocab_size']}, corpus "
        f"{meta['corpus_hash']}); {counts}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
