"""One decode step (T = 1) of the recurrent ops as one Pallas Triton kernel: the state crosses HBM twice.

    o, h = decode_step(q, k, v, gate, h0, reset, opts)       # DecodeOptions.make(...)

For each (b, h) and V tile one program loads its state tile h [Kp, BV] (float32) once and does

    h ← d · h + kᵀ v ;   o = scale · q h

with d the decay of the gate kind (docs/ops.md): "vector" e^{g} per key (GLA), "scalar" e^{g} per
row and head, "constant" e^{g_gamma} per head (simple GLA), "none" 1; d = 0 on rows that `reset` marks
(a new document). It then writes o [BV] and h over the input state (`input_output_aliases`): one read and
one write of the state, the floor of a decode step's HBM traffic. XLA's form (the `_step` of each op's
fused_recurrent.py) does the update, then the einsum as a second pass: read, write, read.

Layout: q, k, vector g [B·H, K]; v, o [B·H, V]; state [B·H, K, V] (the op's [B, H, ·] arrays reshaped,
no copy); scalar g [B·H], g_gamma [H], reset [B] int32, read as scalars by each program. Grid
(B·H, ⌈V / BV⌉). K is whole in the block, padded to Kp (a power of two ≥ 16); when K < Kp or BV does
not divide V, the loads and stores are masked (the arrays are never padded: padding the state would
copy it every step). Kp · BV floats live in registers per program (`DecodeOptions.make` keeps it ≤ 16K).

The kernels carry no gradient of their own: `gla/triton/decode.py` and `simple_gla/triton/decode.py`
wrap them in a custom_vjp whose backward is the XLA step's vjp.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import compat

pl = compat.pl
F32 = jnp.float32
GATES = ("vector", "scalar", "constant", "none")
MAX_DIM = 512  # K and V of the decode kernels (a [512, 16] state tile is the largest register block)
NUM_SMS = 132  # H100 / H200: the V tile shrinks until the grid has ~2 programs per SM


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, math.ceil(math.log2(n)))


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """Static facts of one decode-step call; hashable (the custom_vjp's non-differentiable argument)."""

  gate: str  # one of GATES
  scale: float
  B: int
  H: int
  K: int  # true dims (the arrays are not padded)
  V: int
  Kp: int  # K padded to a power of two >= 16 (the block's K)
  bv: int  # V tile (a power of two >= 16)
  num_warps: int
  has_h0: bool
  has_reset: bool
  interpret: bool = False

  @classmethod
  def make(cls, gate: str, *, scale: float, B: int, H: int, K: int, V: int, has_h0: bool,
           has_reset: bool, interpret: bool = False, bv: int | None = None,
           num_warps: int | None = None) -> "DecodeOptions":
    """Options with the default tiles: BV the widest power of two with Kp·BV ≤ 16K floats, halved (down
    to 16) while the grid has fewer than 2 programs per SM (decoding one sequence: B·H is small)."""
    if gate not in GATES:
      raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    if not (1 <= K <= MAX_DIM and 1 <= V <= MAX_DIM):
      raise ValueError(f"K and V must be in [1, {MAX_DIM}], got K={K}, V={V}")
    Kp, Vp = max(16, _pow2_at_least(K)), max(16, _pow2_at_least(V))
    if bv is None:
      bv = min(Vp, max(16, 16384 // Kp))
      while bv > 16 and B * H * -(-V // bv) < 2 * NUM_SMS:
        bv //= 2
    elif bv < 16 or bv & (bv - 1) or bv > Vp:
      raise ValueError(f"bv must be a power of two in [16, {Vp}], got {bv}")
    if num_warps is None:
      num_warps = 4 if Kp * bv <= 8192 else 8
    return cls(gate=gate, scale=float(scale), B=B, H=H, K=K, V=V, Kp=Kp, bv=bv, num_warps=num_warps,
               has_h0=has_h0, has_reset=has_reset, interpret=interpret)

  @property
  def nv(self) -> int:
    return -(-self.V // self.bv)

  @property
  def state_bytes(self) -> int:
    """Bytes of one float32 state [B, H, K, V] (a step reads and writes it once)."""
    return 4 * self.B * self.H * self.K * self.V


# ------------------------------------------------------------------------------------------------
# the kernel
# ------------------------------------------------------------------------------------------------


def _load(ref, mask):
  """The whole block as float32; masked (0 outside) when it reaches past the array."""
  if mask is None:
    return ref[...].astype(F32)
  return compat.pltriton.load(ref, mask=mask, other=0.0).astype(F32)


def _store(ref, x, mask):
  x = x.astype(ref.dtype)
  if mask is None:
    ref[...] = x
  else:
    compat.pltriton.store(ref, x, mask=mask)


def decode_kernel(*refs, opts: DecodeOptions):
  """refs: q, k, v, [g], [h0], [reset], o, ht (see the module doc for the blocks)."""
  q_ref, k_ref, v_ref, *rest = refs
  g_ref = rest.pop(0) if opts.gate != "none" else None
  h0_ref = rest.pop(0) if opts.has_h0 else None
  reset_ref = rest.pop(0) if opts.has_reset else None
  o_ref, ht_ref = rest
  bh, vt = pl.program_id(0), pl.program_id(1)
  Kp, bv = opts.Kp, opts.bv
  mk = lax.broadcasted_iota(jnp.int32, (Kp,), 0) < opts.K if Kp != opts.K else None
  mv = (vt * bv + lax.broadcasted_iota(jnp.int32, (bv,), 0) < opts.V) if opts.V % bv else None
  if mk is None and mv is None:
    mkv = None
  elif mv is None:
    mkv = jnp.broadcast_to(mk[:, None], (Kp, bv))
  elif mk is None:
    mkv = jnp.broadcast_to(mv[None, :], (Kp, bv))
  else:
    mkv = mk[:, None] & mv[None, :]
  q, k, v = _load(q_ref, mk), _load(k_ref, mk), _load(v_ref, mv)  # [Kp], [Kp], [bv]
  h = _load(h0_ref, mkv) if h0_ref is not None else jnp.zeros((Kp, bv), F32)
  if opts.gate == "vector":
    decay = jnp.exp(_load(g_ref, mk))[:, None]  # [Kp, 1]
  elif opts.gate == "scalar":
    decay = jnp.exp(g_ref[bh].astype(F32))
  elif opts.gate == "constant":
    decay = jnp.exp(g_ref[lax.rem(bh, opts.H)].astype(F32))
  else:
    decay = None
  if reset_ref is not None:
    start = reset_ref[lax.div(bh, opts.H)] != 0
    decay = jnp.where(start, 0.0, 1.0 if decay is None else decay)
  if decay is not None:
    h = decay * h
  h = h + k[:, None] * v[None, :]
  o = opts.scale * jnp.sum(q[:, None] * h, axis=0)  # [bv]
  _store(o_ref, o, mv)
  _store(ht_ref, h, mkv)


def decode_step(q, k, v, gate, h0, reset, opts: DecodeOptions):
  """One token of the recurrence through the Pallas Triton kernel.

  Args:
    q, k: [B, H, K]; v: [B, H, V] (one float dtype).
    gate: "vector": g [B, H, K]; "scalar": g [B, H]; "constant": g_gamma [H]; "none": None (log decays).
    h0: [B, H, K, V] float32 or None (zeros); overwritten in place when the caller donates it.
    reset: [B] int32 (non-zero: the state restarts before this token) or None.
    opts: `DecodeOptions.make(...)` of this call.

  Returns:
    o [B, H, V] in v's dtype, h [B, H, K, V] float32.

  Example:
    >>> opts = DecodeOptions.make("vector", scale=0.25, B=2, H=4, K=16, V=32, has_h0=True,
    ...                           has_reset=False, interpret=True)
    >>> o, h = decode_step(q, k, v, g, h0, None, opts)
  """
  B, H, K, V, BH = opts.B, opts.H, opts.K, opts.V, opts.B * opts.H
  row = lambda d: pl.BlockSpec((None, d), lambda i, j: (i, 0))
  vtile = pl.BlockSpec((None, opts.bv), lambda i, j: (i, j))
  whole = lambda n: pl.BlockSpec((n,), lambda i, j: (0,))
  state = pl.BlockSpec((None, opts.Kp, opts.bv), lambda i, j: (i, 0, j))
  args = [q.reshape(BH, K), k.reshape(BH, K), v.reshape(BH, V)]
  in_specs = [row(opts.Kp), row(opts.Kp), vtile]
  if opts.gate == "vector":
    args.append(gate.reshape(BH, K))
    in_specs.append(row(opts.Kp))
  elif opts.gate == "scalar":
    args.append(gate.reshape(BH))
    in_specs.append(whole(BH))
  elif opts.gate == "constant":
    args.append(gate.reshape(H).astype(F32))
    in_specs.append(whole(H))
  aliases = {}
  if opts.has_h0:
    aliases[len(args)] = 1
    args.append(h0.reshape(BH, K, V).astype(F32))
    in_specs.append(state)
  if opts.has_reset:
    args.append(reset.reshape(B).astype(jnp.int32))
    in_specs.append(whole(B))
  out_shape = (compat.pallas_out_struct((BH, V), v.dtype, q),
               compat.pallas_out_struct((BH, K, V), F32, q))
  o, h = pl.pallas_call(
      functools.partial(decode_kernel, opts=opts),
      grid=(BH, opts.nv),
      in_specs=in_specs,
      out_specs=(vtile, state),
      out_shape=out_shape,
      input_output_aliases=aliases,
      compiler_params=compat.triton_compiler_params(num_warps=opts.num_warps, num_stages=1),
      interpret=opts.interpret,
      name=f"decode_step_{opts.gate}",
  )(*args)
  return o.reshape(B, H, V), h.reshape(B, H, K, V)


def xla_with_kernel_forward(kernel_fn, xla_step_fn):
  """A custom_vjp `f(opts, q, k, v, gate, h0, reset) -> (o, h)`: values from `kernel_fn` (same
  signature), gradients from the vjp of `xla_step_fn(opts, q, k, v, gate, h0, reset) -> (o, h)`, the
  plain-jnp step (h0 / reset may be None; gate too for "none"). Cotangents of reset are None."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def f(opts, q, k, v, gate, h0, reset):
    return kernel_fn(opts, q, k, v, gate, h0, reset)

  def fwd(opts, q, k, v, gate, h0, reset):
    return kernel_fn(opts, q, k, v, gate, h0, reset), (q, k, v, gate, h0, reset)

  def bwd(opts, res, cts):
    q, k, v, gate, h0, reset = res
    _, vjp = jax.vjp(lambda q, k, v, gate, h0: xla_step_fn(opts, q, k, v, gate, h0, reset),
                     q, k, v, gate, h0)
    do, dh = cts
    return (*vjp((do.astype(v.dtype), dh.astype(F32))), None)

  f.defvjp(fwd, bwd)
  return f
