"""Checkpoint faults (issue 13): a failed background save, corrupted or mismatched checkpoints, all-rejected
steps, resume bookkeeping. The hang and the corruption run the real CLI in a subprocess (tiny MQAR config)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from train.checkpoint import CheckpointError, Checkpointer, CorruptCheckpointError
from train.config import ConfigError
from train.trainer import Trainer, TrainingError, _truncate_metrics

from tests.train.common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config", "mqar_gla", "--quiet", "--set", "data.batch_size=8", "data.seq_len=32",
        "data.mqar.num_kv_pairs=4", "model.hidden_size=32", "model.num_hidden_layers=1", "model.vocab_size=64",
        "model.use_short_conv=false", "eval_every=0", "eval_batches=1", "log_every=2", "mesh.data=1",
        "checkpoint.keep=3", "plot=false", "tensorboard=false"]

# runs the CLI as the program (argv from sys.argv); FAIL_STEP makes that step's background save fail the way
# a read-only mount does (EROFS while orbax creates the step's tmp directory, in its commit thread)
RUNNER = textwrap.dedent("""
  import errno, os, sys
  fail = os.environ.get("FAIL_STEP")
  if fail:
    from orbax.checkpoint._src.path import atomicity
    real = atomicity._create_tmp_directory
    async def broken(makedir, tmp_dir, *a, **k):
      if os.path.basename(str(tmp_dir)).startswith(fail + "."):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_dir))
      return await real(makedir, tmp_dir, *a, **k)
    atomicity._create_tmp_directory = broken
  from train.main import main
  sys.argv = ["gla-train"] + sys.argv[1:]
  sys.exit(main())
""")


def _cli(workdir, *sets, fail_step=None, timeout=120):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  env.pop("FAIL_STEP", None)
  if fail_step is not None:
    env["FAIL_STEP"] = str(fail_step)
  return subprocess.run([sys.executable, "-c", RUNNER, "--workdir", str(workdir), *TINY, *sets], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith("gla-train:")]


# ------------------------------------------------------------------------------------------------ item 1


def test_failed_background_save_stops_promptly_with_one_line(tmp_path):
  """Used to log a traceback at the next save and then hang forever on orbax's signalling threads."""
  proc = _cli(tmp_path, "steps=24", "checkpoint.every=6", fail_step=6, timeout=150)
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = _error_lines(proc.stderr)
  assert len(lines) == 1 and "step 6" in lines[0] and str(tmp_path / "checkpoints") in lines[0], lines
  assert "Read-only file system" in lines[0]
  assert "Traceback" not in proc.stderr
  steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")]
  assert max(steps) < 12  # stopped right after the failure, not at the next save


def test_unusable_checkpoint_directory_is_one_error(tmp_path):
  path = tmp_path / "not_a_dir"
  path.write_text("x")
  with pytest.raises(CheckpointError, match="not_a_dir"):
    Checkpointer(str(path))


# ------------------------------------------------------------------------------------------------ items 2, 3


def _largest_data_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
           if os.sep + "d" + os.sep in os.path.join(d, f)]
  return max(files, key=os.path.getsize)


def test_corrupted_newest_checkpoint_is_detected_and_skipped(tmp_path):
  """XOR of 64 bytes in the newest step's array data used to restore silently (NaN loss, exit 0)."""
  assert _cli(tmp_path, "steps=4", "checkpoint.every=2").returncode == 0
  path = _largest_data_file(tmp_path / "checkpoints" / "4")
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0x5A for b in data[len(data) // 2:len(data) // 2 + 64])
  open(path, "wb").write(bytes(data))
  proc = _cli(tmp_path, "steps=6", "checkpoint.every=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from the checkpoint at step 2" in proc.stdout
  assert "checkpoints/4 is corrupt" in proc.stderr and "checksum" in proc.stderr
  assert os.path.isdir(tmp_path / "checkpoints" / "4.corrupt")
  assert "loss nan" not in proc.stdout and "non-finite" not in proc.stdout


def _train(workdir, *sets, steps=4, every=2):
  trainer = Trainer(tiny_config(workdir, f"steps={steps}", f"checkpoint.every={every}", *sets),
                    devices=jax.devices()[:1])
  summary = trainer.run()
  trainer.close()
  return summary


def _damage(step_dir, how):
  state = os.path.join(step_dir, "state")
  if how == "truncated":
    path = _largest_data_file(step_dir)
    os.truncate(path, os.path.getsize(path) // 2)
  elif how == "deleted":
    os.remove(_largest_data_file(step_dir))
  elif how == "zeroed_manifest":
    path = os.path.join(state, "manifest.ocdbt")
    open(path, "wb").write(bytes(os.path.getsize(path)))
  elif how == "no_METADATA":
    os.remove(os.path.join(state, "_METADATA"))
  elif how == "bad_meta_json":
    open(os.path.join(step_dir, "meta", "metadata"), "w").write("{not json")


DAMAGE = ["truncated", "deleted", "zeroed_manifest", "no_METADATA", "bad_meta_json"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  run = tmp_path_factory.mktemp("trained")
  _train(run)
  return run


@pytest.mark.parametrize("checksums", [True, False], ids=["checksummed", "unchecksummed"])
def test_damaged_newest_falls_back_and_all_damaged_is_one_error(tmp_path, trained_run, checksums):
  """Each damage used to give a 37-600 line traceback; now: the newest is set aside, the older one serves."""
  import shutil  # pylint: disable=g-import-not-at-top
  for i, how in enumerate(DAMAGE):
    run = tmp_path / how
    shutil.copytree(trained_run, run)
    ck = run / "checkpoints"
    if not checksums:
      for s in ("2", "4"):
        os.remove(ck / s / "checksums.json")
    _damage(str(ck / "4"), how)
    trainer = Trainer(tiny_config(run, "steps=4"), devices=jax.devices()[:1])
    trainer.initialize()
    assert trainer.resumed_from == 2, how
    assert sorted(os.listdir(ck)) == ["2", "4.corrupt"], how
    trainer.close()
    if i == 0:  # and when the only checkpoint left is damaged too: one error, naming it, with the way out
      _damage(str(ck / "2"), how)
      trainer = Trainer(tiny_config(run, "steps=4"), devices=jax.devices()[:1])
      with pytest.raises(CheckpointError) as e:
        trainer.initialize()
      msg = str(e.value)
      assert "\n" not in msg and str(ck / "2") in msg and "--fresh" in msg, msg
      trainer.close()


def test_changed_model_config_names_the_field(trained_run):
  trainer = Trainer(tiny_config(trained_run, "steps=4", "model.hidden_size=64"), devices=jax.devices()[:1])
  with pytest.raises(ConfigError) as e:
    trainer.initialize()
  msg = str(e.value)
  assert "model.hidden_size=32 there but 64 here" in msg and "--fresh" in msg and "\n" not in msg, msg
  assert os.path.isdir(trained_run / "checkpoints" / "4")  # not set aside: it is fine, the config is not
  trainer.close()


def test_cli_changed_layers_exits_2_with_one_line(tmp_path, capsys):
  from train.main import main  # pylint: disable=g-import-not-at-top
  args = ["--workdir", str(tmp_path), *TINY, "steps=2", "checkpoint.every=2", "mesh.data=-1"]
  assert main(args) == 0
  capsys.readouterr()
  assert main(args + ["model.num_hidden_layers=2"]) == 2
  err = _error_lines(capsys.readouterr().err)
  assert len(err) == 1 and "model.num_hidden_layers=1 there but 2 here" in err[0], err


def test_all_steps_rejected_stops_nonzero(tmp_path):
  """A state that makes every step non-finite used to run to the end and exit 0 with eval nan."""
  for steps in (4, 14):  # a short run that rejects everything; a long one stops after 10 rejections in a row
    trainer = Trainer(tiny_config(tmp_path / str(steps), f"steps={steps}"), devices=jax.devices()[:1])
    trainer.initialize()
    trainer.state = trainer.state.replace(params=jax.tree.map(lambda x: x * np.nan, trainer.state.params))
    with pytest.raises(TrainingError, match="rejected as non-finite") as e:
      trainer.run()
    assert ("all 4 steps of this run (1-4)" if steps == 4 else "steps 1-10 were all") in str(e.value)
    trainer.close()


# ------------------------------------------------------------------------------------------------ item 10


def test_resume_truncates_metrics_to_the_restored_step(tmp_path):
  """A run that died after step 3 (checkpoint at 2) used to leave rows 3 (and more) twice."""
  trainer = Trainer(tiny_config(tmp_path, "steps=6", "checkpoint.every=2"), devices=jax.devices()[:1])
  trainer.run(until=3)
  trainer.close()
  os.rename(tmp_path / "checkpoints" / "3", tmp_path / "gone")  # as if killed before the step-3 save
  summary = _train(tmp_path, steps=6, every=2)
  assert summary["start_step"] == 2
  rows = [(r["step"], r["split"]) for r in map(json.loads, open(tmp_path / "metrics.jsonl"))]
  assert rows == [(s, "train") for s in range(1, 7)] + [(6, "eval")], rows
  # resuming a finished run repeats the final eval: the old eval row goes, the train rows stay
  _train(tmp_path, steps=6, every=2)
  rows2 = [(r["step"], r["split"]) for r in map(json.loads, open(tmp_path / "metrics.jsonl"))]
  assert rows2 == rows


def test_truncate_metrics_drops_a_torn_last_row(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "split": "train"}\n{"step": 2, "split": "eval"}\n{"step": 3, "spl')
  _truncate_metrics(str(path), 2, rerun_eval=False)
  assert [json.loads(l)["step"] for l in open(path)] == [1, 2]


def test_sigterm_during_the_last_step_is_a_finished_run(tmp_path):
  trainer = Trainer(tiny_config(tmp_path, "steps=3"), devices=jax.devices()[:1])

  def on_log(step, row):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  summary = trainer.run(on_log=on_log)
  trainer.close()
  assert summary["step"] == 3 and not summary["stopped_by_signal"] and summary["final_eval"] is not None


def test_sigterm_during_startup_exits_3_with_a_message(tmp_path):
  runner = RUNNER.replace("from train.main import main", textwrap.dedent("""
    import signal, train.trainer
    train.trainer.Trainer.__init__ = lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM)
    from train.main import main"""))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", runner, "--workdir", str(tmp_path), *TINY], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
  lines = _error_lines(proc.stderr)
  assert len(lines) == 1 and "signal 15" in lines[0] and "start-up" in lines[0], proc.stderr[-2000:]
