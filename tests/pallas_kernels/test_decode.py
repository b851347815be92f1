"""The fused decode-step kernels (T = 1) against the XLA step, in Pallas interpret mode on CPU.

GLA (`pallas_kernels/gla/triton/decode.py`) and simple GLA (`pallas_kernels/simple_gla/triton/decode.py`,
scalar / constant / no gate): o and the new state against each op's XLA `_step` ("xla" impl) for K, V in
{16, 48, 100, 160} (K ≠ V, masked tiles), bf16 inputs, no initial state, per-row resets; every gradient
through the custom_vjp against the XLA step's (random cotangents); argument errors; the dispatch wiring
(`decode_impl`, "auto" on CPU and GPU); a tiny GLA model's `generate` with the kernel in interpret mode.
The gpu-marked tests run the compiled Pallas kernel and the jax-triton one against "xla" on the GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.common.triton.decode import DecodeOptions
from pallas_kernels.gla import ops as gla_ops
from pallas_kernels.gla.ops import fused_recurrent_gla
from pallas_kernels.gla.triton import decode as gla_decode
from pallas_kernels.simple_gla import ops as sg_ops
from pallas_kernels.simple_gla.ops import fused_recurrent_simple_gla
from pallas_kernels.simple_gla.triton import decode as sg_decode
from tests.pallas_kernels.gla_testing import rel_err

F32_TOL = 1e-5  # both paths compute in float32; only the order of the K sum differs
BF16_O_TOL = 8e-3  # o is rounded to bf16 (2^-8 relative) after the same float32 sums
DIMS = [(16, 16), (48, 100), (100, 160), (160, 48)]


def _inputs(B, H, K, V, dtype=jnp.float32, seed=0):
  ks = jax.random.split(jax.random.key(seed), 8)
  q = jax.random.normal(ks[0], (B, 1, H, K)).astype(dtype)
  k = jax.random.normal(ks[1], (B, 1, H, K)).astype(dtype)
  v = jax.random.normal(ks[2], (B, 1, H, V)).astype(dtype)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, 1, H, K)))  # float32 gates
  h0 = jax.random.normal(ks[4], (B, H, K, V))
  do = jax.random.normal(ks[5], (B, 1, H, V)).astype(dtype)
  dht = jax.random.normal(ks[6], (B, H, K, V))
  gs = jax.nn.log_sigmoid(jax.random.normal(ks[7], (B, 1, H)))
  return q, k, v, g, h0, do, dht, gs


def _assert_close(got, ref, tol):
  errs = {i: rel_err(a, b) for i, (a, b) in enumerate(zip(got, ref)) if b is not None}
  bad = {i: e for i, e in errs.items() if not e <= (tol[i] if isinstance(tol, (list, tuple)) else tol)}
  assert not bad, f"relative errors over bound: {bad}; all: {errs}"


# ------------------------------------------------------------------------------------------------
# GLA
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K,V", DIMS)
def test_gla_values_and_grads_match_xla(K, V):
  q, k, v, g, h0, do, dht, _ = _inputs(2, 2, K, V)

  @functools.partial(jax.jit, static_argnums=0)
  def run(impl, q, k, v, g, h0):
    f = lambda q, k, v, g, h0: fused_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True,
                                                    impl=impl)
    (o, ht), vjp = jax.vjp(f, q, k, v, g, h0)
    return (o, ht, *vjp((do, dht)))

  _assert_close(run("triton_interpret", q, k, v, g, h0), run("xla", q, k, v, g, h0), F32_TOL)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gla_low_precision_inputs(dtype):
  q, k, v, g, h0, *_ = _inputs(2, 3, 48, 100, jnp.dtype(dtype), seed=1)
  run = jax.jit(lambda impl, *a: fused_recurrent_gla(*a, initial_state=h0, output_final_state=True,
                                                     impl=impl), static_argnums=0)
  got = run("triton_interpret", q, k, v, g.astype(dtype))
  ref = run("xla", q, k, v, g.astype(dtype))
  assert got[0].dtype == jnp.dtype(dtype) and got[1].dtype == jnp.float32
  _assert_close(got, ref, [BF16_O_TOL, F32_TOL])


def test_gla_without_initial_state_and_neg_inf_gates():
  q, k, v, g, *_ = _inputs(2, 2, 16, 48, seed=2)
  g = g.at[0, 0, 0, :5].set(-jnp.inf)  # a full reset of some keys is legal
  got = fused_recurrent_gla(q, k, v, g, output_final_state=True, impl="triton_interpret")
  ref = fused_recurrent_gla(q, k, v, g, output_final_state=True, impl="xla")
  _assert_close(got, ref, F32_TOL)
  assert fused_recurrent_gla(q, k, v, g, impl="triton_interpret")[1] is None


def test_gla_resets_and_tiles():
  """The low-level step: rows flagged in `reset` drop their state (the XLA step's start_t), under any
  V tile (bv = 16 leaves a partial tile at V = 100; 64 covers it whole with a masked tail)."""
  q, k, v, g, h0, do, dht, _ = _inputs(3, 2, 100, 100, seed=3)
  q, k, v, g = (x[:, 0] for x in (q, k, v, g))
  reset = jnp.array([True, False, True])
  opts = DecodeOptions.make("vector", scale=100 ** -0.5, B=3, H=2, K=100, V=100, has_h0=True,
                            has_reset=True)
  ref = gla_decode.xla_step(opts, q, k, v, g, h0, reset.astype(jnp.int32))
  for bv in (16, 64):
    step = jax.jit(functools.partial(gla_decode.gla_decode_step, interpret=True, bv=bv))
    _assert_close(step(q, k, v, g, h0, reset), ref, F32_TOL)
  no_reset = gla_decode.xla_step(opts, q, k, v, g, h0, None)
  assert rel_err(ref[1][1], no_reset[1][1]) == 0.0 and rel_err(ref[1][0], no_reset[1][0]) > 0.1
  # gradients through the reset (the state's gradient is zero on reset rows)
  f = lambda q, k, v, g, h0: gla_decode.gla_decode_step(q, k, v, g, h0, reset, interpret=True)
  fr = lambda q, k, v, g, h0: gla_decode.xla_step(opts, q, k, v, g, h0, reset.astype(jnp.int32))
  cts = (do[:, 0], dht)
  grads = jax.jit(lambda f, *a: jax.vjp(f, *a)[1](cts), static_argnums=0)
  got_g, ref_g = grads(f, q, k, v, g, h0), grads(fr, q, k, v, g, h0)
  _assert_close(got_g, ref_g, F32_TOL)
  assert float(jnp.max(jnp.abs(got_g[4][0]))) == 0.0


def test_gla_jit_donated_state():
  """Under jit with the state donated the kernel writes in place; values are unchanged."""
  q, k, v, g, h0, *_ = _inputs(2, 2, 16, 32, seed=4)
  step = jax.jit(functools.partial(fused_recurrent_gla, output_final_state=True, impl="triton_interpret"),
                 donate_argnames="initial_state")
  ref = fused_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, impl="xla")
  got = step(q, k, v, g, initial_state=jnp.array(h0))
  _assert_close(got, ref, F32_TOL)


# ------------------------------------------------------------------------------------------------
# simple GLA
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", ["scalar", "constant", "none"])
@pytest.mark.parametrize("K,V", [(48, 100), (160, 16)])
def test_simple_gla_values_and_grads_match_xla(gate, K, V):
  H = 2
  q, k, v, _, h0, do, dht, gs = _inputs(2, H, K, V, seed=5)
  gamma = jnp.log1p(-2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32)))
  gkw = {"scalar": {"g": gs}, "constant": {"g_gamma": gamma}, "none": {}}[gate]

  @functools.partial(jax.jit, static_argnums=0)
  def run(impl, *args):
    def f(q, k, v, h0, *g):  # g: the scalar gate, differentiated; g_gamma is a constant of the op
      kw = {"g": g[0]} if g else gkw
      return fused_recurrent_simple_gla(q, k, v, **kw, initial_state=h0, output_final_state=True,
                                        impl=impl)
    (o, ht), vjp = jax.vjp(f, *args)
    return (o, ht, *vjp((do, dht)))

  args = (q, k, v, h0) + ((gs,) if gate == "scalar" else ())
  _assert_close(run("triton_interpret", *args), run("xla", *args), F32_TOL)


def test_simple_gla_bf16_resets_and_constant_has_no_gradient():
  H = 4
  q, k, v, _, h0, do, dht, gs = _inputs(3, H, 100, 48, jnp.bfloat16, seed=6)
  q, k, v, gs = (x[:, 0] for x in (q, k, v, gs))
  gamma = jnp.log1p(-2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32)))
  reset = jnp.array([0, 1, 0], jnp.int32)
  for kw, gate in (({"g": gs}, "scalar"), ({"g_gamma": gamma}, "constant"), ({}, "none")):
    got = jax.jit(lambda q, k, v, h0, reset, kw: sg_decode.simple_gla_decode_step(
        q, k, v, h0=h0, reset=reset, interpret=True, **kw))(q, k, v, h0, reset, kw)
    opts = DecodeOptions.make(gate, scale=100 ** -0.5, B=3, H=H, K=100, V=48, has_h0=True, has_reset=True)
    ref = sg_decode.xla_step(opts, q, k, v, kw.get("g", kw.get("g_gamma")), h0, reset)
    assert got[0].dtype == jnp.bfloat16
    _assert_close(got, ref, [BF16_O_TOL, F32_TOL])
  dgamma = jax.jit(jax.grad(lambda gm: jnp.sum(sg_decode.simple_gla_decode_step(
      q, k, v, h0=h0, g_gamma=gm, interpret=True)[1])))(gamma)
  assert float(jnp.max(jnp.abs(dgamma))) == 0.0


# ------------------------------------------------------------------------------------------------
# errors and dispatch
# ------------------------------------------------------------------------------------------------


def test_bad_arguments():
  q = k = jnp.ones((2, 3, 16))
  v = jnp.ones((2, 3, 32))
  g = jnp.zeros((2, 3, 16))
  with pytest.raises(ValueError, match="g must have the shape of q"):
    gla_decode.gla_decode_step(q, k, v, g[..., :8], interpret=True)
  with pytest.raises(ValueError, match="v must have shape"):
    gla_decode.gla_decode_step(q, k, v[:1], g, interpret=True)
  with pytest.raises(ValueError, match="h0 must have shape"):
    gla_decode.gla_decode_step(q, k, v, g, jnp.zeros((2, 3, 16, 16)), interpret=True)
  with pytest.raises(ValueError, match="reset must have shape"):
    gla_decode.gla_decode_step(q, k, v, g, reset=jnp.zeros((3,)), interpret=True)
  with pytest.raises(ValueError, match="K and V must be at most 512"):
    gla_decode.gla_decode_step(jnp.ones((1, 1, 520)), jnp.ones((1, 1, 520)), v[:1, :1],
                               jnp.zeros((1, 1, 520)), interpret=True)
  with pytest.raises(ValueError, match="bv must be a power of two"):
    gla_decode.gla_decode_step(q, k, v, g, interpret=True, bv=24)
  with pytest.raises(ValueError, match="gate must be one of"):
    DecodeOptions.make("per-key", scale=1.0, B=1, H=1, K=16, V=16, has_h0=False, has_reset=False)
  with pytest.raises(ValueError, match="at most one of g and g_gamma"):
    sg_decode.simple_gla_decode_step(q, k, v, g[..., 0], g_gamma=jnp.zeros(3), interpret=True)
  with pytest.raises(ValueError, match=r"g_gamma must have shape \[H\]"):
    sg_decode.simple_gla_decode_step(q, k, v, g_gamma=jnp.zeros(2), interpret=True)
  q4, k4, v4, g4 = q[:, None], k[:, None], v[:, None], g[:, None]
  with pytest.raises(ValueError, match="runs on \\['gpu'\\], not on cpu"):
    fused_recurrent_gla(q4, k4, v4, g4, impl="triton")
  two = lambda x: jnp.concatenate([x, x], axis=1)
  with pytest.raises(ValueError, match="serves one token per row"):
    fused_recurrent_gla(two(q4), two(k4), two(v4), two(g4), impl="triton_interpret")
  with pytest.raises(ValueError, match="serves one token per row"):
    fused_recurrent_simple_gla(two(q4), two(k4), two(v4), impl="triton_interpret")


def test_dispatch():
  op = gla_ops.FUSED_RECURRENT_GLA
  info = op.check(*(jnp.ones((1, 1, 2, 16)),) * 4)
  long = op.check(*(jnp.ones((1, 5, 2, 16)),) * 4)
  assert op.select(info, platform="cpu").name == "xla"
  assert op.select(info, platform="gpu").name == "xla"  # measured faster on the H200 (gla/ops.py)
  assert op.select(long, platform="gpu").name == "xla"
  sop = sg_ops.FUSED_RECURRENT_SIMPLE_GLA
  assert sop.select(sop.check(*(jnp.ones((1, 1, 2, 16)),) * 3), platform="gpu").name == "xla"
  with gla_ops.decode_impl("triton_interpret"):
    assert op.select(info).name == "triton_interpret"
    assert op.select(long).name == "xla"
  assert op.select(info).name == "xla"  # restored
  with pytest.raises(ValueError, match="impl must be one of"):
    with gla_ops.decode_impl("nope"):
      pass
  with pytest.raises(ValueError, match="not on cpu"):
    with sg_ops.decode_impl("triton"):
      pass
  jt = pytest.importorskip("pallas_kernels.gla.jax_triton.decode")
  assert ("jax_triton" in gla_ops.FUSED_RECURRENT_GLA.available_impls()) == (jt.IMPORT_ERROR is None)


def test_generate_with_interpret_kernel_equals_xla():
  """A tiny GLA model's greedy `generate` with the decode steps on the Pallas kernel (interpret mode,
  through `decode_impl`) equals the XLA steps'; its decode_step really holds the kernel."""
  from flax import nnx
  from gla_jax.generate import generate
  from gla_jax.models import build_model, presets
  cfg = presets.gla_tiny(initializer_range=0.2, chunk_size=16, num_hidden_layers=1)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  prompt = jax.random.randint(jax.random.key(1), (2, 5), 0, cfg.vocab_size, dtype=jnp.int32)
  cache = model.init_cache(2, 8)
  tok = prompt[:, 0]
  jax.clear_caches()  # generate's jit cache keys on the model, not on the decode impl
  with gla_ops.decode_impl("triton_interpret"):
    assert "pallas_call" in str(jax.make_jaxpr(lambda t, c: model.decode_step(t, c))(tok, cache))
    got = generate(model, prompt, max_new_tokens=6, greedy=True)
    got_logits, _ = model.decode_step(tok, cache)
  jax.clear_caches()
  assert "pallas_call" not in str(jax.make_jaxpr(lambda t, c: model.decode_step(t, c))(tok, cache))
  ref = generate(model, prompt, max_new_tokens=6, greedy=True)
  ref_logits, _ = model.decode_step(tok, cache)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
  assert rel_err(got_logits, ref_logits) < 1e-5


# ------------------------------------------------------------------------------------------------
# GPU: the compiled kernels
# ------------------------------------------------------------------------------------------------


GPU_SHAPES = [(64, 4, 128, 256), (1, 4, 256, 512), (3, 2, 100, 48)]  # 340M, 1.3B layers; masked tiles


def _gpu_impls():
  return [i for i in ("triton", "jax_triton") if i in gla_ops.FUSED_RECURRENT_GLA.available_impls()]


@pytest.mark.gpu
@pytest.mark.parametrize("B,H,K,V", GPU_SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_gla_kernels_match_xla(B, H, K, V, dtype):
  if dtype == "float32":  # XLA's einsum at "highest" and the kernels' float32 sums
    tol = [F32_TOL, F32_TOL]
  else:
    tol = [BF16_O_TOL, F32_TOL]
  q, k, v, g, h0, do, dht, _ = _inputs(B, H, K, V, jnp.dtype(dtype), seed=7)
  impls = _gpu_impls()
  assert "triton" in impls
  if "jax_triton" not in impls:
    print(f"DECODE_GPU jax_triton not available: {pytest.importorskip('pallas_kernels.gla.jax_triton.decode').IMPORT_ERROR}")

  def run(impl):
    f = jax.jit(lambda q, k, v, g, h0: jax.vjp(
        lambda *a: fused_recurrent_gla(*a[:4], initial_state=a[4], output_final_state=True, impl=impl),
        q, k, v, g, h0))
    (o, ht), vjp = f(q, k, v, g, h0)
    return (o, ht, *vjp((do, dht)))

  ref = run("xla")
  for impl in impls:
    got = run(impl)
    print(f"DECODE_GPU {impl} {B},{H},{K},{V} {dtype}: o {rel_err(got[0], ref[0]):.2e} "
          f"h {rel_err(got[1], ref[1]):.2e}")
    _assert_close(got[:2], ref[:2], tol)
    _assert_close(got[2:], ref[2:], 1e-4)  # both the XLA step's vjp


@pytest.mark.gpu
@pytest.mark.parametrize("gate", ["scalar", "constant", "none"])
def test_gpu_simple_gla_kernel_matches_xla(gate):
  B, H, K, V = 4, 4, 128, 160
  q, k, v, _, h0, *_, gs = _inputs(B, H, K, V, jnp.bfloat16, seed=8)
  gamma = jnp.log1p(-2.0 ** (-5.0 - jnp.arange(H, dtype=jnp.float32)))
  kw = {"scalar": {"g": gs}, "constant": {"g_gamma": gamma}, "none": {}}[gate]
  run = lambda impl: jax.jit(lambda q, k, v, h0: fused_recurrent_simple_gla(
      q, k, v, **kw, initial_state=h0, output_final_state=True, impl=impl))(q, k, v, h0)
  _assert_close(run("triton"), run("xla"), [BF16_O_TOL, F32_TOL])
  _assert_close(run("auto"), run("xla"), 0.0)  # "auto" decodes with XLA on GPUs (measured faster)


@pytest.mark.gpu
def test_gpu_decode_steps_in_a_loop_keep_state():
  """64 decode steps in a jitted scan (the state carried, updated in place) equal the XLA steps."""
  B, H, K, V, T = 8, 4, 128, 256, 64
  ks = jax.random.split(jax.random.key(9), 4)
  q = jax.random.normal(ks[0], (T, B, 1, H, K), jnp.bfloat16)
  k = jax.random.normal(ks[1], (T, B, 1, H, K), jnp.bfloat16)
  v = jax.random.normal(ks[2], (T, B, 1, H, V), jnp.bfloat16)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (T, B, 1, H, K))) / 16

  def loop(impl):
    def body(h, xs):
      o, h = fused_recurrent_gla(*xs, initial_state=h, output_final_state=True, impl=impl)
      return h, o
    return jax.jit(lambda: jax.lax.scan(body, jnp.zeros((B, H, K, V)), (q, k, v, g)))()

  ref = loop("xla")
  for impl in _gpu_impls():
    got = loop(impl)
    _assert_close(got[::-1], ref[::-1], [BF16_O_TOL, 1e-5])
