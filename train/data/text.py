"""Text LM data: local files → tfds array_record dataset → grain pipeline → packed [B, T] batches.

* Corpus: a sorted list of files under one root. The embedded default is this interpreter's standard-library
  sources (`*.py`, no tests, no site-packages: ~730 files, ~12 MB on CPython 3.11); its list and contents are
  hashed, and the hash names the dataset config, so two machines with different Pythons never share a build.
* Build: a `tfds.core.GeneratorBasedBuilder` writes array_record files (no TensorFlow needed) with train and
  validation splits (every `validation_every`-th file is validation; a corpus of fewer files still gets
  both: see `split_ranges`). Built once per data_dir. Only regular files are read (a FIFO would block), and
  a file over `MAX_PIECE` bytes is stored as consecutive pieces, each packed as its own document, so
  no stage holds a huge file (or a huge line) whole.
* Read: `grain.MapDataset.source(data_source)` → host shard → shuffle (reshuffled every epoch) → tokenize
  (`[EOS] doc [EOS]`, as inputs = ids[:-1], targets = ids[1:]) → `ConcatThenSplitIterDataset` packs
  documents into rows of T tokens with `segment_ids` (1, 2, … per row; 0 = padding) → batch.
  Every target lies in the same document as its input, and the model restarts its GLA state at every
  segment change, so packed documents stay independent; a document longer than a row continues in the next
  row with a fresh state.
* Resume: the grain iterator's `get_state()` (a small JSON dict) is the position; it goes into checkpoints.

tensorflow_datasets and grain are imported inside the functions: MQAR training needs neither.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import sysconfig
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from train.data.tokenizer import BPETokenizer, ByteTokenizer

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
DATASET_NAME = "local_text"
MAX_PIECE = 1 << 20  # bytes per example: a longer file is stored (and packed) as consecutive pieces
_BLOCK = 1 << 22  # read size when hashing
_WINDOW = 1 << 16  # how far back a cut looks for a line break
_PREFETCH = 64  # documents grain reads ahead: bounds the reader's memory (~64 · 4 · MAX_PIECE bytes)
Range = tuple[str, int, int]  # (relative path, start byte, end byte)


# ------------------------------------------------------------------------------------------------ corpus


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def list_files(root: str, glob: str = "**/*.py") -> list[str]:
  """Sorted relative paths under `root` matching `glob`, skipping tests, caches and installed packages."""
  import fnmatch  # pylint: disable=g-import-not-at-top
  pattern = glob[3:] if glob.startswith("**/") else glob
  out = []
  for d, dirs, files in os.walk(root):
    dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS)
    for f in files:
      rel = os.path.relpath(os.path.join(d, f), root)
      if (fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(rel, glob)) and _is_regular(os.path.join(d, f)):
        out.append(rel)
  return sorted(out)


def _is_regular(path: str) -> bool:
  """A regular file (or a link to one): a FIFO, socket or device would block or never end on read."""
  try:
    return stat.S_ISREG(os.stat(path).st_mode)
  except OSError:  # a dangling link
    return False


def corpus_hash(root: str, files: Sequence[str]) -> str:
  """sha256 over (path, length, bytes) of every file, in order; 12 hex digits. Streamed: a file is never
  held whole in memory."""
  h = hashlib.sha256()
  for rel in files:
    try:
      with open(os.path.join(root, rel), "rb") as f:
        h.update(rel.encode() + b"\0" + str(os.fstat(f.fileno()).st_size).encode() + b"\0")
        while block := f.read(_BLOCK):
          h.update(block)
    except OSError as e:
      raise ValueError(f"data.text.corpus: cannot read {os.path.join(root, rel)!r}: {e.strerror or e}") from e
  return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ splits


def split_ranges(root: str, files: Sequence[str], every: int) -> tuple[list[Range], list[Range]]:
  """(train, validation) byte ranges (rel, start, end): every `every`-th file is validation.

  A small corpus still gets both splits: with fewer than `every` files (but at least 2) the last file is
  the validation split; a single file is cut at about 1 - 1/every of its bytes (at a line break when
  one is near), so any corpus of at least one file of at least 2 bytes works.
  """
  if isinstance(every, bool) or not isinstance(every, int) or every < 2:
    raise ValueError(f"data.text.validation_every={every!r}: must be an int >= 2 (every n-th file is validation)")
  if not files:
    raise ValueError(f"data.text.corpus: no files under {root}")
  sizes = [os.path.getsize(os.path.join(root, rel)) for rel in files]
  if len(files) == 1:
    size = sizes[0]
    if size < 2:
      raise ValueError(f"data.text.corpus: the only file, {files[0]!r}, has {size} bytes; a one-file corpus is "
                       f"cut into train and validation parts and needs at least 2 bytes (or add files)")
    cut = _cut(os.path.join(root, files[0]), 1, size - max(1, size // every))
    return [(files[0], 0, cut)], [(files[0], cut, size)]
  val = {i for i in range(len(files)) if not (i + 1) % every} or {len(files) - 1}
  ranges = [(rel, 0, n) for rel, n in zip(files, sizes)]
  return [r for i, r in enumerate(ranges) if i not in val], [r for i, r in enumerate(ranges) if i in val]


def _cut(path: str, low: int, target: int) -> int:
  """A cut point in [low, target]: after the last line break in the window before `target`, else at the
  nearest UTF-8 character start at or before it (so no character is split)."""
  start = max(low, target - _WINDOW)
  with open(path, "rb") as f:
    f.seek(start)
    window = f.read(target - start + 1)
  nl = window.rfind(b"\n", 0, target - start)
  if nl >= 0:
    return start + nl + 1
  i = target - start
  while i > 0 and 0x80 <= window[i] < 0xC0:  # a continuation byte: step back to the character's start
    i -= 1
  return start + i if start + i >= low else target


def pieces(path: str, start: int, end: int, max_bytes: int) -> Iterator[tuple[int, bytes]]:
  """The bytes [start, end) of a file as (offset, bytes) pieces of at most `max_bytes`, cut at line breaks
  where one is near: a huge file (or one huge line) never sits whole in memory, at build or read time."""
  while start < end:
    stop = end if end - start <= max_bytes else _cut(path, start + 1, start + max_bytes)
    with open(path, "rb") as f:
      f.seek(start)
      yield start, f.read(stop - start)
    start = stop


def resolve_corpus(corpus: str, glob: str) -> tuple[str, list[str]]:
  root = stdlib_root() if corpus == "stdlib" else os.path.abspath(os.path.expanduser(corpus))
  if not os.path.isdir(root):
    raise ValueError(f"data.text.corpus={corpus!r}: not 'stdlib' and not a directory")
  files = list_files(root, glob)
  if not files:
    raise ValueError(f"data.text.corpus={corpus!r}: no files match data.text.glob={glob!r} under {root}")
  return root, files


# ------------------------------------------------------------------------------------------------ tfds


@functools.cache
def _builder_class():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top

  class LocalText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Text files under one root; one example per file: {"text": contents, "path": relative path}."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for checksums/metadata next to the builder's package; point it at this file directly
    # (a package found through an import hook, e.g. an editable install, is not a directory to it).
    pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      return epath.Path(os.path.abspath(__file__))

    def __init__(self, *, root: str, files: Sequence[str], validation_every: int, config_name: str, **kwargs):
      self._root, self._files, self._every = root, list(files), validation_every
      self._splits = split_ranges(root, self._files, validation_every)
      super().__init__(config=tfds.core.BuilderConfig(name=config_name), file_format="array_record", **kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
          description=f"{len(self._files)} text files under {self._root}")

    def _split_generators(self, dl_manager):
      del dl_manager
      train, val = self._splits
      return {"train": self._generate_examples(train), "validation": self._generate_examples(val)}

    def _generate_examples(self, ranges):
      for rel, start, end in ranges:
        for offset, data in pieces(os.path.join(self._root, rel), start, end, MAX_PIECE):
          key = rel if (offset, end - start) == (0, os.path.getsize(os.path.join(self._root, rel))) \
              else f"{rel}@{offset}"
          yield key, {"text": data.decode("utf-8", errors="replace"), "path": rel}

  return LocalText


def build_dataset(corpus: str, glob: str, data_dir: str, validation_every: int = 50):
  """Builds (once) and returns the tfds builder; its config name carries the corpus hash.

  `corpus="tfds:<name>"` takes a dataset from the tfds catalog instead (e.g. "tfds:lm1b"), prepared as
  array_record; that downloads its sources, so it needs the network the first time.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  if corpus.startswith("tfds:"):
    return _catalog_builder(corpus[len("tfds:"):], data_dir)
  root, files = resolve_corpus(corpus, glob)
  digest = corpus_hash(root, files)
  name = f"{'stdlib' if corpus == 'stdlib' else 'dir'}-{digest}-v{validation_every}"
  if any(os.path.getsize(os.path.join(root, rel)) > MAX_PIECE for rel in files):
    name += f"-p{MAX_PIECE}"  # stored in pieces (a corpus of smaller files keeps its earlier name and build)
  builder = _builder_class()(root=root, files=files, validation_every=validation_every, config_name=name,
                             data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  meta_path = os.path.join(builder.data_dir, "corpus.json")
  if not os.path.exists(meta_path):
    with open(meta_path, "w") as f:
      json.dump({"root": root, "glob": glob, "num_files": len(files), "sha256_12": digest, "files": files}, f)
  return builder


def _catalog_builder(name: str, data_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception as e:  # DatasetNotFoundError and friends
    first = str(e).splitlines()[0] if str(e) else ""
    raise ValueError(f"data.text.corpus='tfds:{name}': not a tfds catalog dataset ({type(e).__name__}: {first})") from e
  try:
    builder.download_and_prepare()
  except Exception as e:
    raise ValueError(f"data.text.corpus='tfds:{name}': could not download and prepare it (offline?): "
                     f"{type(e).__name__}: {str(e)[:300]}") from e
  return builder


# ------------------------------------------------------------------------------------------------ tokenizer


def make_tokenizer(kind: str, builder=None, bpe_vocab_size: int = 4096, text_key: str = "text"):
  if kind == "byte":
    return ByteTokenizer()
  if kind != "bpe":
    raise ValueError(f"data.text.tokenizer={kind!r}: expected 'byte' or 'bpe'")
  path = os.path.join(builder.data_dir, f"bpe-{bpe_vocab_size}.json")
  if os.path.exists(path):
    return BPETokenizer.load(path)
  source = builder.as_data_source()["train"]
  texts = (_as_str(source[i][text_key]) for i in range(len(source)))
  return BPETokenizer.train(texts, bpe_vocab_size, path)


def _as_str(x: Any) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


# ------------------------------------------------------------------------------------------------ grain


def document_features(text: Any, tokenizer) -> dict[str, np.ndarray]:
  """[EOS] doc [EOS] as a next-token pair: inputs = ids[:-1], targets = ids[1:]."""
  tokens = tokenizer.encode(_as_str(text))
  # one buffer, two views; uint16 where the vocabulary fits (cast to int32 per row in _to_batch_row), so a
  # prefetched document costs 2 bytes per token
  ids = np.empty(len(tokens) + 2, np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32)
  ids[0] = ids[-1] = tokenizer.eos_id
  ids[1:-1] = tokens
  return {"inputs": ids[:-1], "targets": ids[1:]}


def packed_dataset(source, tokenizer, *, seq_len: int, batch_size: int, seed: int, train: bool,
                   process_index: int = 0, process_count: int = 1, text_key: str = "text"):
  """grain IterDataset of packed batches {inputs, targets, segment_ids, mask} of shape [batch_size, T]."""
  import grain  # pylint: disable=g-import-not-at-top
  ds = grain.MapDataset.source(source)
  ds = ds[process_index::process_count]  # this host's documents
  if train:
    ds = ds.shuffle(seed=seed).repeat(None)  # a new order every epoch
  else:
    ds = ds.repeat(None)  # evaluation reads from the start each time, cycling if short
  ds = ds.map(lambda ex: document_features(ex[text_key], tokenizer))
  # grain's default read-ahead is 500 documents: of MAX_PIECE bytes each that is GBs; 64 keeps 16 threads busy
  read = grain.ReadOptions(prefetch_buffer_size=_PREFETCH)
  it = grain.experimental.ConcatThenSplitIterDataset(
      ds.to_iter_dataset(read), length_struct={"inputs": seq_len, "targets": seq_len})
  it = it.map(_to_batch_row)
  return it.batch(batch_size, drop_remainder=True)


def _to_batch_row(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  seg = row["inputs_segment_ids"].astype(np.int32)
  return {"inputs": row["inputs"].astype(np.int32), "targets": row["targets"].astype(np.int32),
          "segment_ids": seg, "mask": seg > 0}


class TextSource:
  """This host's packed batches, with the grain iterator position as its checkpointable state."""

  def __init__(self, builder, tokenizer, *, split: str, global_batch: int, seq_len: int, seed: int,
               process_index: int = 0, process_count: int = 1, text_key: str = "text"):
    if global_batch % process_count:
      raise ValueError(f"global_batch={global_batch} must be a multiple of process_count={process_count}")
    self.tokenizer = tokenizer
    source = builder.as_data_source()[split]
    if len(source) < process_count:
      raise ValueError(f"the {split!r} split has {len(source)} document(s), fewer than the {process_count} "
                       f"processes that each read their own: add files to the corpus")
    self._ds = packed_dataset(source, tokenizer, seq_len=seq_len, batch_size=global_batch // process_count,
                              seed=seed, train=split == "train", process_index=process_index,
                              process_count=process_count, text_key=text_key)
    self._it = iter(self._ds)

  def next(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict:
    return self._it.get_state()

  def set_state(self, state: dict) -> None:
    self._it.set_state(state)

  def reset(self) -> None:
    self._it = iter(self._ds)
