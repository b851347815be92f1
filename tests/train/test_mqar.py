"""MQAR generator: the recall structure, masks, power-law query gaps, determinism per seed and host shard."""

import numpy as np
import pytest

from train.data.mqar import StepIndexedSource, mqar_example, row_rng


def _example(seed=0, T=64, V=128, N=8, a=0.01, filler=True):
  return mqar_example(row_rng(seed, "train", 0, 0), seq_len=T, vocab_size=V, num_kv_pairs=N, power_a=a,
                      random_filler=filler)


@pytest.mark.parametrize("T, V, N", [(64, 128, 8), (32, 64, 4), (256, 8192, 64), (16, 20, 4)])
def test_structure_every_query_recalls_its_context_value(T, V, N):
  for seed in range(20):
    ex = _example(seed, T, V, N)
    x, y, m = ex["inputs"], ex["targets"], ex["mask"]
    assert x.shape == y.shape == m.shape == (T,) and x.dtype == np.int32 and m.dtype == bool
    keys, values = x[0:2 * N:2], x[1:2 * N:2]
    assert len(set(keys)) == N and len(set(values)) == N  # distinct keys and values
    assert keys.min() >= 1 and keys.max() < V // 2 and values.min() >= V // 2 and values.max() < V
    binding = dict(zip(keys.tolist(), values.tolist()))
    pos = np.flatnonzero(m)
    assert len(pos) == N and pos.min() >= 2 * N and np.all((pos - 2 * N) % 2 == 0)
    assert sorted(x[pos].tolist()) == sorted(keys.tolist())  # each key asked exactly once
    for p in pos:
      assert y[p] == binding[int(x[p])]
    assert np.all(y[~m] == 0) and np.all((x >= 0) & (x < V))


def test_filler_modes():
  ex = _example(filler=False)
  rest = np.ones(64, bool)
  rest[:16] = False
  rest[ex["mask"]] = False
  assert np.all(ex["inputs"][rest] == 0)
  ex = _example(filler=True)
  assert len(np.unique(ex["inputs"][16:][~ex["mask"][16:]])) > 10  # random tokens, not a constant


def test_query_gaps_follow_the_power_law():
  """p(slot s) ∝ (s+1)^(a-1): with a = 0.01 slot 0 is far likelier than under a uniform choice; a = 1 is uniform."""
  T, N = 256, 4
  slots = (T - 2 * N) // 2

  def slot_histogram(a):
    counts = np.zeros(slots)
    for seed in range(300):
      ex = _example(seed, T=T, V=64, N=N, a=a)
      counts[(np.flatnonzero(ex["mask"]) - 2 * N) // 2] += 1
    return counts / counts.sum()

  skewed, flat = slot_histogram(0.01), slot_histogram(1.0)
  assert skewed[:8].sum() > 0.3  # uniform would put 8/124 ≈ 6.5% there
  assert abs(flat[:8].sum() - 8 / slots) < 0.04
  assert skewed[:slots // 2].sum() > 0.7 and abs(flat[:slots // 2].sum() - 0.5) < 0.06


def test_deterministic_per_seed_step_and_row():
  a = _example(seed=3)
  b = _example(seed=3)
  c = _example(seed=4)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["inputs"], c["inputs"])
  src = StepIndexedSource("mqar", global_batch=4, seq_len=64, vocab_size=128, seed=0)
  first = src.next()
  second = src.next()
  assert not np.array_equal(first["inputs"], second["inputs"])
  src.set_state({"step": 1})
  assert np.array_equal(src.next()["inputs"], second["inputs"])
  ev = StepIndexedSource("mqar", global_batch=4, seq_len=64, vocab_size=128, seed=0, split="eval")
  assert not np.array_equal(ev.next()["inputs"], first["inputs"])  # held-out draws


def test_host_shards_concatenate_to_the_global_batch():
  kw = dict(global_batch=8, seq_len=64, vocab_size=128, seed=1, num_kv_pairs=8)
  whole = StepIndexedSource("mqar", **kw).batch_at(5)
  parts = [StepIndexedSource("mqar", process_index=i, process_count=4, **kw).batch_at(5) for i in range(4)]
  for k in whole:
    assert np.array_equal(np.concatenate([p[k] for p in parts]), whole[k])
  assert not np.array_equal(parts[0]["inputs"], parts[1]["inputs"])


def test_random_tokens_are_next_token_pairs():
  src = StepIndexedSource("synthetic", global_batch=2, seq_len=16, vocab_size=50, seed=0)
  b = src.next()
  assert np.array_equal(b["inputs"][:, 1:], b["targets"][:, :-1]) and b["mask"].all()
  assert b["inputs"].max() < 50


def test_bad_sizes_raise():
  with pytest.raises(ValueError, match="seq_len >= 4 \\* num_kv_pairs"):
    _example(T=30, N=8)
  with pytest.raises(ValueError, match="too few tokens"):
    _example(V=12, N=8)
