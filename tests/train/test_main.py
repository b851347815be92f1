"""The command line end to end on a tiny text run: progress, logs, checkpoint, curve, final eval, resume."""

import json
import os

import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from train.main import main  # noqa: E402

from tests.train.test_text import _write_corpus  # noqa: E402


def test_cli_trains_text_saves_and_resumes(tmp_path, capsys):
  corpus = tmp_path / "corpus"
  _write_corpus(str(corpus))
  args = ["--config", "configs/tiny_text_gla.py", "--workdir", str(tmp_path / "run"), "--set",
          "model.hidden_size=32", "model.num_hidden_layers=1", "data.batch_size=8", "data.seq_len=32", "steps=4",
          "eval_every=2", "eval_batches=1", "log_every=2", "checkpoint.every=2", "mesh.data=-1",
          f"data.text.corpus={corpus}", "data.text.validation_every=4", f"data.text.data_dir={tmp_path / 'data'}"]
  assert main(args) == 0
  out = capsys.readouterr()
  assert "tiny_text_gla: GLAConfig" in out.out and "mesh data=8 fsdp=1 tensor=1" in out.out
  assert "final eval (step 4" in out.out and "next-token accuracy" in out.out
  assert "4/4" in out.err  # the progress bar reached the end
  run = tmp_path / "run"
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
  rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
  train_rows = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train_rows] == [2, 4] and all(r["tokens_per_s"] > 0 for r in train_rows)
  assert [r["step"] for r in rows if r["split"] == "eval"] == [2, 4]
  assert os.path.getsize(run / "curves.png") > 1000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(run / "tb"))

  # the same command again resumes at step 4: nothing left to train, the eval is repeated
  assert main(args + ["progress=false"]) == 0
  again = capsys.readouterr().out
  assert "resumed from the checkpoint at step 4" in again and "final eval (step 4" in again
  assert again.split("final eval")[1].split("[")[0] == out.out.split("final eval")[1].split("[")[0]
