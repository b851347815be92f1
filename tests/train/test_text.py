"""Text pipeline: tokenizer round trips, tfds build over local files, grain packing that keeps documents
apart (in the data and in the model), resumable iterator position."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from gla_jax.models import build_model, presets  # noqa: E402
from train.data import text  # noqa: E402
from train.data.tokenizer import BPETokenizer, ByteTokenizer  # noqa: E402

SAMPLES = ["hello", "", "naïve café — 日本語 🙂", "def f(x):\n\treturn x ** 2\n", "\x00\x7f"]


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  for s in SAMPLES:
    ids = tok.encode(s)
    assert ids.dtype == np.int32 and ids.max(initial=0) < 256
    assert tok.decode(ids) == s
  assert tok.decode(np.concatenate([[tok.eos_id], tok.encode("ab"), [tok.eos_id]])) == "ab"


def test_bpe_tokenizer_round_trip(tmp_path):
  corpus = ["def foo(bar):\n    return bar + 1\n" * 20, "import os\nprint(os.getcwd())\n" * 20, SAMPLES[2]]
  path = str(tmp_path / "bpe.json")
  tok = BPETokenizer.train(corpus, vocab_size=300, path=path)
  again = BPETokenizer.load(path)
  assert tok.vocab_size == again.vocab_size <= 300 and tok.eos_id == again.eos_id
  for s in SAMPLES + corpus:
    ids = again.encode(s)
    assert again.decode(ids) == s
  assert len(tok.encode(corpus[0])) < len(corpus[0].encode()) / 2  # it learned merges


def _write_corpus(root, n=12):
  docs = {}
  for i in range(n):
    body = f"# document {i}\n" + f"value_{i} = {i}\n" * (3 + 5 * i)  # lengths 40..800 bytes
    rel = f"pkg{i % 3}/mod_{i:02d}.py"
    os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
    with open(os.path.join(root, rel), "w") as f:
      f.write(body)
    docs[rel] = body
  with open(os.path.join(root, "notes.txt"), "w") as f:
    f.write("not a .py file")
  os.makedirs(os.path.join(root, "tests"), exist_ok=True)
  with open(os.path.join(root, "tests", "test_skip.py"), "w") as f:
    f.write("skipped dir")
  return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("corpus"))
  docs = _write_corpus(root)
  builder = text.build_dataset(root, "**/*.py", str(tmp_path_factory.mktemp("tfds")), validation_every=4)
  return root, docs, builder


def test_build_lists_splits_and_hash(corpus):
  root, docs, builder = corpus
  files = text.list_files(root)
  assert files == sorted(docs)  # .txt and tests/ skipped, sorted
  src = builder.as_data_source()
  assert len(src["train"]) == 9 and len(src["validation"]) == 3
  paths = {text._as_str(src[s][i]["path"]) for s in ("train", "validation") for i in range(len(src[s]))}
  assert paths == set(docs)
  meta = json.load(open(os.path.join(builder.data_dir, "corpus.json")))
  assert meta["sha256_12"] == text.corpus_hash(root, files) and meta["files"] == files
  assert meta["sha256_12"] in builder.builder_config.name
  with open(os.path.join(root, files[0]), "a") as f:  # a changed corpus hashes differently
    f.write("#")
  assert text.corpus_hash(root, files) != meta["sha256_12"]


def test_packing_keeps_documents_apart_and_complete(corpus):
  root, docs, builder = corpus
  tok = ByteTokenizer()
  T, B = 48, 2
  ds = text.packed_dataset(builder.as_data_source()["train"], tok, seq_len=T, batch_size=B, seed=3, train=False)
  it = iter(ds)
  pieces = []  # (inputs, targets) of each maximal same-segment run, in stream order
  for _ in range(40):
    batch = next(it)
    assert batch["inputs"].shape == (B, T) and batch["segment_ids"].dtype == np.int32
    for row in range(B):
      seg, x, y, m = (batch[k][row] for k in ("segment_ids", "inputs", "targets", "mask"))
      assert np.array_equal(m, seg > 0)
      assert seg[0] == 1 and np.all(np.diff(seg) >= 0)  # 1, 2, ... within a row
      for s in np.unique(seg[seg > 0]):
        idx = np.flatnonzero(seg == s)
        assert np.all(np.diff(idx) == 1)
        # next-token pairs never cross a document: target t is input t+1 inside the segment
        assert np.array_equal(y[idx[:-1]], x[idx[1:]])
        pieces.append((x[idx], y[idx]))
  # re-join pieces into documents ([EOS] doc [EOS]) and check each equals a source file
  stream_x = np.concatenate([p[0] for p in pieces])
  stream_y = np.concatenate([p[1] for p in pieces])
  np.testing.assert_array_equal(stream_y[:-1], stream_x[1:])  # one continuous next-token stream
  ends = np.flatnonzero(stream_y == tok.eos_id)
  starts = np.concatenate([[0], ends[:-1] + 1])
  seen = [tok.decode(stream_y[s:e]) for s, e in zip(starts, ends)]
  train_docs = {d for rel, d in docs.items() if rel in {text._as_str(e["path"]) for e in builder.as_data_source()["train"]}}
  assert set(seen[:9]) == train_docs  # the first epoch holds each train document exactly once
  assert all(stream_x[s] == tok.eos_id for s in starts)  # every document starts from EOS


def test_iterator_state_resumes_exactly(corpus):
  _, _, builder = corpus
  src = text.TextSource(builder, ByteTokenizer(), split="train", global_batch=2, seq_len=32, seed=0)
  for _ in range(5):
    src.next()
  state = json.loads(json.dumps(src.get_state()))
  expected = [src.next() for _ in range(4)]
  other = text.TextSource(builder, ByteTokenizer(), split="train", global_batch=2, seq_len=32, seed=0)
  other.set_state(state)
  for e in expected:
    got = other.next()
    assert all(np.array_equal(got[k], e[k]) for k in e)


def test_host_shards_read_disjoint_documents(corpus):
  _, _, builder = corpus
  tok = ByteTokenizer()
  seen = []
  for pid in range(2):
    src = text.TextSource(builder, tok, split="validation", global_batch=2, seq_len=32, seed=0,
                          process_index=pid, process_count=2)
    b = src.next()
    seen.append(tok.decode(b["inputs"][0]))
  assert seen[0] != seen[1]


def test_packed_documents_are_independent_in_the_model(corpus):
  """Changing document 1 of a packed row leaves the logits of document 2 unchanged (segment_ids reach GLA)."""
  cfg = presets.gla_tiny(vocab_size=320, hidden_size=32, num_heads=2, num_hidden_layers=1)
  with nnx.use_eager_sharding(False):
    model = build_model(cfg, rngs=nnx.Rngs(0))
  x = jax.random.randint(jax.random.key(0), (1, 40), 0, 256)
  seg = jnp.concatenate([jnp.ones((1, 17), jnp.int32), 2 * jnp.ones((1, 23), jnp.int32)], axis=1)
  x2 = x.at[:, :17].set((x[:, :17] + 7) % 256)
  a, b = model(x, segment_ids=seg), model(x2, segment_ids=seg)
  np.testing.assert_allclose(b[:, 17:], a[:, 17:], rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(b[:, :17] - a[:, :17]).max()) > 1e-3
  c, d = model(x), model(x2)  # without segment_ids the second document sees the first
  assert float(jnp.abs(d[:, 17:] - c[:, 17:]).max()) > 1e-4


def test_unknown_catalog_dataset_is_a_clear_error(tmp_path):
  from train.config import ConfigError
  from train.data import make_sources
  from tests.train.common import tiny_config
  config = tiny_config(tmp_path, "data.kind=text", "data.text.corpus=tfds:no_such_dataset_xyz",
                       f"data.text.data_dir={tmp_path}", "model.vocab_size=320")
  with pytest.raises(ConfigError, match="'tfds:no_such_dataset_xyz': not a tfds catalog dataset"):
    make_sources(config)
