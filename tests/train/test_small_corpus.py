"""Issue 13 item 6: a directory corpus of any size works (1 file and up, fewer files than validation_every),
special files are skipped instead of blocking the build, and a huge single line is read in bounded memory."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from train.config import ConfigError  # noqa: E402
from train.data import make_sources, text  # noqa: E402
from train.data.tokenizer import ByteTokenizer  # noqa: E402

from tests.train.common import tiny_config  # noqa: E402


def _write(root, files: dict[str, str]):
  for rel, body in files.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "w") as f:
      f.write(body)


def _texts(builder, split) -> list[str]:
  src = builder.as_data_source()[split]
  return [text._as_str(src[i]["text"]) for i in range(len(src))]


@pytest.mark.parametrize("n", [1, 2, 7])
def test_corpus_smaller_than_validation_every_builds_both_splits(tmp_path, n):
  files = {f"m{i}.py": f"# file {i}\n" + f"v{i} = {i}\n" * (20 + i) for i in range(n)}
  _write(tmp_path / "c", files)
  builder = text.build_dataset(str(tmp_path / "c"), "**/*.py", str(tmp_path / "tfds"), validation_every=50)
  train, val = _texts(builder, "train"), _texts(builder, "validation")
  assert train and val
  if n == 1:  # one file: cut at a line break into a train head and a validation tail
    assert train[0] + val[0] == files["m0.py"] and val[0].startswith("v0 = 0") and len(val[0]) < len(train[0])
  else:  # the last file is the validation split, the rest train
    assert val == [files[f"m{n - 1}.py"]] and sorted(train) == sorted(files[f"m{i}.py"] for i in range(n - 1))


def test_one_file_corpus_trains_through_make_sources(tmp_path):
  _write(tmp_path / "c", {"only.py": "print('hello world')\n" * 30})
  config = tiny_config(tmp_path / "run", "data.kind=text", f"data.text.corpus={tmp_path / 'c'}",
                       f"data.text.data_dir={tmp_path / 'tfds'}", "model.vocab_size=320")
  train, ev, tok = make_sources(config)
  for src in (train, ev):
    batch = src.next()
    assert batch["inputs"].shape == (8, 32) and batch["inputs"].dtype == np.int32 and batch["mask"].any()
  assert "hello" in tok.decode(train.next()["inputs"].ravel())


def test_too_small_corpora_say_what_is_needed(tmp_path):
  _write(tmp_path / "c", {"a.py": "x"})
  config = tiny_config(tmp_path / "run", "data.kind=text", f"data.text.corpus={tmp_path / 'c'}",
                       f"data.text.data_dir={tmp_path / 'tfds'}", "model.vocab_size=320")
  with pytest.raises(ConfigError, match="has 1 bytes; a one-file corpus .* needs at least 2 bytes"):
    make_sources(config)
  with pytest.raises(ValueError, match="validation_every=0: must be an int >= 2"):
    text.split_ranges(str(tmp_path / "c"), ["a.py"], 0)
  _write(tmp_path / "d", {"a.py": "x = 1\n", "b.py": "y = 2\n"})
  config = tiny_config(tmp_path / "run", "data.kind=text", f"data.text.corpus={tmp_path / 'd'}",
                       f"data.text.data_dir={tmp_path / 'tfds'}", "model.vocab_size=320")
  with pytest.raises(ConfigError, match="'train' split has 1 document.*fewer than the 2 processes"):
    make_sources(config, process_index=0, process_count=2)


def test_fifo_and_dangling_link_are_skipped_not_read(tmp_path):
  root = tmp_path / "c"
  _write(root, {"a.py": "a = 1\n" * 10, "b.py": "b = 2\n" * 10})
  os.mkfifo(root / "pipe.py")  # opening it for reading would block forever
  os.symlink(root / "missing.py", root / "dangling.py")
  os.symlink(root / "a.py", root / "link.py")  # a link to a regular file is a file
  assert text.list_files(str(root)) == ["a.py", "b.py", "link.py"]

  def _hung(*_):
    raise TimeoutError("the build blocked on a special file")

  old = signal.signal(signal.SIGALRM, _hung)
  signal.alarm(120)
  try:
    builder = text.build_dataset(str(root), "**/*.py", str(tmp_path / "tfds"), validation_every=50)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
  assert len(_texts(builder, "train")) == 2 and len(_texts(builder, "validation")) == 1


def test_huge_file_is_stored_in_bounded_pieces(tmp_path, monkeypatch):
  monkeypatch.setattr(text, "MAX_PIECE", 1000)
  body = "é" * 1700 + "\n" + "z" * 2500  # a multi-byte line, then a line with no break in reach
  _write(tmp_path / "c", {"big.py": body, "small.py": "s = 1\n"})
  builder = text.build_dataset(str(tmp_path / "c"), "**/*.py", str(tmp_path / "tfds"), validation_every=50)
  assert builder.builder_config.name.endswith("-p1000")
  src = builder.as_data_source()["train"]
  parts = [text._as_str(src[i]["text"]) for i in range(len(src))]
  assert all(len(p.encode()) <= 1000 for p in parts) and len(parts) >= 6
  paths = [text._as_str(src[i]["path"]) for i in range(len(src))]
  assert set(paths) == {"big.py"}
  # cut at the line break, else at a character start: reassembled in order the pieces are the file
  cut = [d.decode() for _, d in text.pieces(str(tmp_path / "c" / "big.py"), 0, len(body.encode()), 1000)]
  assert "".join(cut) == body and sorted(cut) == sorted(parts) and cut[3] == "é" * 200 + "\n"
  feats = text.document_features(parts[0], ByteTokenizer())
  assert feats["inputs"].dtype == np.uint16 and np.shares_memory(feats["inputs"], feats["targets"])


_MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    from train.data import text
    from train.data.tokenizer import ByteTokenizer
    root, data, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(root + "/one.py", "w") as f:
      f.write("x" * size)  # one line, no break anywhere
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    builder = text.build_dataset(root, "**/*.py", data, validation_every=50)
    src = text.TextSource(builder, ByteTokenizer(), split="train", global_batch=2, seq_len=64, seed=0)
    for _ in range(300):
      src.next()
    import time; time.sleep(2)  # let grain's read-ahead fill up
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("GROWTH", (after - before) / size)
    """)


def test_single_huge_line_reads_in_bounded_memory(tmp_path):
  """A 64 MB one-line file: the peak RSS grows by under 5x the corpus (2.5x measured; before: > 100x, from
  int32 tokens of whole-file documents times grain's 500-document read-ahead)."""
  os.makedirs(tmp_path / "c")
  size = 64 << 20
  out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path / "c"), str(tmp_path / "tfds"), str(size)],
                       capture_output=True, text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(
                           os.path.dirname(os.path.abspath(__file__)))))
  assert out.returncode == 0, out.stderr[-2000:]
  growth = float(out.stdout.split("GROWTH")[1])
  assert growth < 5, growth
