"""Mesh and shardings: one code path for 1 device, N devices and M hosts.

The mesh has a single 'data' axis over every global device. Batches are split
along it; params and optimiser states are replicated. `state_sharding` is the
one place to add FSDP-style rules later (shard large kernels over 'data').

Host-side reads and writes of global arrays go through this module too, so
that the same code runs in one process and in many:

  to_host(tree)         every read of a jax.Array on the host (one process
                        cannot fetch the shards that live on another's devices)
  put(x, sharding)      a host array that every process holds -> global array
  gather(batches, n)    per-batch device outputs -> numpy, one all-gather
  map_batches(fn, x, b) fn over x in global batches split over every device
                        of every process, gathered once
  map_chunks(fn, x, c)  inside jit: fn over chunks of c rows of a sharded
                        batch, each chunk spread over every device
  max_over_processes(v) the largest of one int per process (a collective)
  from_process_0(x)     process 0's host array, in every process (a collective)
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np


DATA_AXIS = 'data'


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all global devices, axis name 'data'."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def state_sharding(mesh, abstract_state):
  """Shardings for every leaf of the train state: replicated for now."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


# ---------------------------------------------------------------------------
# Host <-> global arrays.
# ---------------------------------------------------------------------------


def _leaf_to_host(x):
  if not isinstance(x, jax.Array):
    return np.asarray(x)
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  if x.is_fully_replicated:  # Every process holds the whole value.
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_host(tree):
  """The host (numpy) value of every array in `tree`, in any process.

  The one way the project reads device values on the host. An array on this
  process's devices (or replicated on every device) is read locally; an
  array split over the devices of several processes is all-gathered first,
  which is a collective: every process must call `to_host` on it, in the
  same order.

  Args:
    tree: a pytree of jax.Arrays, numpy arrays or Python scalars.

  Returns:
    The same pytree with numpy arrays.
  """
  return jax.tree.map(_leaf_to_host, tree)


def max_over_processes(value: int) -> int:
  """The largest of the ints that the processes give (a collective: every
  process calls it); `value` itself in one process."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int32))))


def from_process_0(x):
  """Process 0's value of the host array `x`, in every process (a
  collective); `x` itself in one process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(x)))


def put(x, sharding):
  """A global jax.Array with `sharding` from a host array `x` that every
  process holds in full (e.g. a test split every process has loaded): each
  process transfers only the rows of its own devices."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@functools.partial(jax.jit, static_argnums=(1,))
def _concatenate(batches, out_sharding):
  return jax.tree.map(lambda *xs: jax.lax.with_sharding_constraint(
      jnp.concatenate(xs), out_sharding), *batches)


def gather(batches, num: int | None = None, mesh=None):
  """Per-batch device outputs -> numpy, with one all-gather per leaf.

  Args:
    batches: a list of pytrees of the same structure, each leaf a (B_i, ...)
      jax.Array (e.g. split over 'data').
    num: keep the first `num` rows (drop padding); default all.
    mesh: the mesh of the arrays; default `make_mesh()`.

  Returns:
    The pytree of numpy arrays (sum B_i, ...)[:num], identical in every process.
  """
  if not batches:
    raise ValueError('gather needs at least one batch.')
  mesh = mesh or make_mesh()
  whole = _concatenate(list(batches), replicated(mesh))
  return jax.tree.map(lambda x: x[:num], to_host(whole))


def await_if_needed(x):
  """Blocks on `x` where many in-flight sharded computations can deadlock
  (CPU with several devices, e.g. --xla_force_host_platform_device_count);
  elsewhere returns at once and keeps the queue full."""
  if jax.default_backend() == 'cpu' and jax.device_count() > 1:
    jax.block_until_ready(x)
  return x


def map_batches(fn, x, batch_size: int, mesh=None, prepare=None, on_batch=None):
  """`fn` over the rows of a host array, split over every device of every
  process, gathered once.

  Args:
    fn: jitted function of a (batch_size, ...) global array split over
      'data', returning a pytree of (batch_size, ...) arrays (per-row
      results: the zero padding of the last batch is dropped).
    x: numpy (N, ...), the same in every process.
    batch_size: rows per call of `fn`; a multiple of the device count.
    mesh: default `make_mesh()`.
    prepare: optional host function applied to each (batch_size, ...) chunk
      before it goes to the devices (e.g. uint8 -> float32).
    on_batch: optional callback(num_valid_rows) after each call (progress).

  Returns:
    The pytree of numpy (N, ...) results, identical in every process.
  """
  mesh = mesh or make_mesh()
  if batch_size % mesh.devices.size:
    raise ValueError(f'batch_size {batch_size} does not split over {mesh.devices.size} '
                     'devices.')
  x = np.asarray(x)
  if not len(x):
    raise ValueError('map_batches needs at least one row.')
  shard = data_sharding(mesh)
  outs = []
  for start in range(0, len(x), batch_size):
    chunk = x[start:start + batch_size]
    valid = len(chunk)
    if valid < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - valid, *chunk.shape[1:]),
                                              chunk.dtype)])
    if prepare is not None:
      chunk = prepare(chunk)
    outs.append(await_if_needed(fn(put(chunk, shard))))
    if on_batch is not None:
      on_batch(valid)
  return gather(outs, len(x), mesh)


def map_chunks(fn, x, chunk: int, mesh=None):
  """Inside jit: `fn` over chunks of `chunk` rows of a batch split over
  'data' (bounds the memory of a large network on a large batch).

  Chunk k holds rows k, k + B/chunk, k + 2B/chunk, ...: with `chunk` a
  multiple of the device count, each chunk has the same number of rows on
  every device and no row moves between devices. Results are put back in
  row order.

  Args:
    fn: per-row function of a (chunk, ...) array -> pytree of (chunk, ...).
    x: (B, ...), B a multiple of `chunk`.
    chunk: rows per call of `fn`.
    mesh: default `make_mesh()`.

  Returns:
    The pytree of (B, ...) results.
  """
  mesh = mesh or make_mesh()
  b = x.shape[0]
  if b % chunk:
    raise ValueError(f'batch {b} is not a multiple of the chunk {chunk}.')
  spread = NamedSharding(mesh, P(None, DATA_AXIS))
  xs = jnp.swapaxes(x.reshape(chunk, b // chunk, *x.shape[1:]), 0, 1)
  xs = jax.lax.with_sharding_constraint(xs, spread)
  ys = jax.lax.map(lambda c: fn(jax.lax.with_sharding_constraint(c, data_sharding(mesh))), xs)
  return jax.tree.map(
      lambda y: jnp.swapaxes(jax.lax.with_sharding_constraint(y, spread), 0, 1).reshape(
          b, *y.shape[2:]), ys)
