"""TFDS datasets -> per-process host batches -> global sharded `jax.Array`s.

Each split is read once through `tfds.load` (preprocessed: CelebA is centre
cropped and resized to 64x64) and kept in host memory as uint8. The training
order is a pure function of `(seed, step)`: epoch `e` visits the images in the
permutation drawn from `np.random.default_rng([seed, e])`, and the global batch
of step `s` holds positions `[s*B, (s+1)*B)` of that endless sequence. So a
run resumed at step `s` sees exactly the batches an uninterrupted run would,
whatever the number of devices or processes: each process takes its
contiguous slice of the global batch, and
`jax.make_array_from_process_local_data` assembles the global array.

Images reach the models as float32 in [0, 1], shape (B, H, W, C).
"""

import dataclasses
import os
import queue
import socket
import threading
from typing import Iterator

from absl import logging
import jax
import numpy as np

from vaegan_jax.errors import UserError
from vaegan_jax.errors import WorkerError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the project knows about a dataset without reading it."""
  name: str
  image_shape: tuple  # (H, W, C) after preprocessing.
  num_classes: int    # 0 where the dataset has no class label.
  train_split: str = 'train'
  test_split: str = 'test'
  label_key: str = 'label'
  center_crop: bool = False  # Centre square crop, then resize to image_shape.


DATASETS = {
    s.name: s for s in [
        DatasetSpec('mnist5k', (28, 28, 1), 10),
        DatasetSpec('mnist', (28, 28, 1), 10),
        DatasetSpec('fashion_mnist', (28, 28, 1), 10),
        DatasetSpec('cifar10', (32, 32, 3), 10),
        DatasetSpec('svhn_cropped', (32, 32, 3), 10),
        DatasetSpec('celeb_a', (64, 64, 3), 0, center_crop=True),
    ]
}

EMBEDDED = 'mnist5k'
DEFAULT_EMBEDDED_DATA_DIR = os.path.join(
    os.path.expanduser('~'), '.cache', 'vaegan_jax', 'tensorflow_datasets')


def get_spec(name: str) -> DatasetSpec:
  """Returns the spec of a known dataset; a UserError listing them otherwise."""
  if name not in DATASETS:
    raise UserError(f'Unknown dataset {name!r}; known datasets: '
                    f'{", ".join(sorted(DATASETS))}.')
  return DATASETS[name]


def image_shape(config) -> tuple:
  """(H, W, C) of the images of `config.data.name`; needs no data on disk."""
  return get_spec(config.data.name).image_shape


def resolve_data_dir(name: str, data_dir: str | None) -> str | None:
  """The embedded set lives in the user's cache; real sets in TFDS's default."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return DEFAULT_EMBEDDED_DATA_DIR if name == EMBEDDED else None


# ---------------------------------------------------------------------------
# Reading a split into memory.
# ---------------------------------------------------------------------------


def _download_host_reachable(timeout_s: float = 3.0) -> bool:
  """Whether TFDS's download host answers within `timeout_s` (DNS included)."""
  result = []

  def probe():
    try:
      socket.create_connection(('storage.googleapis.com', 443), timeout=timeout_s).close()
      result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s + 1)
  return bool(result)


def _prepare(name: str, data_dir: str | None):
  """Makes sure `name` is prepared in `data_dir`, failing fast when offline."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return
  if name == EMBEDDED:
    print(f'Building the embedded dataset {name} into {builder.data_dir} '
          '(offline, a few seconds).', flush=True)
    tfds.disable_progress_bar()
    builder.download_and_prepare(file_format='tfrecord')
    return
  where = data_dir or '~/tensorflow_datasets (or $TFDS_DATA_DIR)'
  if not _download_host_reachable():
    raise UserError(
        f'Dataset {name!r} is not prepared in {where} and the download host is '
        f'unreachable. On a machine with network run `tfds build {name} '
        f'--data_dir=DIR`, copy DIR here and pass --config.data.data_dir=DIR.')
  logging.info('Downloading and preparing %s into %s.', name, builder.data_dir)
  builder.download_and_prepare()


def _preprocess_fn(spec: DatasetSpec):
  """A tf.data map function: dict -> (uint8 image (H, W, C), int32 label)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  height, width, _ = spec.image_shape

  def fn(example):
    image = example['image']
    if spec.center_crop:
      shape = tf.shape(image)
      side = tf.minimum(shape[0], shape[1])
      top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
      image = image[top:top + side, left:left + side]
      image = tf.image.resize(image, (height, width), antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    label = (tf.cast(example[spec.label_key], tf.int32) if spec.num_classes
             else tf.constant(-1, tf.int32))
    return image, label

  return fn


def load_split(name: str, split: str, data_dir: str | None = None,
               max_examples: int | None = None):
  """Reads a whole split into host memory.

  Args:
    name: a dataset name from `DATASETS`.
    split: 'train' or 'test' (mapped to the dataset's own split names), or
      any TFDS split string.
    data_dir: where TFDS keeps prepared data; see `resolve_data_dir`.
    max_examples: read at most this many examples (in file order).

  Returns:
    images: uint8 array (N, H, W, C).
    labels: int32 array (N,), -1 where the dataset has no class labels.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vaegan_jax.datasets import mnist5k  # pylint: disable=g-import-not-at-top,unused-import  # Registers the builder.

  tf.config.set_visible_devices([], 'GPU')  # TF must not grab accelerators.
  spec = get_spec(name)
  data_dir = resolve_data_dir(name, data_dir)
  split = {'train': spec.train_split, 'test': spec.test_split}.get(split, split)
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False,
                   shuffle_files=False)
  except AssertionError:  # Not prepared: build or download, or fail fast.
    _prepare(name, data_dir)
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False,
                   shuffle_files=False)
  if max_examples:
    ds = ds.take(max_examples)
  ds = ds.map(_preprocess_fn(spec), num_parallel_calls=tf.data.AUTOTUNE)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds.batch(1024)):
    images.append(x)
    labels.append(y)
  if not images:
    raise UserError(f'Split {split!r} of dataset {name!r} is empty.')
  images = np.concatenate(images).astype(np.uint8)
  if images.shape[1:] != spec.image_shape:
    raise UserError(f'Dataset {name!r} gave images of shape {images.shape[1:]}, '
                    f'expected {spec.image_shape}.')
  return images, np.concatenate(labels).astype(np.int32)


# ---------------------------------------------------------------------------
# Batches.
# ---------------------------------------------------------------------------


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [0, 1]."""
  return images.astype(np.float32) / np.float32(255.0)


def global_batch_indices(num_examples: int, batch_size: int, seed: int,
                         step: int) -> np.ndarray:
  """Dataset indices of the global batch of `step`: a pure function.

  Returns:
    int64 array (batch_size,).
  """
  start = step * batch_size
  positions = np.arange(start, start + batch_size)
  epochs = positions // num_examples
  out = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    mask = epochs == epoch
    out[mask] = perm[positions[mask] % num_examples]
  return out


def process_slice(batch_size: int) -> slice:
  """This process's rows of a global batch."""
  per_process = batch_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def make_global_batch(local_batch: dict, sharding) -> dict:
  """Per-process numpy arrays -> global `jax.Array`s sharded by `sharding`."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


class TrainIterator:
  """Endless training batches, resumable at any step, prefetched on a thread.

  Yields dicts {'image': float32 (B, H, W, C) in [0, 1], 'label': int32 (B,)}
  of global arrays sharded by `sharding`, B the global batch size.
  """

  def __init__(self, images, labels, batch_size: int, seed: int, sharding,
               start_step: int = 0, prefetch: int = 2):
    if len(images) < 1:
      raise UserError('The training split is empty.')
    self.images, self.labels = images, labels
    self.batch_size, self.seed, self.sharding = batch_size, seed, sharding
    self.step = start_step
    self._rows = process_slice(batch_size)
    self._queue = queue.Queue(maxsize=prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, args=(start_step,),
                                    daemon=True)
    self._thread.start()

  def host_batch(self, step: int) -> dict:
    """This process's part of the batch of `step`, as numpy arrays."""
    idx = global_batch_indices(len(self.images), self.batch_size, self.seed,
                               step)[self._rows]
    return {'image': to_float(self.images[idx]), 'label': self.labels[idx]}

  def _produce(self, step):
    while not self._stop.is_set():
      try:
        batch = self.host_batch(step)
      except BaseException as e:  # pylint: disable=broad-except
        batch = e  # Handed to the main thread, which raises it (no hang).
      while not self._stop.is_set():
        try:
          self._queue.put(batch, timeout=0.1)
          break
        except queue.Full:
          pass
      if isinstance(batch, BaseException):
        return
      step += 1

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    while True:
      try:
        batch = self._queue.get(timeout=1.0)
        break
      except queue.Empty:
        if not self._thread.is_alive():
          raise WorkerError('The input pipeline thread stopped without a batch.') from None
    if isinstance(batch, BaseException):
      if isinstance(batch, UserError):
        raise batch
      raise WorkerError(f'The input pipeline thread failed at step {self.step}: '
                        f'{type(batch).__name__}: {batch}') from batch
    self.step += 1
    return make_global_batch(batch, self.sharding)

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)


def eval_batches(images, labels, batch_size: int, sharding):
  """The whole split in order, in global batches; the last one zero-padded.

  Yields:
    (batch, num_valid): batch as in `TrainIterator`, plus 'mask' float32 (B,)
    that is 1 for real rows and 0 for padding; num_valid the real row count.
  """
  rows = process_slice(batch_size)
  for start in range(0, len(images), batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < len(images)
    idx = np.where(valid, idx, 0)[rows]
    batch = {'image': to_float(images[idx]), 'label': labels[idx],
             'mask': valid[rows].astype(np.float32)}
    yield make_global_batch(batch, sharding), int(valid.sum())


class Data:
  """The splits of one dataset, loaded once, for training and evaluation."""

  def __init__(self, config, max_test_examples: int | None = None):
    self.spec = get_spec(config.data.name)
    self.config = config
    self.train_images, self.train_labels = load_split(
        config.data.name, 'train', config.data.data_dir)
    self.test_images, self.test_labels = load_split(
        config.data.name, 'test', config.data.data_dir, max_test_examples)

  def train_iterator(self, sharding, start_step: int) -> TrainIterator:
    return TrainIterator(self.train_images, self.train_labels,
                         self.config.train.batch_size, self.config.seed,
                         sharding, start_step)
