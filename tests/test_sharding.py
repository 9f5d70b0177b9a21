"""The host <-> global array helpers of vaegan_jax/sharding.py on this
process's devices (tests/test_distributed.py runs them on 4 devices and in 2
processes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegan_jax import sharding


def _rows(x):
  """A per-row function whose result names the row: (B, 3) -> dict of (B,) and (B, 2)."""
  return {'sum': jnp.sum(x, axis=1), 'pair': x[:, :2] * 2.0}


def test_map_batches_pads_gathers_and_keeps_row_order():
  x = np.arange(30 * 3, dtype=np.float32).reshape(30, 3)
  calls = []
  got = sharding.map_batches(jax.jit(_rows), x, 8, on_batch=calls.append)
  want = jax.tree.map(np.asarray, _rows(x))
  assert calls == [8, 8, 8, 6]
  assert got['sum'].shape == (30,) and got['pair'].shape == (30, 2)
  np.testing.assert_array_equal(got['sum'], want['sum'])
  np.testing.assert_array_equal(got['pair'], want['pair'])


def test_map_batches_prepare_runs_on_each_padded_chunk():
  x = np.arange(10, dtype=np.uint8).reshape(10, 1)
  got = sharding.map_batches(jax.jit(lambda v: v + 0.5), x, 4,
                             prepare=lambda c: c.astype(np.float32) / 2)
  np.testing.assert_array_equal(got, np.arange(10, dtype=np.float32).reshape(10, 1) / 2 + 0.5)


def test_map_chunks_puts_results_back_in_row_order():
  x = jnp.arange(24 * 3, dtype=jnp.float32).reshape(24, 3)
  seen = []

  def fn(chunk):
    seen.append(chunk.shape)
    return _rows(chunk)

  got = jax.jit(lambda v: sharding.map_chunks(fn, v, 6))(x)
  assert seen == [(6, 3)]  # One traced chunk of 6 rows, mapped 4 times.
  want = _rows(x)
  np.testing.assert_array_equal(sharding.to_host(got['sum']), np.asarray(want['sum']))
  np.testing.assert_array_equal(sharding.to_host(got['pair']), np.asarray(want['pair']))


def test_map_chunks_needs_a_whole_number_of_chunks():
  with pytest.raises(ValueError, match='not a multiple of the chunk'):
    sharding.map_chunks(_rows, jnp.zeros((10, 3)), 4)


def test_gather_concatenates_batches_and_trims():
  batches = [{'a': jnp.full((4, 2), i, jnp.float32)} for i in range(3)]
  got = sharding.gather(batches, 10)
  assert isinstance(got['a'], np.ndarray) and got['a'].shape == (10, 2)
  np.testing.assert_array_equal(got['a'][:, 0], [0] * 4 + [1] * 4 + [2] * 2)


def test_to_host_reads_arrays_numpy_and_scalars():
  mesh = sharding.make_mesh()
  tree = {'global': sharding.put(np.arange(4.0), sharding.data_sharding(mesh)),
          'replicated': jax.device_put(jnp.ones(2), sharding.replicated(mesh)),
          'numpy': np.zeros(3), 'scalar': 1.5}
  got = sharding.to_host(tree)
  assert all(isinstance(v, np.ndarray) for v in got.values())
  np.testing.assert_array_equal(got['global'], np.arange(4.0))
  np.testing.assert_array_equal(got['replicated'], np.ones(2))
  assert float(got['scalar']) == 1.5

