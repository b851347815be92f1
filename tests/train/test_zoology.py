"""train/zoology.py (the MQAR sweep) and train/zoology_lm.py (the small-LM comparison) on CPU: the MQAR sets
follow Zoology's protocol, JRT repeats the context exactly, the sweep on a tiny grid writes its JSONL, table
and both plots, resumes without retraining, and vmapped LRs equal separate runs."""

import json
import os

import numpy as np
import pytest

from train import zoology
from train.zoology import Protocol, mqar_set

TINY = ["--dims", "32", "--cells", "64x4", "--epochs", "1", "--train-examples", "128", "--test-examples", "32",
        "--batch-size", "32", "--vocab", "256", "--quiet"]


def _check_answerable(s, T, N, V):
  inputs, qpos, qtgt = s["inputs"], s["qpos"], s["qtgt"]
  assert inputs.shape[1] == T and qpos.shape == qtgt.shape == (inputs.shape[0], N)
  for x, pos, tgt in zip(inputs, qpos, qtgt):
    keys, values = x[0:2 * N:2], x[1:2 * N:2]
    assert len(set(keys.tolist())) == N and len(set(values.tolist())) == N  # unique per example
    assert np.all((keys >= 1) & (keys < V // 2)) and np.all((values >= V // 2) & (values < V))
    assert len(set(pos.tolist())) == N and np.all(pos >= 2 * N) and np.all(pos < T)
    binding = dict(zip(keys.tolist(), values.tolist()))
    asked = x[pos].tolist()
    assert sorted(asked) == sorted(binding)  # every key is asked exactly once
    assert [binding[k] for k in asked] == tgt.tolist()  # the target is the value bound to that key


@pytest.mark.parametrize("filler", [False, True])
def test_mqar_sets_follow_zoology(filler, tmp_path):
  T, N, V = 64, 8, 512
  proto = Protocol(vocab_size=V, random_filler=filler)
  s = mqar_set(T, N, 40, "train", proto, cache_dir=str(tmp_path))
  _check_answerable(s, T, N, V)
  if not filler:  # Zoology's figure-2 sets: 0 everywhere but the context and the queries
    rest = np.ones_like(s["inputs"], bool)
    rest[:, :2 * N] = False
    np.put_along_axis(rest, s["qpos"], False, axis=1)
    assert np.all(s["inputs"][rest] == 0)
  cached = mqar_set(T, N, 40, "train", proto, cache_dir=str(tmp_path))  # read back from the .npz
  assert all(np.array_equal(s[k], cached[k]) for k in s)
  other = mqar_set(T, N, 40, "eval", proto)
  assert not np.array_equal(s["inputs"], other["inputs"])  # the test set is another draw


def test_jrt_repeats_the_context_and_keeps_the_queries():
  T, N, V = 64, 8, 512
  plain = mqar_set(T, N, 20, "train", Protocol(vocab_size=V))
  jrt = mqar_set(T, N, 20, "train", Protocol(vocab_size=V, jrt=True))
  x, c = jrt["inputs"], 2 * N
  assert x.shape == (20, T + c)
  np.testing.assert_array_equal(x[:, :c], plain["inputs"][:, :c])  # context …
  np.testing.assert_array_equal(x[:, c:2 * c], plain["inputs"][:, :c])  # … read twice
  np.testing.assert_array_equal(x[:, c:], plain["inputs"])  # then the original sequence's rest
  np.testing.assert_array_equal(jrt["qpos"], plain["qpos"] + c)  # the same queries, shifted
  np.testing.assert_array_equal(jrt["qtgt"], plain["qtgt"])
  np.testing.assert_array_equal(np.take_along_axis(x, jrt["qpos"], 1),
                                np.take_along_axis(plain["inputs"], plain["qpos"], 1))
  _check_answerable({**jrt, "inputs": x[:, c:], "qpos": jrt["qpos"] - c}, T, N, V)


def test_head_rule_and_short_convs():
  for d, h in ((32, 1), (64, 1), (256, 4)):
    gla = zoology.model_config("gla", d)
    assert gla.num_heads == h and gla.use_short_conv and gla.vocab_size == 8192 and gla.num_hidden_layers == 2
    att = zoology.model_config("attention", d)
    assert att.num_heads == h and att.hidden_size // att.num_heads == max(d // h, 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """Two worker processes share the two groups (each claims one; the parent writes the report)."""
  out = str(tmp_path_factory.mktemp("zoology"))
  summary = zoology.main(["--kinds", "gla,attention", "--lrs", "1e-3,3e-3", "--vmap-lrs", "--out", out,
                          "--workers", "2", *TINY])
  return out, summary


def _rows(out):
  with open(os.path.join(out, "results.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_sweep_writes_results_table_and_plots(sweep):
  out, summary = sweep
  assert summary["trained"] == 4 and summary["skipped"] == 0 and summary["runs_per_min"] > 0
  assert summary["left"] == 0 and not [p for p in os.listdir(out) if p.startswith(".claims")]
  rows = _rows(out)  # each run exactly once: no group was trained by both workers
  assert sorted((r["kind"], r["lr"]) for r in rows) == [("attention", 1e-3), ("attention", 3e-3),
                                                        ("gla", 1e-3), ("gla", 3e-3)]
  for r in rows:
    assert 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["test_loss"]) and r["params"] > 0
    assert r["state_bytes"] > 0 and r["models_together"] == 2 and r["steps"] == 4
  by_kind = {r["kind"]: r for r in rows}
  assert by_kind["attention"]["state_bytes"] > by_kind["gla"]["state_bytes"]  # a KV cache of 64 tokens
  table = open(os.path.join(out, "results.md")).read()
  assert "| gla | 32 |" in table and "| attention | 32 |" in table and "64, 4" in table
  for name in ("accuracy_vs_dmodel", "accuracy_vs_state"):
    path = os.path.join(out, name + ".png")
    assert os.path.getsize(path) > 1000 and summary["plots"][name] == path


def test_sweep_resumes_without_retraining(sweep):
  out, _ = sweep
  before = _rows(out)
  again = zoology.main(["--kinds", "gla,attention", "--lrs", "1e-3,3e-3", "--vmap-lrs", "--out", out, *TINY])
  assert again["trained"] == 0 and again["skipped"] == 4
  assert _rows(out) == before


def test_time_budget_leaves_groups_for_a_rerun(tmp_path):
  spent = zoology.main(["--kinds", "gla,attention", "--lrs", "1e-3", "--out", str(tmp_path), "--time-budget",
                        "1e-9", *TINY])
  assert spent["trained"] == 0 and spent["left"] == 2 and not os.path.exists(tmp_path / "results.jsonl")


def test_vmapped_lrs_equal_a_separate_run(sweep, tmp_path):
  out, _ = sweep
  lone = zoology.main(["--kinds", "gla", "--lrs", "3e-3", "--out", str(tmp_path), *TINY])
  assert lone["trained"] == 1
  (solo,) = _rows(str(tmp_path))
  (together,) = [r for r in _rows(out) if r["kind"] == "gla" and r["lr"] == 3e-3]
  assert solo["models_together"] == 1
  for k in ("test_loss", "train_loss"):
    np.testing.assert_allclose(solo[k], together[k], rtol=2e-5)
  assert solo["accuracy"] == together["accuracy"]


def test_report_best_lr_per_cell():
  from train import zoology_report
  base = dict(kind="gla", d_model=64, seq_len=64, num_kv_pairs=4, protocol="p", params=1, state_bytes=8,
              jrt=False, epochs=1, num_heads=1)
  rows = [dict(base, lr=1e-3, seed=0, accuracy=0.5), dict(base, lr=1e-3, seed=1, accuracy=0.7),
          dict(base, lr=1e-2, seed=0, accuracy=0.55), dict(base, lr=1e-4, seed=0, accuracy=0.6)]
  (best,) = zoology_report.best_rows(rows).values()
  assert best["lr"] == 1e-4 and best["accuracy"] == 0.6  # 1e-3's mean over seeds is 0.6 too: the smaller LR wins
  assert "0.600 @ 1.0e-04" in zoology_report.markdown(rows)


def test_lm_comparison_machinery(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("grain")
  from train import zoology_lm
  corpus = tmp_path / "corpus"
  for i in range(8):
    (corpus / f"pkg{i % 2}").mkdir(parents=True, exist_ok=True)
    (corpus / f"pkg{i % 2}" / f"m{i}.py").write_text(f"def f_{i}(x):\n    return x * {i}\n" * (20 + 5 * i))
  for name in zoology_lm.MODELS:  # every model near the target (a layer is ~1/4 of a 0.3M model: 15 %)
    shape = zoology_lm.match_shape(name, 290_000, vocab_size=300, seq_len=32, window=8, width=64)
    assert abs(shape["error"]) <= 0.15, (name, shape)
  out = str(tmp_path / "lm")
  result = zoology_lm.main(["--kinds", "gla_swa", "--steps", "2", "--out", out, "--target-params", "290000",
                            "--width", "64", "--window", "8", "--seq-len", "32", "--batch-size", "8",
                            "--bpe-vocab", "300", "--corpus", str(corpus), "--eval-every", "0",
                            "--eval-batches", "1", "--log-every", "1", "--quiet"])
  assert [r["name"] for r in result["rows"]] == ["gla_swa"]  # one trained model: the hybrid
  for r in result["rows"]:
    assert abs(r["error"]) <= 0.05 and np.isfinite(r["eval_perplexity"]) and len(r["curves"]["train"]) == 2
  assert "GLA + SWA hybrid" in open(result["table"]).read() and os.path.getsize(result["plot"]) > 1000
