"""Random-access source -> grain -> per-process host batches -> global `jax.Array`s.

The training order is a pure function of `(seed, step)`: epoch `e` visits the
examples in the permutation drawn from `np.random.default_rng([seed, e])`, and
the global batch of step `s` holds positions `[s*B, (s+1)*B)` of that endless
sequence (`global_batch_indices`). So a run resumed at step `s` sees exactly
the batches an uninterrupted run would, whatever the number of devices or
processes: each process takes its contiguous slice of the global batch
(`process_slice`), and `jax.make_array_from_process_local_data` assembles the
global array.

The training stream is a grain `MapDataset` over step numbers whose element
`s` is this process's part of batch `s`: `read_batch` gathers and decodes its
rows from the source, a few batches ahead (bounded memory: `prefetch`
batches, whatever the dataset size). A streamed split is decoded in
`config.data.worker_count` worker processes (grain's `mp_prefetch`; -1, the
default, = one per CPU core, at most `MAX_AUTO_WORKERS`): decoding with PIL
holds the GIL for much of each image, so threads of one process do not
scale. Worker `w` of `n` computes the steps `s` with `(s - start) % n == w`
and grain hands them back in step order, so the batches are bit-identical to
the in-process ones, and a resumed run starts its workers at its step. An
in-memory split (and `worker_count=0`) is read in grain's reader threads in
the training process. An exception raised while reading is re-raised by
`TrainIterator.__next__`.

A train split whose decoded images take at most `config.data.cache_mb` MB
(default 512) is decoded once, when training starts, into an in-memory source
(`open_train_source`): the same bytes in the same order, so the same batches,
without decoding every example's record at every step (16 ms per batch of 256
mnist5k digits on the 2-core machine, in a reader thread that competes with
the step for the cores). Larger splits are streamed.

Images reach the models as float32 in [0, 1], shape (B, H, W, C); labels are
int32 (B,), -1 where the dataset has none.
"""

import functools
import gc
import math
import os
import signal
import threading
import time
from typing import Iterator

import grain
import jax
import numpy as np

from vaegan_jax.data import sources
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError
from vaegan_jax.errors import WorkerError

_MAX_STEPS = 2**62  # The endless stream's nominal length.
DEFAULT_CACHE_MB = 512  # config.data.cache_mb when a config has none.
AUTO_WORKERS = -1       # config.data.worker_count: one worker process per core.
MAX_AUTO_WORKERS = 16   # ... but at most this many.


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [0, 1]."""
  return images.astype(np.float32) / np.float32(255.0)


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The visiting order of `epoch`: int64 (num_examples,), cached (an epoch
  spans many steps, and drawing it is O(num_examples))."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.flags.writeable = False
  return perm


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
    perm = epoch_permutation(int(num_examples), int(seed), int(epoch))
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


def read_batch(source, indices: np.ndarray) -> dict:
  """The per-batch transform: rows `indices` of `source`, decoded.

  Runs in grain's reader threads; tests patch it to inject failures.

  Returns:
    {'image': float32 (n, H, W, C) in [0, 1], 'label': int32 (n,)}.
  """
  images, labels = source.read(indices)
  return {'image': to_float(images), 'label': np.asarray(labels, np.int32)}


def as_source(images_or_source, labels=None):
  """A source from (uint8 images, labels) arrays, or the source itself."""
  if hasattr(images_or_source, 'read'):
    return images_or_source
  return sources.ArraySource(images_or_source, labels)


class PipelineStats:
  """Thread-safe counters of the input pipeline between two `take`s: seconds
  the training loop waited for a batch, and images read (decoded, or copied
  from the in-memory cache) with the reader threads' seconds spent on them."""

  def __init__(self):
    self._lock = threading.Lock()
    self.wait_s = self.read_s = 0.0
    self.images = 0

  def add_read(self, images: int, seconds: float):
    with self._lock:
      self.images += images
      self.read_s += seconds

  def add_wait(self, seconds: float):
    with self._lock:
      self.wait_s += seconds

  def take(self, elapsed_s: float | None) -> dict:
    """{'data_wait_fraction': waited / elapsed_s, 'decode_images_per_s': images
    per reader-thread second} since the last take, then zeroed; {} when
    `elapsed_s` is None (a reset) or nothing was read."""
    with self._lock:
      wait, read, images = self.wait_s, self.read_s, self.images
      self.wait_s = self.read_s = 0.0
      self.images = 0
    out = {}
    if elapsed_s:
      out['data_wait_fraction'] = min(1.0, wait / elapsed_s)
    if elapsed_s and images and read > 0:
      out['decode_images_per_s'] = images / read
    return out


class _StepBatch:
  """grain map: step -> this process's rows of that step's global batch."""

  def __init__(self, source, batch_size, seed, rows, stats=None):
    self.source, self.batch_size, self.seed, self.rows = source, batch_size, seed, rows
    self.stats = stats

  def indices(self, step):
    """The rows of the source this process reads for `step`."""
    return global_batch_indices(len(self.source), self.batch_size, self.seed,
                                int(step))[self.rows]

  def __call__(self, step):
    idx = self.indices(step)
    t0 = time.perf_counter()
    batch = read_batch(self.source, idx)
    if self.stats is not None:
      self.stats.add_read(len(idx), time.perf_counter() - t0)
    return batch


class _WorkerStepBatch(_StepBatch):
  """grain map in a worker process: step -> ({'image': uint8, 'label':
  int32} of this process's rows of the step's batch, images read, read
  seconds, the undecodable-file reads since the last batch as (name, root,
  rel) tuples). The training process makes the float32 batch of `read_batch`
  from it (`_from_worker`: a quarter of the bytes cross between the
  processes), keeps its counters and names each bad file once
  (`folder.FAILURES.replay`)."""

  def __call__(self, step):
    from vaegan_jax.data import folder  # pylint: disable=g-import-not-at-top
    folder.FAILURES.forward = True  # This process only reads: the trainer reports.
    idx = self.indices(step)
    t0 = time.perf_counter()
    images, labels = self.source.read(idx)
    seconds = time.perf_counter() - t0
    return ({'image': np.asarray(images, np.uint8), 'label': np.asarray(labels, np.int32)},
            len(idx), seconds, folder.FAILURES.take_events())


def _from_worker(element, stats) -> dict:
  """A `_WorkerStepBatch` element -> the host batch `read_batch` makes."""
  batch, images, seconds, failures = element
  stats.add_read(images, seconds)
  if failures:
    from vaegan_jax.data import folder  # pylint: disable=g-import-not-at-top
    folder.FAILURES.replay(failures)
  # np.asarray: plain views of grain's shared memory, freed with the element.
  return {'image': to_float(np.asarray(batch['image'])), 'label': np.array(batch['label'])}


def _absl_flags_parsed():
  """Marks absl's flags parsed (at their defaults) where no absl app parsed
  them (a script, a notebook, a test): grain's multiprocessing reads them."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def default_num_threads() -> int:
  return max(1, min(4, os.cpu_count() or 1))


def num_cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def resolve_worker_count(worker_count: int, source) -> int:
  """Worker processes for `source`: 0 for an in-memory split (a copy from
  memory costs less than moving the batch between processes) and for
  worker_count 0; `num_cores()` (at most MAX_AUTO_WORKERS) for -1; else
  worker_count.

  Raises:
    UsageError: worker_count below -1 or not an integer.
  """
  if (not isinstance(worker_count, int) or isinstance(worker_count, bool)
      or worker_count < AUTO_WORKERS):
    raise UsageError(f'config.data.worker_count={worker_count!r} is not allowed; allowed: '
                     '-1 (one worker process per CPU core), 0 (threads in the training '
                     'process) or a number of worker processes.')
  if isinstance(source, sources.ArraySource) or worker_count == 0:
    return 0
  if worker_count == AUTO_WORKERS:
    return min(MAX_AUTO_WORKERS, num_cores())
  return worker_count


def _ignore_interrupts(worker_index: int, worker_count: int):
  """A worker process's start: Ctrl-C in a terminal reaches every process of
  its group, workers included; the training process alone acts on it (saves,
  then closes this iterator, which stops the workers). A worker killed by it
  would leave its queues to Python's resource tracker, which warns."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)


class TrainIterator:
  """Endless training batches, resumable at any step, read ahead by grain.

  `TrainIterator(images, labels, batch_size, seed, sharding, start_step)` with
  in-memory arrays, or `TrainIterator(source, None, ...)` with any source of
  `vaegan_jax.data.sources`. Yields dicts {'image': float32 (B, H, W, C) in
  [0, 1], 'label': int32 (B,)} of global arrays sharded by `sharding`, B the
  global batch size.

  `worker_count` (`resolve_worker_count`): 0 reads in grain's threads in this
  process; N > 0 (-1: one per core) decodes a streamed source in N worker
  processes, the same batches in the same order (`train_iterator` passes
  `config.data.worker_count`). Worker processes are spawned: the source must
  pickle, and a script that builds the iterator at its top level needs the
  usual `if __name__ == '__main__':` guard. `close()` stops them.
  """

  def __init__(self, images, labels, batch_size: int, seed: int, sharding,
               start_step: int = 0, prefetch: int = 2, num_threads: int | None = None,
               worker_count: int = 0):
    self.source = as_source(images, labels)
    if len(self.source) < 1:
      raise UserError('The training split is empty.')
    self.batch_size, self.seed, self.sharding = batch_size, seed, sharding
    self.step = start_step
    self._rows = process_slice(batch_size)
    self.stats = PipelineStats()
    self.worker_count = resolve_worker_count(worker_count, self.source)
    steps = grain.MapDataset.range(start_step, _MAX_STEPS)
    if self.worker_count:
      _absl_flags_parsed()  # grain's mp_prefetch reads its absl flags.
      # Each worker reads one batch at a time and keeps at most `prefetch`
      # finished ones: host memory stays bounded by the batch size.
      fn = _WorkerStepBatch(self.source, batch_size, seed, self._rows)
      dataset = steps.map(fn).to_iter_dataset(
          grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
              grain.MultiprocessingOptions(num_workers=self.worker_count,
                                           per_worker_buffer_size=max(1, prefetch)),
              worker_init_fn=_ignore_interrupts)
    else:
      self._fn = _StepBatch(self.source, batch_size, seed, self._rows, self.stats)
      threads = default_num_threads() if num_threads is None else num_threads
      # Each element is a whole batch: the buffer bounds host memory.
      options = grain.ReadOptions(num_threads=max(1, min(threads, prefetch)),
                                  prefetch_buffer_size=max(1, prefetch))
      # grain's reader threads call `host_batch` (a subclass or a test may
      # replace it; an exception there surfaces in `__next__`). Worker
      # processes call `_WorkerStepBatch` instead.
      dataset = steps.map(self.host_batch).to_iter_dataset(options)
    self._it = iter(dataset)

  def host_batch(self, step: int) -> dict:
    """This process's part of the batch of `step`, as numpy arrays (read in
    the training process: worker_count 0 or an in-memory split)."""
    return self._fn(step)

  def __iter__(self) -> Iterator[dict]:
    return self

  def take_stats(self, elapsed_s: float | None) -> dict:
    """`PipelineStats.take`: the data-wait fraction of the last `elapsed_s`
    seconds and the read rate, since the last call; plus `replaced_reads`, the
    reads of undecodable files so far, where there were any."""
    out = self.stats.take(elapsed_s)
    failed = getattr(self.source, 'num_failures', 0)
    if failed and elapsed_s is not None:
      out['replaced_reads'] = failed
    return out

  def __next__(self) -> dict:
    t0 = time.perf_counter()
    try:
      batch = next(self._it)
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      where = 'worker process' if self.worker_count else 'thread'
      raise WorkerError(f'The input pipeline {where} failed at step {self.step}: '
                        f'{type(e).__name__}: {e}') from e
    if self.worker_count:
      batch = _from_worker(batch, self.stats)
    self.step += 1
    self.stats.add_wait(time.perf_counter() - t0)
    return make_global_batch(batch, self.sharding)

  def close(self):
    close = getattr(self._it, 'close', None)
    if close is not None:
      close()
    if self.worker_count:
      # Drop the workers' queues now: their semaphores are unlinked when
      # collected, not only at interpreter exit, which an error exit
      # (os._exit) skips, leaving Python's resource tracker to warn.
      self._it = iter(())
      gc.collect()


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


def read_all(source, max_examples: int | None = None, chunk: int = 1024, seed: int = 0):
  """Every example of a source in order, or `max_examples` of them: a fixed,
  class-balanced sample (`balanced_sample` on the labels the source knows
  without decoding; a seeded random one where it knows none).

  Returns:
    images: uint8 (N, H, W, C); labels: int32 (N,).
  """
  n = len(source) if not max_examples else min(len(source), max_examples)
  rows = np.arange(n)
  if n < len(source):
    known = getattr(source, 'labels', None)
    rows = (balanced_sample(known, n, seed) if known is not None else
            np.sort(np.random.default_rng([seed, 0x6B1D]).permutation(len(source))[:n]))
  if isinstance(source, sources.ArraySource):  # Already in memory.
    return (source.images[rows].astype(np.uint8, copy=False),
            source.labels[rows].astype(np.int32, copy=False))
  if n == 0:
    return (np.zeros((0, *source.spec.image_shape), np.uint8), np.zeros(0, np.int32))
  parts = [source.read(rows[s:s + chunk]) for s in range(0, n, chunk)]
  return (np.concatenate([p[0] for p in parts]).astype(np.uint8),
          np.concatenate([p[1] for p in parts]).astype(np.int32))


def cached(source, cache_mb: float):
  """`source` decoded into memory (a `sources.ArraySource` with the same rows)
  when its images take at most `cache_mb` MB, else `source` itself (also for
  cache_mb <= 0)."""
  if isinstance(source, sources.ArraySource) or cache_mb <= 0:
    return source
  if len(source) * math.prod(source.spec.image_shape) > cache_mb * 2**20:
    return source
  t0 = time.perf_counter()
  images, labels = read_all(source)
  seconds = time.perf_counter() - t0
  if sources.is_folder(source.spec.name):
    failed = getattr(source, 'num_failures', 0)
    print(f'{source.spec.name}: decoded the {len(images)} train images into memory in '
          f'{seconds:.1f} s ({len(images) / max(seconds, 1e-9):.0f} img/s)'
          + (f'; {failed} read(s) of undecodable files replaced.' if failed else '.'),
          flush=True)
  return sources.ArraySource(images, labels, source.spec)


def open_train_source(config):
  """The train split of `config` as training reads it: decoded into memory
  when it fits `config.data.cache_mb` (module docstring), else streamed."""
  source = sources.open_source(config.data.name, 'train',
                               config.data.data_dir or None,
                               config_image_size(config), config_channels(config))
  return cached(source, config.data.get('cache_mb', DEFAULT_CACHE_MB))


def model_sizes(config):
  """The image sides the networks of `config` take (None = any: the VAE)."""
  if config.model.get('family', 'vae') == 'vae':
    return None
  if config.model.get('arch', 'tutorial') == 'resnet':
    from vaegan_jax.models import resnet  # pylint: disable=g-import-not-at-top
    return tuple(resnet.PLANS)
  from vaegan_jax.models import gan  # pylint: disable=g-import-not-at-top
  return tuple(gan.PLANS)


def config_channels(config) -> int:
  return int(config.data.get('channels', 0) or 0) if hasattr(config.data, 'get') else 0


def config_image_size(config):
  """`config.data.image_size`; for a folder left at 0, the images' own size
  (or the nearest the networks take; `sources.native_size`). None for TFDS
  datasets, whose size is fixed."""
  size = (config.data.get('image_size') if hasattr(config.data, 'get') else None) or None
  if size or not sources.is_folder(config.data.name):
    return size
  return sources.native_size(config.data.name, model_sizes(config), config_channels(config))


def resolve_image_size(config):
  """Writes the size `config_image_size` chose into `config.data.image_size`
  (folder datasets), so the config saved with a run names it."""
  if sources.is_folder(config.data.name) and not config.data.get('image_size'):
    config.data.image_size = int(config_image_size(config))
  return config


def image_shape(config) -> tuple:
  """(H, W, C) of the images of `config.data.name`; reads no pixels."""
  return sources.get_spec(config.data.name, config_image_size(config),
                          config_channels(config)).image_shape


def balanced_sample(labels, num: int, seed: int = 0) -> np.ndarray:
  """`num` row indices (sorted by class turn, fixed by `seed`): classes take
  turns (0, 1, ..., K-1, 0, ...), each class's rows in a seeded random order,
  so every class shows up while it has rows; with no labels (all -1), a seeded
  random sample. Never the first rows in file order.

  Args:
    labels: int (N,) labels, -1 where unknown.
    num: how many rows (at most N).

  Returns:
    int64 (min(num, N),) distinct row indices.
  """
  labels = np.asarray(labels)
  num = min(int(num), len(labels))
  rng = np.random.default_rng([int(seed), 0x6B1D])
  if not len(labels) or (labels < 0).all():
    return np.sort(rng.permutation(len(labels))[:num]).astype(np.int64)
  per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  out = []
  for turn in range(max(len(p) for p in per_class)):
    out.extend(int(p[turn]) for p in per_class if turn < len(p))
    if len(out) >= num:
      break
  return np.asarray(out[:num], np.int64)


def load_split(name: str, split: str, data_dir: str | None = None,
               max_examples: int | None = None, image_size: int | None = None,
               channels: int = 0):
  """Reads a (small) split into host memory.

  Args:
    name: a dataset name from `DATASETS`, or 'folder:PATH'.
    split: 'train' or 'test', or any TFDS split string.
    data_dir: where TFDS keeps prepared data; see `resolve_data_dir`.
    max_examples: read at most this many examples (a fixed class-balanced
      sample, see `read_all`).
    image_size: folder datasets only (default: the images' own size).
    channels: folder datasets only: 1 or 3 forces it; 0 = the majority's.

  Returns:
    images: uint8 array (N, H, W, C).
    labels: int32 array (N,), -1 where the dataset has no class labels.
  """
  source = sources.open_source(name, split, data_dir, image_size, channels)
  images, labels = read_all(source, max_examples)
  if not len(images):
    raise UserError(f'Split {split!r} of dataset {name!r} is empty.')
  return images, labels


class Data:
  """One dataset: the train split streamed (or cached: `open_train_source`),
  the test split in memory."""

  def __init__(self, config, max_test_examples: int | None = None):
    size = config_image_size(config)
    self.config = config
    channels = config_channels(config)
    self.spec = sources.get_spec(config.data.name, size, channels)
    self.train_source = open_train_source(config)
    self.test_images, self.test_labels = load_split(
        config.data.name, 'test', config.data.data_dir or None, max_test_examples, size,
        channels)
    self._train = None

  def _train_arrays(self):
    if self._train is None:
      self._train = read_all(self.train_source)
    return self._train

  @property
  def train_images(self):
    """The whole train split in memory (small datasets only)."""
    return self._train_arrays()[0]

  @property
  def train_labels(self):
    return self._train_arrays()[1]

  def train_iterator(self, sharding, start_step: int, seed: int | None = None) -> TrainIterator:
    """The training batches from `start_step` on, in the data order of
    `seed` (default `config.seed`: a single run's; vmapped seeds take one
    iterator per seed)."""
    return train_iterator(self.config, self.train_source, sharding, start_step, seed)


def train_iterator(config, source, sharding, start_step: int,
                   seed: int | None = None) -> TrainIterator:
  """The training batches of `config` over `source` (`open_train_source`)
  from `start_step` on, as training reads them: batch size, data order of
  `seed` (default `config.seed`), `config.data.worker_count`."""
  return TrainIterator(source, None, config.train.batch_size,
                       config.seed if seed is None else int(seed), sharding, start_step,
                       worker_count=config.data.get('worker_count', AUTO_WORKERS))


def create(config, mesh=None, max_test_examples: int | None = None) -> Data:
  """The data of `config` (DESIGN.md's `input_pipeline.create`)."""
  del mesh  # Batches are sharded by the caller's sharding.
  return Data(config, max_test_examples)
