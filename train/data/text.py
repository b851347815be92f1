"""Text LM data: local files → tfds array_record dataset → grain pipeline → packed [B, T] batches.

* Corpus: a sorted list of files under one root. The embedded default is this interpreter's standard-library
  sources (`*.py`, no tests, no site-packages: ~730 files, ~12 MB on CPython 3.11); its list and contents are
  hashed, and the hash names the dataset config, so two machines with different Pythons never share a build.
* Build: a `tfds.core.GeneratorBasedBuilder` writes array_record files (no TensorFlow needed) with train and
  validation splits (every `validation_every`-th file is validation). Built once per data_dir.
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
import sysconfig
from collections.abc import Sequence
from typing import Any

import numpy as np

from train.data.tokenizer import BPETokenizer, ByteTokenizer

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
DATASET_NAME = "local_text"


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
      if fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(rel, glob):
        out.append(rel)
  return sorted(out)


def corpus_hash(root: str, files: Sequence[str]) -> str:
  """sha256 over (path, length, bytes) of every file, in order; 12 hex digits."""
  h = hashlib.sha256()
  for rel in files:
    with open(os.path.join(root, rel), "rb") as f:
      data = f.read()
    h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
  return h.hexdigest()[:12]


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
      super().__init__(config=tfds.core.BuilderConfig(name=config_name), file_format="array_record", **kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
          description=f"{len(self._files)} text files under {self._root}")

    def _split_generators(self, dl_manager):
      del dl_manager
      train = [f for i, f in enumerate(self._files) if (i + 1) % self._every]
      val = [f for i, f in enumerate(self._files) if not (i + 1) % self._every]
      return {"train": self._generate_examples(train), "validation": self._generate_examples(val)}

    def _generate_examples(self, files):
      for rel in files:
        with open(os.path.join(self._root, rel), "rb") as f:
          text = f.read().decode("utf-8", errors="replace")
        yield rel, {"text": text, "path": rel}

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
  ids = tokenizer.encode(_as_str(text))
  eos = np.array([tokenizer.eos_id], np.int32)
  ids = np.concatenate([eos, ids, eos])
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
  it = grain.experimental.ConcatThenSplitIterDataset(
      ds.to_iter_dataset(), length_struct={"inputs": seq_len, "targets": seq_len})
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
