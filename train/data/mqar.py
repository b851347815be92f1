"""Multi-query associative recall (MQAR; Arora et al., Zoology, arXiv 2312.04927) and random-token batches.

One MQAR example of length T with N key-value pairs over a vocabulary of V tokens:

    k1 v1 k2 v2 … kN vN | … q … q … q … (queries at power-law gaps, filler elsewhere)

* keys are distinct tokens from [1, V/2), values distinct tokens from [V/2, V);
* the query region (T − 2N tokens) has (T − 2N) // 2 slots; the N keys are asked again, in random order, at
  distinct slots s (position 2N + 2s) drawn with p(s) ∝ (s + 1)^(a − 1) — most queries come soon after the
  context, a few far away (a = 0.01 in Zoology);
* the target at a query position is the value bound to that key; only those N positions count in the loss
  and the accuracy (`mask`); every other position holds filler (random tokens, or 0).

Every row is a pure function of (seed, split, step, global row index): a host draws only its own rows, the
global batch does not depend on the number of hosts, and resuming at step s reproduces the same batches.
"""

from __future__ import annotations

import numpy as np

SPLITS = {"train": 0, "eval": 1}


def row_rng(seed: int, split: str, step: int, row: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], step, row]))


def mqar_example(rng: np.random.Generator, *, seq_len: int, vocab_size: int, num_kv_pairs: int,
                 power_a: float = 0.01, random_filler: bool = True) -> dict[str, np.ndarray]:
  """One example: `inputs`, `targets` int32 [T] and `mask` bool [T] (True at the N query positions)."""
  T, V, N = seq_len, vocab_size, num_kv_pairs
  half = V // 2
  if N < 1 or half - 1 < N or V - half < N:
    raise ValueError(f"vocab_size={V} has too few tokens for num_kv_pairs={N} (need V/2 - 1 >= N)")
  slots = (T - 2 * N) // 2
  if slots < N:
    raise ValueError(f"seq_len={T} is too short for num_kv_pairs={N}: need seq_len >= 4 * num_kv_pairs")
  keys = 1 + rng.choice(half - 1, size=N, replace=False)  # [N] distinct, in [1, V/2)
  values = half + rng.choice(V - half, size=N, replace=False)  # [N] distinct, in [V/2, V)

  if random_filler:
    inputs = rng.integers(0, V, size=T)
  else:
    inputs = np.zeros(T, np.int64)
  inputs[0:2 * N:2] = keys  # [N] context: k1 v1 k2 v2 ...
  inputs[1:2 * N:2] = values

  # N distinct slots, drawn one after another with p ∝ (s + 1)^(a - 1) among those left: the Gumbel top-k
  # trick gives exactly that distribution, and is much cheaper than choice(p=..., replace=False)
  log_w = (power_a - 1.0) * np.log(np.arange(1, slots + 1, dtype=np.float64))
  scores = log_w - np.log(-np.log(rng.random(slots)))
  chosen = np.argpartition(-scores, N - 1)[:N]
  positions = 2 * N + 2 * chosen
  order = rng.permutation(N)  # which key is asked at which slot
  inputs[positions] = keys[order]
  targets = np.zeros(T, np.int64)
  targets[positions] = values[order]
  mask = np.zeros(T, bool)
  mask[positions] = True
  return {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32), "mask": mask}


def random_tokens_example(rng: np.random.Generator, *, seq_len: int, vocab_size: int) -> dict[str, np.ndarray]:
  """Uniform random tokens as next-token prediction (for throughput; the loss floor is log V)."""
  x = rng.integers(0, vocab_size, size=seq_len + 1).astype(np.int32)
  return {"inputs": x[:-1], "targets": x[1:], "mask": np.ones(seq_len, bool)}


class StepState:
  """A data source whose batch is a pure function of the step (`batch_at(step)`): its whole state is the
  step, so a checkpoint stores one number and resuming at step s reproduces the same batches."""

  step: int = 0

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def next(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self.step)
    self.step += 1
    return batch

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state["step"])

  def reset(self) -> None:
    self.step = 0


class StepIndexedSource(StepState):
  """Local batches of a generator that is a pure function of (seed, split, step, row).

  `next()` returns this host's rows [process_index * local_batch, (process_index + 1) * local_batch) of the
  global batch for the current step. The state is just the step, so checkpoints store one number.
  """

  def __init__(self, kind: str, *, global_batch: int, seq_len: int, vocab_size: int, seed: int,
               split: str = "train", process_index: int = 0, process_count: int = 1,
               num_kv_pairs: int = 8, power_a: float = 0.01, random_filler: bool = True):
    if kind not in ("mqar", "synthetic"):
      raise ValueError(f"kind={kind!r}: expected 'mqar' or 'synthetic'")
    if global_batch % process_count:
      raise ValueError(f"global_batch={global_batch} must be a multiple of process_count={process_count}")
    self.kind, self.split, self.seed = kind, split, seed
    self.local_batch = global_batch // process_count
    self.first_row = process_index * self.local_batch
    self.kwargs = dict(seq_len=seq_len, vocab_size=vocab_size)
    if kind == "mqar":
      self.kwargs.update(num_kv_pairs=num_kv_pairs, power_a=power_a, random_filler=random_filler)
    self.step = 0

  def example(self, step: int, row: int) -> dict[str, np.ndarray]:
    rng = row_rng(self.seed, self.split, step, row)
    fn = mqar_example if self.kind == "mqar" else random_tokens_example
    return fn(rng, **self.kwargs)

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    rows = [self.example(step, self.first_row + i) for i in range(self.local_batch)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

