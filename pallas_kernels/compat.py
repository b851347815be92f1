"""The one place that knows which JAX version is running.

gla-jax runs on JAX 0.10.2 (CPU dev machines, CI) and JAX 0.11.x (GPU machines). Every import or call
whose spelling differs between them lives here; the rest of the code imports from this module.
"""

from __future__ import annotations

import functools

import jax
from jax.experimental import pallas as pl  # noqa: F401  (re-exported)
from jax.experimental.pallas import tpu as pltpu  # noqa: F401
from jax.experimental.pallas import triton as pltriton  # noqa: F401

JAX_VERSION: tuple[int, ...] = tuple(int(p) for p in jax.__version__.split(".")[:3] if p.isdigit())


def backend_platform() -> str:
  """The default backend as one of "cpu", "gpu", "tpu" (CUDA and ROCm both read "gpu")."""
  name = jax.default_backend().lower()
  if name in ("cuda", "rocm", "gpu"):
    return "gpu"
  return name


@functools.cache
def tpu_interpret_params(detect_races: bool = True):
  """`interpret=` value that runs a Mosaic TPU kernel on CPU with race and uninitialised-read checks."""
  return pltpu.InterpretParams(detect_races=detect_races, uninitialized_memory="nan")


@functools.cache
def gpu_interpret_params():
  """`interpret=` value that runs a Mosaic GPU kernel on CPU: `plgpu.InterpretGPUParams()`, public from
  JAX 0.11; JAX 0.10 has it only in `jax._src.pallas.mosaic_gpu.interpret.params`."""
  from jax.experimental.pallas import mosaic_gpu as plgpu  # imported on use: Mosaic GPU is optional
  cls = getattr(plgpu, "InterpretGPUParams", None)
  if cls is None:
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams as cls
  return cls()


def triton_compiler_params(num_warps: int, num_stages: int):
  """Explicit Triton compiler params; without them JAX 0.10 lowers a GPU pallas_call to Mosaic GPU."""
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def pallas_out_struct(shape, dtype, like) -> jax.ShapeDtypeStruct:
  """A pallas_call `out_shape` entry that varies over the same manual mesh axes as the array `like`.

  Inside `jax.shard_map` with check_vma (the default) every pallas_call output must say how it varies
  over the manual axes: JAX 0.10 spells it `manual_axis_type=`, earlier versions `vma=`."""
  aval = jax.typeof(like)
  mat = getattr(aval, "manual_axis_type", None)
  if mat is not None:
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)
  vma = getattr(aval, "vma", None)
  if vma is not None:
    return jax.ShapeDtypeStruct(shape, dtype, vma=vma)
  return jax.ShapeDtypeStruct(shape, dtype)


shard_map = jax.shard_map


def mesh_axes_of_type(mesh, kind: str) -> tuple[str, ...]:
  """Names of `mesh`'s axes whose AxisType is `kind` ("Auto", "Explicit" or "Manual"), in mesh order.

  Read from `axis_types` (spelled the same in JAX 0.10 and 0.11) rather than the newer
  `manual_axes` / `explicit_axes` properties."""
  want = getattr(jax.sharding.AxisType, kind)
  return tuple(name for name, t in zip(mesh.axis_names, mesh.axis_types) if t == want)
