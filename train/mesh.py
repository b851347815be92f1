"""Device mesh over (data, fsdp, tensor), logical-axis rules, and the shardings of params and batches.

Parameters carry logical axis names (`nnx.with_partitioning(init, ("embed", "mlp"))`); `LOGICAL_RULES` maps
each name to one mesh axis. The batch dimension is split over (data, fsdp) — fsdp is ZeRO-3: it shards the
batch like data parallelism *and* the params / optimizer state along their "embed" dimension; XLA gathers a
layer's weights when it needs them. tensor splits heads, MLP width and vocabulary (Megatron style); the
activations' shardings follow by GSPMD propagation.

Multi-host: `init_distributed` calls `jax.distributed.initialize`, each host feeds its own slice of the
global batch and `global_batch` assembles them with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from train.config import ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over these (in this order)

# logical parameter axis -> mesh axis (None = replicated). Names not listed are replicated.
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"),  # model width D: ZeRO-3 sharding of every matrix touching the residual stream
    ("vocab", "tensor"),  # embedding rows / lm_head columns
    ("heads", "tensor"),  # query / output-gate projections, by head
    ("kv", "tensor"),  # key / value projections, by head (GQA keeps whole kv heads per shard)
    ("mlp", "tensor"),  # SwiGLU intermediate width F
    ("norm", None),  # RMSNorm weights: small, replicated
    ("lowrank", None),  # the 16-wide low-rank gate projection
    ("conv", None),  # short-conv kernel taps
    ("layers", None),  # scan_layers: the stacked layer axis of a run's params (each layer whole per device)
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ mesh


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
  """Resolves -1 and checks that the sizes multiply to `num_devices`."""
  sizes = [config.data, config.fsdp, config.tensor]
  for name, size in zip(AXES, sizes):
    if size == 0 or size < -1:
      raise ConfigError(f"mesh.{name}={size}: must be a positive size or -1")
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh {dict(zip(AXES, sizes))}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(
          f"mesh {dict(zip(AXES, sizes))}: the fixed axes ({known} devices) do not divide the {num_devices} "
          f"available devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(
        f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices but {num_devices} are available "
        f"(set one axis to -1 to take the rest)")
  return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axes (GSPMD propagation from annotated params and batches)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_split(mesh: Mesh) -> int:
  """Number of shards of the batch dimension."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(batch_size: int, mesh: Mesh, grad_accum: int = 1, process_count: int | None = None) -> None:
  """The global batch must split evenly over micro-batches, batch shards and hosts."""
  process_count = jax.process_count() if process_count is None else process_count
  split = batch_split(mesh)
  if batch_size % (grad_accum * split):
    raise ConfigError(
        f"data.batch_size={batch_size} must be a multiple of grad_accum * data * fsdp = "
        f"{grad_accum} * {mesh.shape['data']} * {mesh.shape['fsdp']} = {grad_accum * split}")
  if batch_size % process_count:
    raise ConfigError(f"data.batch_size={batch_size} must be a multiple of the {process_count} processes")


# ------------------------------------------------------------------------------------------------ rules


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, str | None]] = LOGICAL_RULES) -> P:
  """PartitionSpec for one array from its logical names.

  A name maps to its rule's mesh axis when that axis is not already used by an earlier dimension and
  divides the dimension; otherwise the dimension is replicated (an uneven split would pad every step).
  """
  if not names:
    return P()
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(names, shape):
    axis = table.get(name) if name is not None else None
    if axis is None or axis in used or mesh.shape[axis] == 1:
      spec.append(None)
      continue
    if dim % mesh.shape[axis]:
      log.info("replicating a dim of size %d named %r: mesh axis %r has size %d", dim, name, axis,
               mesh.shape[axis])
      spec.append(None)
      continue
    used.add(axis)
    spec.append(axis)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def logical_names(abstract_state: Any) -> Any:
  """Pure dict of the logical axis names (tuple or None) of each Variable in an nnx State."""
  def names(v):
    meta = v.get_metadata() if isinstance(v, nnx.Variable) else {}
    sharding = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
    return tuple(sharding) if sharding else None
  tree = jax.tree.map(names, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def param_specs(abstract_params: Mapping, names: Mapping, mesh: Mesh) -> Any:
  """Pure dict of PartitionSpecs for a pure dict of abstract arrays and their logical names."""
  return jax.tree.map(
      lambda a, n: logical_to_spec(n, a.shape, mesh), abstract_params, names,
      is_leaf=lambda x: x is None or isinstance(x, tuple))


def named(mesh: Mesh, specs: Any) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


# ------------------------------------------------------------------------------------------------ batches


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, ...] arrays: B split over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's rows (this host's contiguous slice of the global batch) into global arrays."""
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in local.items():
    value = np.asarray(value)
    global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out


# ------------------------------------------------------------------------------------------------ hosts


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Starts multi-host JAX from flags or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
  environment variables; on TPU pods and SLURM `auto` lets JAX detect everything. Returns whether it ran."""
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator_address is None:
    return False
  if coordinator_address == "auto":
    jax.distributed.initialize()
    return True
  if num_processes is None or process_id is None:
    raise ConfigError("--coordinator_address needs --num_processes and --process_id (or JAX_NUM_PROCESSES, "
                      "JAX_PROCESS_ID)")
  # CPU processes exchange data through gloo (this only affects the CPU backend; GPUs use NCCL, TPUs ICI)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  return True


def describe(mesh: Mesh) -> str:
  return (f"mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} tensor={mesh.shape['tensor']} over "
          f"{mesh.devices.size} {jax.devices()[0].platform} devices, {jax.process_count()} process(es)")
