"""The Pallas Triton GLA kernels against the specification.

CPU (interpret mode, the same kernels): outputs, final state and every gradient (dq, dk, dv, dg, dh0) on
small shapes covering odd T, K ≠ V (and padded K, V), several K tiles, the three gate strengths (weak:
dense path; normal: a mix; strong ≈ −20 per token: two-level with exact diagonal blocks), each forced
decomposition, packed documents, initial states, bf16 and fp16; vmap, shard_map and dispatch.
GPU (`gpu` marker): compiled kernels at realistic shapes against the float32 reference and fla.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from pallas_kernels import compat
from pallas_kernels.common.checks import check_gla_inputs
from pallas_kernels.gla import chunk_gla, chunk_gla_jnp, naive_recurrent_gla, ops
from pallas_kernels.gla.triton import chunk_gla_triton, check_call
from pallas_kernels.gla.triton.common import BlockSizes, padded_dim
from tests.pallas_kernels.gla_testing import (Case, assert_all_close, make_inputs, outputs_and_grads,
                                              reference, rel_err)
from tests.peers import narrow_fla_autotune

F32_TOL = {"o": 1e-5, "final_state": 1e-5, "dq": 1e-5, "dk": 1e-5, "dv": 1e-5, "dg": 1e-4,
           "dh0": 1e-5}  # dg: exponent differences of chunk cumsums (|G| up to 1280 at g ≈ −20)
BF16_TOL = {"o": 1e-2, "final_state": 1e-2, "dq": 2e-2, "dk": 2e-2, "dv": 2e-2, "dg": 3e-2,
            "dh0": 1e-2}
FP16_TOL = {"o": 3e-3, "final_state": 3e-3, "dq": 5e-3, "dk": 5e-3, "dv": 5e-3, "dg": 1e-2,
            "dh0": 3e-3}
TOL = {"float32": F32_TOL, "bfloat16": BF16_TOL, "float16": FP16_TOL}

interpreted = functools.partial(chunk_gla_triton, interpret=True)

CASES = [
    # (name, case, path, block-size overrides)
    ("mixed_odd_T_seg", Case(T=130, K=32, V=16, gate="normal", h0=True, seg=True), "auto", {}),
    ("bf16_seg_state_scan", Case(T=200, K=32, V=32, gate="normal", h0=True, seg=True, B=1,
                                 dtype="bfloat16"), "auto", dict(state_scan=True, fwd_parallel=True)),
    ("strong_seg_state_scan", Case(T=100, K=16, V=32, gate="strong", h0=False, seg=True), "auto",
     dict(state_scan=True)),
    ("multi_k_tiles_padded_v_parallel_fwd_state_scan",
     Case(T=70, K=128, V=48, gate="weak", h0=True, seg=True, B=1, H=1), "auto",
     dict(fwd_parallel=True, state_scan=True, scan_bk=64, scan_bv=16)),
    ("bf16_seg", Case(T=63, K=64, V=32, gate="normal", h0=True, seg=True, dtype="bfloat16"), "auto",
     {}),
    ("fp16_strong", Case(T=40, K=32, V=16, gate="strong", h0=True, dtype="float16", B=1), "auto", {}),
    ("exact_weak", Case(T=64, K=32, V=16, gate="weak", h0=True, seg=True, B=1), "exact", {}),
]


def _blocks(case, overrides):
  if not overrides:
    return None
  base = BlockSizes.get_default(case.B, case.H, padded_dim(case.K), padded_dim(case.V), case.T)
  return dataclasses.replace(base, **overrides)


class InterpretTest(parameterized.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_matches_spec(self, case, path, overrides):
    fn = functools.partial(interpreted, path=path, block_sizes=_blocks(case, overrides))
    got = jax.jit(functools.partial(outputs_and_grads, fn))(*make_inputs(case))
    assert got[0].dtype == jnp.dtype(case.dtype) and got[1].dtype == jnp.float32
    assert all(x.dtype == jnp.dtype(case.dtype) for x in got[2:5])
    assert_all_close(got, reference(case), TOL[case.dtype])

  @parameterized.named_parameters(
      # logsigmoid(randn) gates: every chunk spans > 40 nats → two-level path (bf16 diag operands: dg 9.7e-3)
      ("two_level", "normal", {}, 5e-3),
      # weak gates: dense path; bf16 diag operands give dg 3.9e-3, TF32 1.4e-3
      ("dense_tf32", "weak", dict(dense_diag_tf32=True), 2.5e-3))
  def test_bf16_gradient_accuracy(self, gate, overrides, dg_bound):
    """dq, dk and dg stay near the XLA form's bf16 accuracy (the diagonal blocks' TF32 operands)."""
    case = Case(T=256, K=64, V=64, gate=gate, h0=True, B=1, H=2, dtype="bfloat16")
    fn = functools.partial(interpreted, block_sizes=_blocks(case, overrides))
    got = jax.jit(functools.partial(outputs_and_grads, fn))(*make_inputs(case))
    errs = {n: rel_err(a, b) for n, a, b in zip(("o", "ht", "dq", "dk", "dv", "dg"), got, reference(case))}
    assert errs["dg"] <= dg_bound and errs["dq"] <= 2.5e-3 and errs["dk"] <= 2.5e-3, errs

  def test_vmap_over_a_leading_axis(self):
    case = Case(T=40, K=16, V=16, gate="normal", h0=False, B=1, H=2)
    xs = [make_inputs(case, seed) for seed in (0, 1)]
    q, k, v, g = (jnp.stack([x[i] for x in xs]) for i in range(4))

    def loss(fn, q, k, v, g):
      o, _ = fn(q, k, v, g)
      return jnp.sum(o * jnp.cos(o))

    grad = lambda fn: jax.jit(jax.vmap(jax.value_and_grad(functools.partial(loss, fn),
                                                          argnums=(0, 1, 2, 3))))
    got, ref = grad(interpreted)(q, k, v, g), grad(chunk_gla_jnp)(q, k, v, g)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      assert rel_err(a, b) < 1e-5

  def test_shard_map_over_batch_and_heads(self):
    # interpret mode cannot track varying manual axes through the kernel's loops (a JAX interpreter
    # limitation), hence check_vma=False here; GpuTest runs the compiled kernels with check_vma on
    _check_shard_map(self, interpreted, (2, 2), check_vma=False)


def _check_shard_map(test, fn, mesh_shape, check_vma: bool):
  """Per-shard calls inside jax.shard_map (batch over mesh axis "b", heads over "h") equal the spec."""
  case = Case(T=50, K=16, V=16, gate="normal", h0=True, seg=True, B=2, H=2)
  q, k, v, g, h0, seg, do, dht = make_inputs(case)
  mesh = jax.make_mesh(mesh_shape, ("b", "h"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  P = jax.sharding.PartitionSpec
  x_spec, h_spec, s_spec = P("b", None, "h", None), P("b", "h", None, None), P("b", None)

  def per_shard(q, k, v, g, h0, seg):
    return fn(q, k, v, g, initial_state=h0, segment_ids=seg, output_final_state=True)

  sharded = compat.shard_map(per_shard, mesh=mesh,
                             in_specs=(x_spec, x_spec, x_spec, x_spec, h_spec, s_spec),
                             out_specs=(x_spec, h_spec), check_vma=check_vma)
  op = lambda q, k, v, g, *, initial_state, segment_ids, output_final_state: sharded(
      q, k, v, g, initial_state, segment_ids)
  got = jax.jit(functools.partial(outputs_and_grads, op))(q, k, v, g, h0, seg, do, dht)
  assert_all_close(got, reference(case), F32_TOL)


class RegistrationTest(parameterized.TestCase):

  def test_registered_for_gpu_and_chosen_by_auto(self):
    info = check_gla_inputs(*make_inputs(Case(T=64, K=256, V=512, B=1, H=1))[:4])
    impl = ops.select_impl(info, "auto", platform="gpu")
    assert impl.name == "triton" and impl.platforms == frozenset({"gpu"})

  def test_refuses_head_dims_over_512(self):
    q = jnp.zeros((1, 8, 1, 640))
    info = check_gla_inputs(q, q, jnp.zeros((1, 8, 1, 16)), q)
    assert "K and V must be at most 512" in check_call(info)
    assert ops.select_impl(info, "auto", platform="gpu").name == "xla"
    with pytest.raises(ValueError, match="at most 512"):
      chunk_gla_triton(q, q, jnp.zeros((1, 8, 1, 16)), q, interpret=True)

  def test_not_served_on_cpu(self):
    q = jnp.zeros((1, 8, 1, 16))
    with pytest.raises(ValueError, match="runs on \\['gpu'\\], not on cpu"):
      chunk_gla(q, q, q, q, impl="triton")

  def test_bad_path(self):
    q = jnp.zeros((1, 8, 1, 16))
    with pytest.raises(ValueError, match="path must be one of"):
      chunk_gla_triton(q, q, q, q, path="fast", interpret=True)


# ------------------------------------------------------------------------------------------------
# GPU: compiled kernels at realistic shapes
# ------------------------------------------------------------------------------------------------

GPU_CASES = [
    ("bench_head_bf16", Case(T=1024, K=128, V=128, gate="weak", h0=False, B=2, H=4,
                             dtype="bfloat16")),
    ("gla_1p3b_head_bf16", Case(T=500, K=256, V=512, gate="weak", h0=True, seg=True, B=1, H=2,
                                dtype="bfloat16")),
    ("long_parallel_fwd_bf16", Case(T=8192, K=64, V=64, gate="normal", h0=True, B=1, H=2,
                                    dtype="bfloat16")),
    ("strong_seg_f32", Case(T=777, K=64, V=96, gate="strong", h0=True, seg=True, B=2, H=2)),
    ("normal_fp16", Case(T=513, K=48, V=200, gate="normal", h0=True, B=2, H=2, dtype="float16")),
]


@pytest.mark.gpu
class GpuTest(parameterized.TestCase):

  @parameterized.named_parameters(*GPU_CASES)
  def test_compiled_matches_spec(self, case):
    got = jax.jit(functools.partial(outputs_and_grads, chunk_gla_triton))(*make_inputs(case))
    errs = assert_all_close(got, reference(case), TOL[case.dtype])
    print(case.id, errs)

  def test_shard_map_with_check_vma(self):
    _check_shard_map(self, chunk_gla_triton, (1, 1), check_vma=True)

  def test_auto_dispatch_uses_triton(self):
    case = Case(T=256, K=64, V=64, gate="normal", B=2, H=2, dtype="bfloat16")
    q, k, v, g, h0, seg, do, dht = make_inputs(case)
    o_auto, _ = jax.jit(chunk_gla)(q, k, v, g)
    o_tri, _ = jax.jit(chunk_gla_triton)(q, k, v, g)
    np.testing.assert_array_equal(np.asarray(o_auto, np.float32), np.asarray(o_tri, np.float32))



@pytest.mark.gpu
class GpuVsFlaTest(parameterized.TestCase):
  """Last: fla is slow to start at a new shape (autotuning, narrowed here to one config)."""

  def test_against_fla(self):
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    narrow_fla_autotune()  # a correctness check: fla's first config is enough (timing is bench_gla.py's)
    fla_gla = pytest.importorskip("fla.ops.gla")
    case = Case(T=1024, K=64, V=64, gate="weak", h0=True, B=2, H=4, dtype="bfloat16")
    q, k, v, g, h0, _, do, dht = make_inputs(case)
    ours = jax.jit(functools.partial(outputs_and_grads, chunk_gla_triton))(q, k, v, g, h0, None, do,
                                                                         dht)
    t = lambda x: torch.tensor(np.asarray(x, np.float32), device="cuda")
    tq, tk, tv = (t(x).to(torch.bfloat16).requires_grad_() for x in (q, k, v))
    tg, th0 = t(g).requires_grad_(), t(h0).requires_grad_()
    o, ht = fla_gla.chunk_gla(tq, tk, tv, tg, initial_state=th0, output_final_state=True)
    torch.autograd.backward((o, ht), (t(do).to(torch.bfloat16), t(dht)))
    theirs = [x.float().cpu().numpy() for x in (o.detach(), ht.detach(), tq.grad, tk.grad, tv.grad,
                                                 tg.grad, th0.grad)]
    ref = reference(case)
    for name, a, b, r in zip(("o", "ht", "dq", "dk", "dv", "dg", "dh0"), ours, theirs, ref):
      ours_err, fla_err = rel_err(a, r), rel_err(b, r)
      print(f"{name}: ours {ours_err:.2e} fla {fla_err:.2e}")
      # dg: our bf16 dg is ~3× fla's error (4.1e-3 vs 1.3e-3 on an H100, 2026-11-22), still well inside
      # the bf16 tolerance against the float32 reference (BF16_TOL)
      factor = 4 if name == "dg" else 2
      assert ours_err <= max(factor * fla_err, 2e-3), (name, ours_err, fla_err)
      assert ours_err <= BF16_TOL[{"ht": "final_state"}.get(name, name)], (name, ours_err)


if __name__ == "__main__":
  from absl.testing import absltest
  absltest.main()


@pytest.mark.parametrize("K, V, path", [(160, 128, "auto"), (153, 64, "dense"), (64, 192, "auto")])
def test_dims_padded_to_192_use_dividing_tiles(K, V, path):
  """K or V padded to 192 (129..192): every default tile must divide the padded dim (a 128 tile there
  skipped the last 64 columns: non-finite o/dq/dk or a wrong dv). Values and all gradients vs the spec."""
  ks = jax.random.split(jax.random.key(0), 5)
  q, k = (jax.random.normal(ks[i], (1, 100, 1, K)) for i in (0, 1))
  v = jax.random.normal(ks[2], (1, 100, 1, V))
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (1, 100, 1, K))) / 16  # weak gates: the dense path
  cot = jax.random.normal(ks[4], (1, 100, 1, V))
  kw = {} if path == "auto" else {"path": path}
  tri = lambda *a: jnp.sum(chunk_gla_triton(*a, interpret=True, **kw)[0] * cot)
  ref = lambda *a: jnp.sum(naive_recurrent_gla(*a)[0] * cot)
  for got, want in zip(jax.grad(tri, argnums=(0, 1, 2, 3))(q, k, v, g),
                       jax.grad(ref, argnums=(0, 1, 2, 3))(q, k, v, g)):
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("scan", [False, True])
def test_sequence_parallel_forward_keeps_its_states_for_the_backward(scan):
  """The sequence-parallel forward's per-chunk states are the backward's residuals (keep_states,
  default): one state pass fewer in the backward than with keep_states=False, the same gradients
  (the same kernel computes h either way), both equal to the spec's."""
  case = Case(T=130, K=32, V=16, gate="normal", h0=True, seg=True, B=1)
  q, k, v, g, h0, seg, do, dht = make_inputs(case)
  blocks = _blocks(case, dict(fwd_parallel=True, state_scan=scan))

  def grads(keep):
    def f(q, k, v, g, h0):
      return chunk_gla_triton(q, k, v, g, initial_state=h0, output_final_state=True, segment_ids=seg,
                              interpret=True, block_sizes=blocks, keep_states=keep)
    return lambda: jax.vjp(f, q, k, v, g, h0)[1]((do, dht))

  name = "gla_chunk_summaries_k" if scan else "gla_chunk_state_pass"
  count = lambda keep: str(jax.make_jaxpr(grads(keep))()).count(name)
  # the forward's pass alone, or with the backward's recompute (a jaxpr names a kernel 1-3 times per call)
  assert count(True) > 0 and count(False) == 2 * count(True)
  kept, recomputed = jax.jit(grads(True))(), jax.jit(grads(False))()
  for a, b in zip(kept, recomputed):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  _, _, *ref = reference(case)
  for name_, a, b in zip(("dq", "dk", "dv", "dg", "dh0"), kept, ref):
    assert rel_err(a, b) < 1e-4, (name_, rel_err(a, b))


def test_fused_forward_recomputes_the_states():
  """The fused forward keeps h in registers, so its backward recomputes them (one state pass)."""
  case = Case(T=70, K=16, V=16, gate="normal", h0=False, B=1, H=1)
  q, k, v, g, _, _, do, _ = make_inputs(case)
  blocks = _blocks(case, dict(fwd_parallel=False, state_scan=False))
  loss = lambda q, k, v, g: jnp.sum(chunk_gla_triton(q, k, v, g, interpret=True, block_sizes=blocks)[0] * do)
  assert str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, g)).count("gla_chunk_state_pass") == 1


def test_keep_states_must_be_a_bool():
  q = jnp.zeros((1, 8, 1, 16))
  with pytest.raises(ValueError, match="keep_states must be True or False"):
    chunk_gla_triton(q, q, q, q, interpret=True, keep_states="yes")
