"""Tile helpers of the Mosaic GPU kernels (pallas_kernels/*/mosaic_gpu/kernel.py), one code path for
interpret mode (JAX 0.10's CPU interpreter) and the compiled kernel.

Every matmul is a `plgpu.wgmma` of two SMEM tiles (`mm`, `mma`), none transposed in SMEM and none read from
registers: the layout that interpret mode runs. Register values carry the WGMMA layout when compiled;
`read`, `zeros` and `iota` give it explicitly there and fall back to plain jnp/lax values interpreted
(`plgpu.load` and the layout casts do not exist in interpret mode).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import compat

pl = compat.pl
F32 = jnp.float32
WGMMA = plgpu.Layout.WGMMA
ROWS = WGMMA.reduce(1)  # one value per row of a WGMMA tile
COLS = WGMMA.reduce(0)  # one value per column


def smem(shape, dtype):
  """An SMEM tile tiled and swizzled for TMA and wgmma (minor dim = last dim)."""
  dtype = jnp.dtype(dtype)
  swizzle = plgpu.find_swizzle(shape[-1] * dtype.itemsize * 8)
  return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, swizzle // dtype.itemsize)),
                                              plgpu.SwizzleTransform(swizzle)))


def read(ref, layout, interpret: bool, optimized: bool = True):
  """A whole SMEM ref into registers: `plgpu.load` with `layout` compiled, `ref[...]` interpreted.
  `optimized=False` for a WGMMA-layout load of an untiled buffer (it has bank conflicts)."""
  if interpret:
    return ref[...]
  return plgpu.load(ref, (), layout=layout, optimized=optimized)


def zeros(shape, interpret: bool):
  """float32 zeros in the WGMMA layout (an accumulator's start)."""
  z = jnp.zeros(shape, F32)
  return z if interpret else plgpu.layout_cast(z, WGMMA)


def iota(shape, dim: int, interpret: bool):
  """int32 indices along `dim` in the WGMMA layout (for masks)."""
  if interpret:
    return lax.broadcasted_iota(jnp.int32, shape, dim)
  return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=WGMMA)


def mm(a_ref, b_ref, shape):
  """a @ b of two SMEM tiles on the tensor cores, float32 accumulation, as registers. The barrier keeps
  arithmetic on the result after the accumulator's wait."""
  def body(acc):
    plgpu.wgmma(acc, a_ref, b_ref)
    return acc[...]
  return lax.optimization_barrier(pl.run_scoped(body, plgpu.ACC(shape, F32)))


def mma(init, pairs, interpret: bool):
  """init + Σ a @ b over `pairs` of SMEM tiles (a_ref, b_ref) on the tensor cores, float32. Compiled,
  the wgmmas accumulate into `init` itself (`pl.run_state` of an initialised accumulator): issued back
  to back, one wait, and no second [M, N] value live beside the accumulator — the register budget of a
  kernel whose float32 state already holds half of them. Interpreted (JAX 0.10's interpret mode has no
  run_state), init + `mm` of each pair: the same sum."""
  if interpret:
    for a_ref, b_ref in pairs:
      init = init + mm(a_ref, b_ref, init.shape)
    return init

  def body(acc):
    for a_ref, b_ref in pairs:
      plgpu.wgmma(acc, a_ref, b_ref)
  return lax.optimization_barrier(pl.run_state(body)(plgpu.ACC.init(init)))


def rows(x, shape):
  """A per-row vector [R] broadcast over the columns of a [R, W] tile."""
  return lax.broadcast_in_dim(x, shape, [0])


def cols(x, shape):
  """A per-column vector [W] broadcast over the rows of a [R, W] tile."""
  return lax.broadcast_in_dim(x, shape, [1])


def compiler_params():
  """Lane semantics (explicit layouts), spelled out: JAX 0.11 changed the default to Warpgroup."""
  return plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane)
