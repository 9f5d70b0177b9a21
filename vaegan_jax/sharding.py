"""Mesh and shardings: one code path for 1 device, N devices and M hosts.

The mesh has a single 'data' axis over every global device. Batches are split
along it; params and optimiser states are replicated. `state_sharding` is the
one place to add FSDP-style rules later (shard large kernels over 'data').
"""

import jax
from jax.sharding import NamedSharding, PartitionSpec as P


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
