"""Token-file data (train/data/tokens.py): windows as pure functions of (seed, step, row), document
boundaries as segment_ids, fixed validation windows, clear errors, the trainer and zoology_lm on a token
file; the exporter (tfds + grain) round-trips the text pipeline's tokens."""

import json
import os

import jax
import numpy as np
import pytest

from tests.train.common import tiny_config
from train.config import ConfigError
from train.data import make_sources, tokens

EOS, VOCAB = 63, 64


def _write_token_file(path, *, docs_per_split=(40, 6), seed=0, vocab=VOCAB, **extra_meta):
  """A hand-made token file: random documents over [0, EOS) as `EOS d1 EOS d2 … EOS`; returns the documents."""
  rng = np.random.default_rng(seed)
  arrays, docs = {}, {}
  for split, n in zip(("train", "validation"), docs_per_split):
    docs[split] = [rng.integers(0, EOS, size=rng.integers(3, 40)) for _ in range(n)]
    stream = np.concatenate([np.concatenate([[EOS], d]) for d in docs[split]] + [[EOS]]).astype(np.uint16)
    arrays[split] = stream
    arrays[split + "_doc_starts"] = np.cumsum([0] + [len(d) + 1 for d in docs[split][:-1]]).astype(np.int64)
  meta = {"format": tokens.FORMAT, "vocab_size": vocab, "eos_id": EOS, "tokenizer": "synthetic", **extra_meta}
  np.savez(path, meta=np.asarray(json.dumps(meta)), **arrays)
  return docs


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "synthetic.npz")
  docs = _write_token_file(path)
  return path, docs


def test_windows_are_pure_functions_of_seed_step_row(token_file):
  path, _ = token_file
  tf = tokens.load(path)
  kw = dict(split="train", global_batch=8, seq_len=16, seed=3)
  a, b = tokens.TokenSource(tf, **kw), tokens.TokenSource(tokens.load(path), **kw)
  for step in (0, 5, 40):  # 40 · 8 windows: past the first epoch (~55 windows)
    x, y = a.batch_at(step), b.batch_at(step)
    assert all(np.array_equal(x[k], y[k]) for k in x)
    assert x["inputs"].shape == (8, 16) and x["inputs"].dtype == np.int32 and x["mask"].all()
    np.testing.assert_array_equal(x["targets"][:, :-1], x["inputs"][:, 1:])  # one window, shifted
    assert len({r.tobytes() for r in x["inputs"]}) == 8  # different rows differ
  other = tokens.TokenSource(tf, **{**kw, "seed": 4}).batch_at(0)
  assert not np.array_equal(other["inputs"], a.batch_at(0)["inputs"])
  halves = [tokens.TokenSource(tf, **kw, process_index=i, process_count=2).batch_at(7) for i in range(2)]
  full = a.batch_at(7)
  for k in full:  # the hosts' rows make up the global batch
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), full[k])
  for _ in range(3):  # resume from the state (the step) gives the same batches
    a.next()
  state = json.loads(json.dumps(a.get_state()))
  expected = [a.next() for _ in range(2)]
  b.set_state(state)
  resumed = [b.next() for _ in range(2)]
  assert state == {"step": 3} and all(np.array_equal(r[k], e[k]) for r, e in zip(resumed, expected) for k in e)
  # an epoch reads W non-overlapping windows at one phase: every token once
  n, T = tf.streams["train"].size, 16
  W, _ = tokens._layout(n, T)
  starts = tokens.window_starts(np.arange(W), num_tokens=n, seq_len=T, seed=3, shuffle=True)
  assert len(set(starts % T)) == 1 and len(set(starts)) == W and starts.min() >= 0 and starts.max() + T < n


def test_segment_ids_restart_at_documents(token_file):
  path, _ = token_file
  stream = np.array([EOS, 1, 2, EOS, 3, EOS, 4, 5, 6, EOS], np.uint16)  # documents at 0, 3, 5
  b = tokens.window_batch(stream, np.array([0, 3, 5]), np.array([2, 0]), 5)
  np.testing.assert_array_equal(b["inputs"], [[2, EOS, 3, EOS, 4], [EOS, 1, 2, EOS, 3]])
  np.testing.assert_array_equal(b["targets"], [[EOS, 3, EOS, 4, 5], [1, 2, EOS, 3, EOS]])
  np.testing.assert_array_equal(b["segment_ids"], [[1, 2, 2, 3, 3], [1, 1, 1, 2, 2]])
  tf = tokens.load(path)
  batch = tokens.TokenSource(tf, split="train", global_batch=8, seq_len=32, seed=0).batch_at(2)
  for seg, x, y in zip(batch["segment_ids"], batch["inputs"], batch["targets"]):
    assert seg[0] == 1 and set(np.diff(seg)) <= {0, 1}
    change = np.flatnonzero(np.diff(seg)) + 1
    assert np.all(x[change] == EOS) and np.all(y[change - 1] == EOS)  # a document ends, the next starts
    inside = np.flatnonzero(np.diff(seg) == 0)
    assert not np.any(x[inside + 1] == EOS)  # no document start without a new segment


def test_validation_windows_are_fixed(token_file):
  path, _ = token_file
  tf = tokens.load(path)
  n, T = tf.streams["validation"].size, 8
  srcs = [tokens.TokenSource(tf, split="validation", global_batch=4, seq_len=T, seed=s) for s in (0, 9)]
  first = [s.next() for s in srcs]
  assert all(np.array_equal(first[0][k], first[1][k]) for k in first[0])  # no seed in evaluation
  np.testing.assert_array_equal(first[0]["inputs"], tf.streams["validation"][np.arange(4)[:, None] * T
                                                                             + np.arange(T)])
  srcs[0].reset()
  assert np.array_equal(srcs[0].next()["inputs"], first[0]["inputs"])
  W, _ = tokens._layout(n, T)
  later = tokens.window_starts(np.arange(W, W + 4), num_tokens=n, seq_len=T, seed=0, shuffle=False)
  np.testing.assert_array_equal(later, np.arange(4) * T)  # cycles from the start


def test_errors_name_the_argument(token_file, tmp_path):
  path, _ = token_file
  with pytest.raises(ValueError, match=r"data.tokens.path='.*nope.npz': no such file"):
    tokens.load(str(tmp_path / "nope.npz"))
  with pytest.raises(ValueError, match="data.tokens.path is empty"):
    tokens.load("")
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a readable .npz"):
    tokens.load(str(tmp_path / "bad.npz"))
  tf = tokens.load(path)
  with pytest.raises(ValueError, match=r"model.vocab_size=32 is smaller than the 64 tokens"):
    tokens.check(tf, seq_len=8, splits=("train",), vocab_size=32)
  n = tf.streams["validation"].size
  with pytest.raises(ValueError, match=rf"data.seq_len={n}: the 'validation' split .* has {n} tokens"):
    tokens.check(tf, seq_len=n, splits=("train", "validation"))
  tokens.check(tf, seq_len=n - 1, splits=("train", "validation"))  # exactly seq_len + 1 tokens is enough
  with pytest.raises(ConfigError, match="no 'test' .*set data.tokens.eval_split"):
    make_sources(tiny_config(tmp_path, "data.kind=tokens", f"data.tokens.path={path}", "data.tokens.eval_split=test"))
  with pytest.raises(ConfigError, match="model.vocab_size=32 is smaller"):
    make_sources(tiny_config(tmp_path, "data.kind=tokens", f"data.tokens.path={path}", "model.vocab_size=32"))
  with pytest.raises(ConfigError, match="data.tokens.path is empty"):
    make_sources(tiny_config(tmp_path, "data.kind=tokens"))
  _write_token_file(str(tmp_path / "big.npz"), vocab=40)  # ids up to 63 in a file that claims 40
  with pytest.raises(ValueError, match=r"token ids in \[\d+, 63\], outside the file's vocab_size 40"):
    tokens.load(str(tmp_path / "big.npz"))
  from train import zoology_lm
  with pytest.raises(SystemExit, match="--tokens='.*nope.npz': no such file"):
    zoology_lm.main(["--tokens", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "lm")])


def test_trainer_and_zoology_lm_on_a_token_file(token_file, tmp_path):
  from train import zoology_lm
  from train.trainer import Trainer
  path, _ = token_file
  config = tiny_config(tmp_path / "run", "data.kind=tokens", f"data.tokens.path={path}", "steps=2")
  trainer = Trainer(config, devices=jax.devices()[:1])
  try:
    summary = trainer.run()
  finally:
    trainer.close()
  assert len(summary["losses"]) == 2 and np.all(np.isfinite(summary["losses"]))
  assert np.isfinite(summary["final_eval"]["loss"]) and trainer.train_src.get_state() == {"step": 2}

  out = str(tmp_path / "lm")
  args = ["--kinds", "gla", "--steps", "2", "--out", out, "--target-params", "120000", "--width", "64",
          "--seq-len", "32", "--batch-size", "8", "--eval-every", "0", "--eval-batches", "1", "--log-every", "1",
          "--quiet", "--tokens", path]
  result = zoology_lm.main(args)
  (row,) = result["rows"]
  assert row["name"] == "gla" and row["complete"] and np.isfinite(row["eval_perplexity"])
  assert "token file `synthetic.npz`" in row["data"]
  os.remove(result["table"])
  again = zoology_lm.main(["--report-only", "--kinds", "gla,attention", "--out", out])
  table = open(again["table"]).read()
  assert "| GLA |" in table and "Data: token file `synthetic.npz`" in table
  assert again["missing"] == {"attention": "not run"} and not again["failed"]


def test_export_round_trips_the_text_pipeline(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("grain")
  from train.data import text
  corpus = tmp_path / "corpus"
  for i in range(8):
    (corpus / f"pkg{i % 2}").mkdir(parents=True, exist_ok=True)
    (corpus / f"pkg{i % 2}" / f"m{i}.py").write_text(f"def f_{i}(x):\n    return x * {i} + 'é'\n" * (4 + 3 * i))
  out, data_dir = str(tmp_path / "tok" / "c.npz"), str(tmp_path / "data")
  meta = tokens.export(out, corpus=str(corpus), tokenizer="bpe", bpe_vocab_size=300, validation_every=4,
                       data_dir=data_dir)
  tf = tokens.load(out)
  builder = text.build_dataset(str(corpus), "**/*.py", data_dir, 4)  # the text pipeline's build and BPE
  tok = text.make_tokenizer("bpe", builder, 300)
  assert tf.meta["vocab_size"] == tok.vocab_size and tf.meta["eos_id"] == tok.eos_id and meta["bytes"] > 0
  assert tf.meta["tokenizer_fingerprint"] == tok.fingerprint() and tf.streams["train"].dtype == np.uint16
  assert tf.meta["corpus_hash"] == text.corpus_hash(str(corpus), text.list_files(str(corpus)))
  decoder = tf.tokenizer()
  for split, count in (("train", 6), ("validation", 2)):
    source = builder.as_data_source()[split]
    assert len(source) == count == len(tf.starts[split])
    docs = [text.document_features(source[i]["text"], tok) for i in range(len(source))]
    expected = np.concatenate([d["inputs"] for d in docs] + [[tok.eos_id]])  # EOS d1 EOS d2 … EOS
    np.testing.assert_array_equal(tf.streams[split], expected)
    np.testing.assert_array_equal(tf.starts[split], np.cumsum([0] + [d["inputs"].size for d in docs[:-1]]))
    bounds = list(tf.starts[split]) + [tf.streams[split].size]
    texts = {decoder.decode(tf.streams[split][s:e]) for s, e in zip(bounds[:-1], bounds[1:])}
    files = {text._as_str(source[i]["path"]) for i in range(len(source))}
    assert texts == {(corpus / rel).read_text() for rel in files}
