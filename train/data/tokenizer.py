"""Tokenizers for the text LM: byte-level (nothing to download) or a byte-level BPE trained locally.

Both reserve one end-of-sequence token, `eos_id`, which the packer puts at both ends of every document.
`decode(encode(s)) == s` for every str (BPE: byte-level pre-tokenizer and decoder, no normalisation).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import numpy as np

EOS = "<|eos|>"


class ByteTokenizer:
  """UTF-8 bytes 0..255 are the tokens; 256 is EOS. vocab_size = 257."""

  name = "byte"
  eos_id = 256
  vocab_size = 257

  def encode(self, text: str | bytes) -> np.ndarray:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, np.uint8).astype(np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    return bytes(ids[ids < 256].astype(np.uint8)).decode("utf-8", errors="replace")


class BPETokenizer:
  """A byte-level BPE (HuggingFace `tokenizers`) trained on the train split and cached as JSON."""

  name = "bpe"

  def __init__(self, tokenizer):
    self._tok = tokenizer
    self.eos_id = tokenizer.token_to_id(EOS)
    self.vocab_size = tokenizer.get_vocab_size()

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, path: str | None = None) -> BPETokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if path:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      tmp = path + ".tmp"
      tok.save(tmp)
      os.replace(tmp, path)
    return cls(tok)

  @classmethod
  def load(cls, path: str) -> BPETokenizer:
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    return cls(Tokenizer.from_file(path))

  def encode(self, text: str | bytes) -> np.ndarray:
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    return np.asarray(self._tok.encode(text).ids, np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids if int(i) != self.eos_id]
    return self._tok.decode(ids, skip_special_tokens=False)

  def fingerprint(self) -> str:
    return hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:12]
