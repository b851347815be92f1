"""The Pallas Mosaic TPU kernels (impl="tpu") in Pallas' TPU interpreter on CPU, against the specification
(`naive_recurrent_gla`): outputs, final state and every gradient (dq, dk, dv, dg, dh0) over odd lengths,
K ≠ V, strong decay, packed documents, initial states and bf16; the dispatch on a (mocked) TPU; the
kernels' lowering to Mosaic for the TPU platform; and, where libtpu is importable (slow), a deviceless
compile of the kernels for v5e / v5p / v6e.

The interpreter is slow (XLA compiles every grid step's body, race detection doubles it): the fast cases
are few and small; the wider matrix is marked slow (`pytest --runslow`).
"""

import dataclasses
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.common.checks import check_gla_inputs
from pallas_kernels.gla import chunk_gla, naive_recurrent_gla, ops
from pallas_kernels.gla.tpu import ops as tpu
from pallas_kernels.gla.tpu import chunk_gla_tpu
from tests.pallas_kernels.gla_testing import (Case, assert_all_close, check_packed_equals_separate,
                                              make_inputs, outputs_and_grads, reference)

F32_TOL = 1e-5
BF16_TOL = {"o": 1e-2, "final_state": 1e-2, "dq": 2e-2, "dk": 2e-2, "dv": 2e-2, "dg": 3e-2,
            "dh0": 1e-2}


def _run(case: Case, **kw):
  fn = functools.partial(chunk_gla_tpu, interpret=True, **kw)
  return jax.jit(functools.partial(outputs_and_grads, fn))(*make_inputs(case))


def _check(case: Case, got):
  if case.dtype == "bfloat16":
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32  # the op contract
    assert all(x.dtype == jnp.bfloat16 for x in got[2:5])
  return assert_all_close(got, reference(case), BF16_TOL if case.dtype == "bfloat16" else F32_TOL)


# ------------------------------------------------------------------------------------------------
# fast: a few cases that together cover the contract
# ------------------------------------------------------------------------------------------------


def test_odd_T_K_ne_V_strong_decay_documents_initial_state_race_checked():
  """Odd T (3 chunks, the last one padded), K ≠ V (both padded to 128 lanes), g ≈ −20 per token (dg is
  pure cancellation-free terms of size e^-20), packed documents, an initial state, two heads in one
  grid step; the interpreter's race detector and NaN-filled uninitialised memory are on."""
  case = Case(T=130, K=32, V=48, gate="strong", h0=True, seg=True)
  _check(case, _run(case, detect_races=True))


def test_bfloat16_documents_strong_decay_no_initial_state():
  """bf16 operands, and the kernels without their optional initial state (no dh0 output)."""
  case = Case(T=63, K=16, V=16, gate="strong", h0=False, seg=True, dtype="bfloat16")
  _check(case, _run(case, detect_races=False))


@pytest.mark.slow
def test_no_state_no_documents_one_head_per_step_small_chunks():
  """The kernels without their optional inputs (no h0, no segment_ids), one head per grid step, 32-token
  chunks of two 16-token sub-chunks."""
  case = Case(T=100, K=16, V=32, gate="normal", h0=False, seg=False)
  _check(case, _run(case, detect_races=False, chunk_size=32, sub_chunk=16, heads_per_block=1))


# ------------------------------------------------------------------------------------------------
# dispatch, errors, lowering
# ------------------------------------------------------------------------------------------------


def test_auto_on_tpu_stays_off_the_unqualified_kernels(monkeypatch):
  """impl="auto" on a (mocked) TPU platform does not pick the TPU kernels (never run on a TPU);
  impl="tpu" selects and runs them (interpreted here); the forward without segment_ids, one head per
  grid step."""
  monkeypatch.setattr(ops.CHUNK_GLA, "platform", lambda: "tpu")
  case = Case(T=40, K=16, V=16, gate="normal", h0=True, seg=False, B=2, H=1)
  q, k, v, g, h0, _, _, _ = make_inputs(case)
  info = check_gla_inputs(q, k, v, g)
  assert ops.select_impl(info, "auto").name == "xla"
  assert ops.select_impl(info, "tpu").name == "tpu"
  registered = ops.CHUNK_GLA.lookup("tpu")
  assert registered.platforms == frozenset({"tpu"})
  calls = []

  def interpreted(info, *args, **kw):
    calls.append(1)
    return registered.fn(info, *args, interpret=True, detect_races=False, **kw)

  monkeypatch.setitem(ops.CHUNK_GLA.registry, "tpu", dataclasses.replace(registered, fn=interpreted))
  o, ht = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, impl="tpu")
  o_ref, ht_ref = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
  assert calls, "impl='tpu' did not go through the TPU implementation"
  np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ht, ht_ref, rtol=1e-5, atol=1e-5)


def test_tpu_impl_refuses_past_the_vmem_budget():
  q = jax.ShapeDtypeStruct((1, 64, 1, 640), jnp.bfloat16)
  info = check_gla_inputs(q, q, q, q)
  assert ops.select_impl(info, "auto", platform="tpu").name == "xla"
  with pytest.raises(ValueError, match="budget VMEM for K, V ≤ 512"):
    ops.select_impl(info, "tpu", platform="tpu")


def test_explicit_tpu_on_cpu_raises():
  q = jnp.zeros((1, 8, 1, 16))
  with pytest.raises(ValueError, match=r"runs on \['tpu'\], not on cpu"):
    chunk_gla(q, q, q, q, impl="tpu")


@pytest.mark.parametrize("kw, message", [
    ({"sub_chunk": 12}, "sub_chunk must be 8, 16, 32 or 64"),
    ({"chunk_size": 48, "sub_chunk": 32}, "divide chunk_size=48"),
    ({"heads_per_block": 3}, "heads_per_block must be a positive divisor of H=2"),
    ({"chunk_size": 40}, "chunk_size must be a positive multiple of 16"),
])
def test_bad_options_raise(kw, message):
  q = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ValueError, match=message):
    chunk_gla_tpu(q, q, q, q, interpret=True, **kw)


@pytest.mark.parametrize("dtype, seg", [("bfloat16", True), ("float32", False)])
def test_kernels_lower_to_mosaic_for_tpu(dtype, seg):
  """Cross-platform lowering on CPU runs Pallas' Mosaic lowering of all three kernels (it rejects
  primitives Mosaic lacks, e.g. cumsum); layout passes need libtpu: see test_deviceless_compile."""
  case = Case(T=200, K=128, V=256, h0=True, seg=seg, dtype=dtype, B=1, H=4)
  args = make_inputs(case)
  f = jax.jit(functools.partial(outputs_and_grads, chunk_gla_tpu))
  text = f.trace(*args).lower(lowering_platforms=("tpu",)).as_text()
  assert text.count("tpu_custom_call") == 3  # forward, state pass, backward


def test_vmem_model_fits_every_supported_shape():
  """The VMEM estimate of every kernel stays under the limit it asks for, at the largest K, V."""
  from pallas_kernels.gla.tpu import model as tpu_model
  for C in (64, 128, 256):
    for itemsize in (2, 4):
      for stage in ("fwd", "state_pass", "bwd"):
        est = tpu_model.vmem_bytes(stage, C, 512, 512, itemsize)["total"]
        assert est <= tpu_model.vmem_limit_bytes(stage, C, 512, 512, itemsize), (C, itemsize, stage)


# ------------------------------------------------------------------------------------------------
# slow: the wider matrix
# ------------------------------------------------------------------------------------------------

SLOW_CASES = [
    *[Case(T=T, K=16, V=16, h0=True, seg=True) for T in (1, 15, 64, 257)],
    Case(T=130, K=64, V=64, gate="weak"),
    Case(T=130, K=128, V=64, seg=True),
    Case(T=63, K=64, V=256, gate="weak", h0=False, seg=True, B=1),
    Case(T=64, K=256, V=512, B=1, H=1, seg=True),
    Case(T=257, K=32, V=16, gate="strong", seg=True, h0=False, B=1),
    Case(T=130, K=64, V=64, gate="weak", seg=True, dtype="bfloat16"),
    Case(T=257, K=32, V=128, gate="normal", h0=True, dtype="bfloat16", B=1),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=lambda c: c.id)
def test_matrix(case):
  _check(case, _run(case, detect_races=False))


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size, sub_chunk", [(16, 8), (16, 16), (64, 16), (128, 8), (128, 32)])
def test_block_sizes(chunk_size, sub_chunk):
  case = Case(T=150, K=32, V=16, gate="normal", h0=True, seg=True)
  _check(case, _run(case, detect_races=False, chunk_size=chunk_size, sub_chunk=sub_chunk))


@pytest.mark.slow
def test_packed_documents_equal_separate_runs():
  check_packed_equals_separate(functools.partial(chunk_gla_tpu, interpret=True, detect_races=False))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs libtpu importable (pip install --target DIR libtpu; PYTHONPATH=DIR)")
@pytest.mark.parametrize("chip", ["v5e", "v5p", "v6e"])
def test_deviceless_compile(chip):
  """The whole Mosaic + TPU backend pipeline accepts the kernels (340M layer shape, packed documents),
  and one grid step's schedule is not absurdly long."""
  from pallas_kernels.gla.tpu import aot as tpu_aot
  bundles = tpu_aot.static_bundles(chip, K=128, V=256, C=64, dtype="bfloat16", segments=True)
  for name in tpu_aot.KERNELS:
    assert bundles[name] is not None and 50 < bundles[name] < 5000, bundles


def test_options_are_hashable_and_static():
  opts = tpu.TpuOptions(scale=0.25)
  assert hash(opts) == hash(tpu.TpuOptions(scale=0.25))
  assert opts.sub_chunk == 8 and opts.chunk_size == 64
