"""The one place that knows the device mesh: mesh construction, logical-axis rules, state and batch shardings.

Models annotate their parameters with logical axis names (`nn.with_logical_partitioning`) from the vocabulary
`batch, length, embed, mlp, heads, kv, vocab, codebook, conv_in, conv_out, conv_k, norm, layers`, and names
activations by `batch, length, act_embed` (sharding constraints at the prior's block boundaries). `LOGICAL_AXIS_RULES`
maps those names to the mesh axes `data`, `fsdp` and `model`:

- `data`: pure data parallelism (parameters replicated).
- `fsdp`: data parallelism with parameters (and optimizer state) sharded along their input/embedding axis.
- `model`: tensor parallelism over attention heads, MLP hidden units, vocabulary and convolution outputs.

Convolution kernels are split over `model` *and* `fsdp` on their output channels and never on their input
channels: XLA's SPMD partitioner computes wrong gradients for a kernel whose input channels are split over an axis
that also splits the batch, fed by an activation whose channels are split over `model` (see
`docs/xla_conv_sharding_repro.py`; every consecutive pair of VQ-VAE convolutions has that layout under
`conv_in -> fsdp, conv_out -> model`). Splitting the output channels over both axes keeps the kernels' memory
per device the same.

The batch is split over `data` and `fsdp` together. A logical name without a rule is an error (a misspelled name
would otherwise replicate silently). A mesh axis that does not divide a parameter's dimension is dropped for that
dimension (the dimension is replicated instead, so tiny test models run on any mesh), and a warning names the
parameters this happened to.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (or axes, or None for replicated). Flax applies the first rule whose mesh axis is not
# already used by another dimension of the same array.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("codebook", None),
    # Never "fsdp" (or any batch axis): see the module docstring and docs/xla_conv_sharding_repro.py.
    ("conv_in", None),
    ("conv_out", ("model", "fsdp")),
    ("conv_k", None),
    ("norm", None),
    ("layers", None),  # the stacked axis of `nn.scan`ned layers (GPT scan_layers=True)
    ("act_embed", None),  # channels of activations (the residual stream): whole on each device
)


def mesh_shape(mesh_config: Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """Resolves a `(data, fsdp, model)` shape with at most one `-1` ("all the remaining devices")."""
  shape = [int(s) for s in mesh_config]
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"config.mesh must have {len(MESH_AXES)} entries {MESH_AXES}, got {tuple(mesh_config)}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh entries must be positive, with at most one -1; got {tuple(mesh_config)}")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
      raise ValueError(f"config.mesh={tuple(mesh_config)}: {num_devices} devices are not divisible by {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh={tuple(mesh_config)} needs {math.prod(shape)} devices, have {num_devices}")
  return tuple(shape)  # type: ignore[return-value]


def make_mesh(config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The `(data, fsdp, model)` mesh of `config.mesh` over `devices` (default: the first `config.num_devices`).

  Args:
    config: has `mesh` (3 ints, one may be -1) and optionally `num_devices` (-1 or absent: all devices). A
      sub-mesh (fewer devices than the host has) is only meaningful in a single process, e.g. in tests.
    devices: explicit devices; overrides `config.num_devices`.
  """
  if devices is None:
    n = int(config.get("num_devices", -1) or -1) if hasattr(config, "get") else -1
    devices = jax.devices()
    if n != -1:
      if n > len(devices):
        raise ValueError(f"config.num_devices={n} but only {len(devices)} devices are available")
      if jax.process_count() > 1 and n != len(devices):
        raise ValueError("config.num_devices (a sub-mesh) is not supported with several processes")
      devices = devices[:n]
  shape = mesh_shape(config.mesh, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_mesh_spec(names: Sequence[str | None] | None, rules=LOGICAL_AXIS_RULES, what: str = "an array"
                         ) -> P:
  """Logical axis names of one array -> mesh PartitionSpec.

  Each dimension takes the first rule for its name whose mesh axes no earlier dimension of the array uses; with
  none left it is replicated, as is a dimension named None. Unlike Flax's helper, a name may repeat (a square
  `embed x embed` matrix shards only its first dimension). A name that no rule knows raises a ValueError naming
  `what` (the parameter).
  """
  known = {rule_name for rule_name, _ in rules}
  unknown = [name for name in names or () if name is not None and name not in known]
  if unknown:
    raise ValueError(f"{what}: logical axis name(s) {unknown} have no rule in the logical axis rules "
                     f"(known names: {sorted(known)})")
  used: set[str] = set()
  spec = []
  for name in names or ():
    chosen = None
    for rule_name, axes in rules:
      if rule_name != name:
        continue
      if axes is None:
        break
      axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes)
      if not used.intersection(axes_tuple):
        chosen = axes
        used.update(axes_tuple)
        break
    spec.append(chosen)
  return P(*spec)


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> tuple[P, list[str]]:
  """Drops mesh axes that do not divide the dimension they shard (those dimensions become replicated).

  Returns the fitted spec and one note per dropped axis ("dim 1 (6): model=4").
  """
  fitted, dropped = [], []
  for i, (dim, axes) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
    if axes is None:
      fitted.append(None)
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    kept, size = [], 1
    for name in names:
      if dim % (size * mesh.shape[name]) == 0:
        kept.append(name)
        size *= mesh.shape[name]
      else:
        dropped.append(f"dim {i} ({dim}): {name}={mesh.shape[name]}")
    fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  while fitted and fitted[-1] is None:
    fitted.pop()
  return P(*fitted), dropped


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def logical_to_shardings(abstract_tree: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for an abstract (`jax.eval_shape`) tree whose leaves may be `nn.Partitioned` boxes.

  The result has the structure of the *unboxed* tree (`nn.meta.unbox(abstract_tree)`): boxes give their logical
  names, plain leaves are replicated. A logical name without a rule raises a ValueError naming the parameter;
  dimensions left replicated because a mesh axis does not divide them are logged in one warning, by parameter.
  """
  is_box = lambda x: isinstance(x, nn.Partitioned)
  replicated_dims: list[str] = []

  def one(path, leaf):
    names = leaf.names if is_box(leaf) else None
    value = leaf.unbox() if is_box(leaf) else leaf
    name = _path_name(path)
    spec, dropped = _fit_spec(logical_to_mesh_spec(names, rules, what=name), value.shape, mesh)
    replicated_dims.extend(f"{name} {tuple(value.shape)} {note}" for note in dropped)
    return NamedSharding(mesh, spec)

  out = jax.tree_util.tree_map_with_path(one, abstract_tree, is_leaf=is_box)
  if replicated_dims:
    logging.warning("mesh %s: these parameter dimensions are replicated, as the mesh axis does not divide them:"
                    "\n  %s", dict(mesh.shape), "\n  ".join(replicated_dims))
  return out


def context_spec(names: Sequence[str | None], shape: Sequence[int], what: str = "an array") -> P | None:
  """The spec that the logical axis `names` give an array of `shape` on the context mesh (`jax.set_mesh`), less
  the mesh axes the mesh lacks or that do not divide their dimension; None without a mesh or on one device.

  For arrays made inside a traced function (caches, kernel operands), which have no parameter sharding to follow.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None
  spec = []
  for dim, axes in zip(shape, logical_to_mesh_spec(names, what=what)):
    kept, size = [], 1
    for name in () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes):
      if name in mesh.shape and dim % (size * mesh.shape[name]) == 0:
        kept.append(name)
        size *= mesh.shape[name]
    spec.append(tuple(kept) or None)
  return P(*spec)


def constrain(x: jax.Array, names: Sequence[str | None], what: str = "an array") -> jax.Array:
  """`x` constrained to `context_spec(names, x.shape)` (unchanged without a mesh)."""
  spec = context_spec(names, x.shape, what)
  return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `data` x `fsdp`, the rest replicated (for arrays of any rank)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def local_batch_size(global_batch_size: int, batch: NamedSharding | None = None, *,
                     process_count: int | None = None) -> int:
  """The one batch-divisibility check: `global_batch_size` must split evenly over the processes and over the
  mesh axes that `batch` (a batch sharding) splits the leading dimension over; returns each process's share.

  Args:
    global_batch_size: the batch over all processes.
    batch: the batch's sharding (`batch_sharding(mesh)`), or None for host-only data.
    process_count: processes sharing the batch (default `jax.process_count()`; data pipelines may simulate more,
      then without a sharding).
  """
  process_count = jax.process_count() if process_count is None else int(process_count)
  if batch is not None:
    if process_count != jax.process_count():
      raise ValueError(f"process_count={process_count} differs from jax.process_count()={jax.process_count()}; "
                       "a simulated process count needs host-only data (no batch sharding)")
    spec = batch.spec[0] if len(batch.spec) else None
    axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
    shards = math.prod(batch.mesh.shape[a] for a in axes)
    if global_batch_size % shards:
      names = " x ".join(axes)
      raise ValueError(f"batch_size={global_batch_size} must be divisible by the mesh's {names} = {shards}")
  if global_batch_size % process_count:
    raise ValueError(f"batch_size={global_batch_size} must be divisible by process_count={process_count}")
  return global_batch_size // process_count


def batch_size_per_process(global_batch_size: int, mesh: Mesh) -> int:
  """`local_batch_size` for a batch split over the mesh's `data` x `fsdp`."""
  return local_batch_size(global_batch_size, batch_sharding(mesh))


def to_host(x: jax.Array) -> np.ndarray:
  """A global array's full value on this host (gathered from the other processes when it spans several)."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def per_device_bytes(tree: Any) -> dict[str, int]:
  """Bytes of `tree`'s arrays held by each addressable device (the state's share of device memory)."""
  totals: dict[str, int] = {}
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      for shard in leaf.addressable_shards:
        key = str(shard.device)
        totals[key] = totals.get(key, 0) + shard.data.nbytes
  return totals


def log_shardings(tree: Any) -> None:
  """Logs each leaf's path, shape and PartitionSpec (once, at start, to make the layout inspectable)."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    spec = getattr(getattr(leaf, "sharding", None), "spec", None)
    logging.info("  %-70s %-20s %s", jax.tree_util.keystr(path), tuple(leaf.shape), spec)
