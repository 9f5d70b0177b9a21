"""Streams and trains on synthetic array_record datasets, up to larger than memory.

Two modes; every result is one JSON line on stdout.

  python experiments/data_scale.py --size_gb=32 [--dir=/tmp] [--train_steps=60]
      [--config=vae.py:celeb_a] [--epoch_batch=256] [--keep] [--dataset=PATH]

Larger than memory: writes an array_record file of `--size_gb` GB (1e9 bytes)
of 64x64x3 uint8 images (12288 bytes each, uncompressed; image i carries i in
its first 4 bytes, `example_ids`), then, each in a fresh subprocess so that
peak RSS belongs to it alone:
  * 'epoch': one full epoch of the training stream (pipeline.TrainIterator,
    as training reads it: permutation keyed by (seed, epoch), random access
    in grain's threads, global jax.Array; images left uint8, `epoch_pass`),
    counting
    the example ids of the epoch's positions: exactly_once, missing,
    duplicated, images_per_s (pipeline alone), peak_rss_mb. It reads in
    chunks of `--epoch_chunk_steps` steps, each by a new iterator started
    mid-epoch, and keeps its counts in epoch_count.npz beside the file: a
    killed pass resumes from its last chunk when rerun. Before it,
    'epoch_indices' counts the same way the indices the pipeline asks for
    over the epoch, split over 2 processes (nothing read: seconds);
  * 'train': `vaegan_jax.train.train_and_evaluate` with `--config` on the
    file (the train split streamed, never cached: config.data.cache_mb=0) for
    `--train_steps` steps: images_per_s and data_wait_fraction (time the loop
    spent waiting for grain's host batch / loop time, after the first
    `WARMUP_STEPS` steps; next_batch_fraction also counts making the global
    jax.Array), losses, peak_rss_mb.
Then the file is deleted (unless --keep). --dataset=PATH reuses a file this
script wrote (not deleted).

  python experiments/data_scale.py [--sizes=10000,100000,300000] [--steps=100]
      [--batch=256] [--dir=/tmp]

Growing sizes: for each size N writes N images into one file in a temporary
directory, then, in a fresh subprocess, reads `--steps` global batches of
`--batch` through the pipeline and prints num_images, dataset_mb, write_s,
images_per_s (pipeline alone, no model), rss_before_mb (after imports and
opening the source), peak_rss_mb (whole subprocess), load_avg. The claim
"memory does not grow with the dataset" is shown by peak_rss_mb staying flat
while dataset_mb grows by the same factor as N; the files are deleted after
each size. The reads come from the page cache where the file fits in free
RAM, so images/s is the pipeline's cost, not the disk's.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPE = (64, 64, 3)


NAME = 'data_scale'  # The dataset name training sees (`register`).
WARMUP_STEPS = 5     # Steps left out of the train run's rates (compilation).


def spec():
  from vaegan_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.DatasetSpec(NAME, SHAPE, 0)


class RecordSource:
  """A source over an array_record file of raw 64x64x3 uint8 images (no labels)."""

  def __init__(self, path):
    import grain  # pylint: disable=g-import-not-at-top
    self.records = grain.sources.ArrayRecordDataSource([path])
    self.spec = spec()

  def __len__(self):
    return len(self.records)

  def read(self, indices):
    import numpy as np  # pylint: disable=g-import-not-at-top
    raw = self.records.__getitems__([int(i) for i in indices])
    images = np.stack([np.frombuffer(r, np.uint8).reshape(SHAPE) for r in raw])
    return images, np.full(len(raw), -1, np.int32)


def write(path, n):
  """N images: windows of one random pool, so writing costs little CPU.

  The first 4 bytes of image i (its first 4 uint8 values) hold i as a
  little-endian uint32, so a reader can tell which example it got
  (`example_ids`)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  size = int(np.prod(SHAPE))
  pool = np.random.default_rng(0).integers(0, 256, 4 * size + 4096, dtype=np.uint8).tobytes()
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1,uncompressed')
  for i in range(n):
    offset = (i * 4099) % (len(pool) - size)
    writer.write(i.to_bytes(4, 'little') + pool[offset + 4:offset + size])
  writer.close()


def example_ids(images):
  """The ids `write` put into images: uint8 (n, 64, 64, 3) or their float32
  [0, 1] decoding (pipeline.to_float) -> int64 (n,)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  head = np.asarray(images).reshape(len(images), -1)[:, :4]
  if head.dtype != np.uint8:
    head = np.rint(head * 255.0)
  head = head.astype(np.int64)
  return head[:, 0] | head[:, 1] << 8 | head[:, 2] << 16 | head[:, 3] << 24


def stream(path, steps, batch):
  """Runs in the subprocess: prints the JSON of one measurement."""
  import jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  source = RecordSource(path)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  it = pipeline.TrainIterator(source, None, batch, 0,
                              sharding.data_sharding(sharding.make_mesh()))
  jax.block_until_ready(next(it))  # Threads started, first batch compiled nothing.
  t = time.perf_counter()
  for _ in range(steps):
    b = next(it)
  jax.block_until_ready(b)
  seconds = time.perf_counter() - t
  it.close()
  print(json.dumps({
      'images_per_s': round(steps * batch / seconds),
      'rss_before_mb': round(rss_before),
      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def epoch_rows(source, batch, seed, sharding, start_step, stop_step):
  """This process's rows of training steps [start_step, stop_step), read by
  `pipeline.TrainIterator` (started at `start_step`, as a resumed run does).

  Returns:
    positions: int64 (n,), each row's place in the endless training sequence
      (step * batch + row of the global batch); ids: int64 (n,) the example
      ids read there (`example_ids`).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.TrainIterator(source, None, batch, seed, sharding, start_step)
  positions, ids = [], []
  try:
    for step in range(start_step, stop_step):
      images = next(it)['image']
      for shard in images.addressable_shards:
        if shard.replica_id:
          continue
        data = np.asarray(shard.data)
        first = shard.index[0].start or 0
        positions.append(step * batch + first + np.arange(len(data)))
        ids.append(example_ids(data))
  finally:
    it.close()
  if not positions:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.concatenate(positions), np.concatenate(ids)


def tally(positions, ids, num_examples, pos_counts, id_counts, epoch=0):
  """Adds the rows read at the positions of `epoch` to the two count arrays
  (int64 (num_examples,): reads per position of the epoch, reads per example)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  positions, ids = np.asarray(positions), np.asarray(ids)
  mask = positions // num_examples == epoch
  np.add.at(pos_counts, positions[mask] % num_examples, 1)
  np.add.at(id_counts, ids[mask], 1)


def summary(pos_counts, id_counts):
  """positions (read), positions_once (each of the epoch's positions read
  once), examples_read, distinct, missing (never read), duplicated (read more
  than once), exactly_once (every example exactly once)."""
  out = {'positions': int(pos_counts.sum()),
         'positions_once': bool((pos_counts == 1).all()),
         'examples_read': int(id_counts.sum()),
         'distinct': int((id_counts > 0).sum()),
         'missing': int((id_counts == 0).sum()),
         'duplicated': int((id_counts > 1).sum())}
  out['exactly_once'] = (out['positions_once'] and out['missing'] == 0
                         and out['duplicated'] == 0)
  return out


def count_epoch(positions, ids, num_examples, epoch=0):
  """`summary` of the examples read at the positions of `epoch`.

  Args:
    positions, ids: from `epoch_rows` (possibly concatenated over processes
      and over an interrupted and a resumed part).
    num_examples: the dataset's size.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  pos_counts = np.zeros(num_examples, np.int64)
  id_counts = np.zeros(num_examples, np.int64)
  tally(positions, ids, num_examples, pos_counts, id_counts, epoch)
  return summary(pos_counts, id_counts)


def index_count(num_examples, batch, num_processes=2, seed=0):
  """One epoch of the indices the pipeline asks for, nothing read: each
  process's rows (`pipeline.process_slice`'s split) of every global batch of
  `pipeline.global_batch_indices`, counted as `count_epoch` counts reads."""
  import math  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  pos_counts = np.zeros(num_examples, np.int64)
  id_counts = np.zeros(num_examples, np.int64)
  per = batch // num_processes
  for step in range(math.ceil(num_examples / batch)):
    idx = pipeline.global_batch_indices(num_examples, batch, seed, step)
    for p in range(num_processes):
      rows = slice(p * per, (p + 1) * per)
      tally(step * batch + np.arange(batch)[rows], idx[rows], num_examples,
            pos_counts, id_counts)
  return {'phase': 'epoch_indices', 'num_images': num_examples, 'batch': batch,
          'processes': num_processes, **summary(pos_counts, id_counts)}


def peak_rss_mb():
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _read_uint8(source, indices):
  """pipeline.read_batch without the float32 decode: the same rows, as uint8."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  images, labels = source.read(indices)
  return {'image': images, 'label': np.asarray(labels, np.int32)}


def epoch_pass(path, batch, state_path, chunk_steps=500, seed=0):
  """Subprocess: one full epoch of the training stream over `path`, counted.

  The stream is the training one (TrainIterator: order, reads, grain threads,
  global arrays) except that images stay uint8: the float32 decode is 2/3 of
  the pipeline's CPU per batch here and cannot change which example is read
  (the train run measures the pipeline with it). The epoch is read in chunks
  of `chunk_steps` steps, each by a new iterator started at its first step
  (as a resumed run starts); after each chunk the counts so far go to
  `state_path` and a progress line is printed, so a killed pass resumes
  there when rerun."""
  import math  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.read_batch = _read_uint8
  source = RecordSource(path)
  n = len(source)
  rss_before = peak_rss_mb()
  steps = math.ceil(n / batch)
  data = sharding.data_sharding(sharding.make_mesh())
  done, seconds = 0, 0.0
  pos_counts, id_counts = np.zeros(n, np.int64), np.zeros(n, np.int64)
  if os.path.exists(state_path):
    with np.load(state_path) as saved:
      if int(saved['batch']) == batch and len(saved['pos_counts']) == n:
        done, seconds = int(saved['done']), float(saved['seconds'])
        pos_counts, id_counts = saved['pos_counts'], saved['id_counts']
  resumed_at = done
  while done < steps:
    stop = min(steps, done + chunk_steps)
    t = time.perf_counter()
    tally(*epoch_rows(source, batch, seed, data, done, stop), n, pos_counts, id_counts)
    seconds += time.perf_counter() - t
    done = stop
    np.savez(state_path + '.tmp.npz', batch=batch, done=done, seconds=seconds,
             pos_counts=pos_counts, id_counts=id_counts)
    os.replace(state_path + '.tmp.npz', state_path)
    print(json.dumps({'phase': 'epoch_progress', 'steps_done': done, 'steps': steps,
                      'images_read': int(id_counts.sum()), 'duplicated_so_far':
                      int((id_counts > 1).sum()), 'seconds': round(seconds, 1),
                      'peak_rss_mb': peak_rss_mb()}), file=sys.stderr, flush=True)
  print(json.dumps({'phase': 'epoch', 'num_images': n, 'batch': batch, 'steps': steps,
                    'chunk_steps': chunk_steps, 'resumed_at_step': resumed_at,
                    **summary(pos_counts, id_counts), 'seconds': round(seconds, 1),
                    'images_per_s': round(steps * batch / seconds) if seconds else None,
                    'rss_before_mb': round(rss_before), 'peak_rss_mb': peak_rss_mb()}),
        flush=True)


def register(path, num_test=256):
  """Makes `NAME` a dataset training can open: its train split is the file
  (streamed), its test split the file's first `num_test` images in memory."""
  from vaegan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import sources  # pylint: disable=g-import-not-at-top
  sources.DATASETS[NAME] = spec()
  open_source = sources.open_source

  def open_data_scale(name, split, *args, **kwargs):
    if name != NAME:
      return open_source(name, split, *args, **kwargs)
    train = RecordSource(path)
    if split == 'train':
      return train
    images, labels = pipeline.read_all(train, num_test)
    return sources.ArraySource(images, labels, spec())

  sources.open_source = open_data_scale


class _TimedIterator:
  """Records (start, seconds) of each next() of the wrapped iterator."""

  def __init__(self, it, calls):
    self.it, self.calls = it, calls

  def __iter__(self):
    return self

  def __next__(self):
    t = time.perf_counter()
    item = next(self.it)
    self.calls.append((t, time.perf_counter() - t))
    return item

  def close(self):
    close = getattr(self.it, 'close', None)
    if close is not None:
      close()


def timed_iterator():
  """Times every TrainIterator from now on: returns two lists of (start,
  seconds), one per batch: `waits`, the wait for grain's host batch (the
  data), and `nexts`, the whole `next(batch)` of the training loop (the wait
  plus making the global jax.Array)."""
  from vaegan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  waits, nexts = [], []
  init = pipeline.TrainIterator.__init__

  def timed_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self._it = _TimedIterator(self._it, waits)  # pylint: disable=protected-access

  next_batch = pipeline.TrainIterator.__next__

  def timed_next(self):
    t = time.perf_counter()
    batch = next_batch(self)
    nexts.append((t, time.perf_counter() - t))
    return batch

  pipeline.TrainIterator.__init__ = timed_init
  pipeline.TrainIterator.__next__ = timed_next
  return waits, nexts


def train_config(name, steps):
  from vaegan_jax import config_files  # pylint: disable=g-import-not-at-top
  module, _, arg = name.partition(':')
  config = config_files.load(os.path.join(ROOT, 'configs', module), arg or None)
  config.data.name = NAME
  config.data.cache_mb = 0  # Always streamed, whatever the size.
  config.train.num_steps = steps
  config.train.log_every_steps = max(1, steps // 10)
  config.train.sample_every_steps = config.train.eval_every_steps = steps
  config.train.checkpoint_every_steps = steps
  config.eval.generative_metrics = False
  return config


def train_run(path, config_name, steps, workdir):
  """Subprocess: trains `config_name` on the file for `steps` steps."""
  from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  kernels.setup()  # As vaegan_jax.main does, before anything is compiled.
  register(path)
  waits, nexts = timed_iterator()
  config = train_config(config_name, steps)
  rss_before = peak_rss_mb()
  t = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - t
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  losses = [(r['step'], round(r['loss'], 2)) for r in rows if 'loss' in r]
  # Steady state: from the start of batch WARMUP_STEPS to the start of the
  # last one (so the final evaluation, grid and save are left out).
  steady = slice(WARMUP_STEPS, len(nexts) - 1)
  loop_s = nexts[-1][0] - nexts[WARMUP_STEPS][0]
  batch = config.train.batch_size
  print(json.dumps({
      'phase': 'train', 'config': config_name, 'num_images': len(RecordSource(path)),
      'steps': steps, 'batch': batch, 'seconds': round(seconds, 1),
      'images_per_s': round((len(nexts) - 1 - WARMUP_STEPS) * batch / loop_s, 1),
      'data_wait_fraction': round(sum(d for _, d in waits[steady]) / loop_s, 4),
      'next_batch_fraction': round(sum(d for _, d in nexts[steady]) / loop_s, 4),
      'first_loss': losses[0] if losses else None, 'last_loss': losses[-1] if losses else None,
      'rss_before_mb': round(rss_before), 'peak_rss_mb': peak_rss_mb()}), flush=True)


def _subprocess(*flags):
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), *flags],
                        stdout=subprocess.PIPE, text=True, check=False,
                        env=dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu')))
  if proc.returncode:
    sys.exit(f'error: {flags[0].split("=")[0]} failed with status {proc.returncode} '
             '(its messages are above).')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def larger_than_memory(args):
  """--size_gb mode: write, count one epoch, train, delete."""
  own = not args.dataset
  tmp = tempfile.mkdtemp(prefix='data_scale_', dir=args.dir) if own else None
  path = os.path.join(tmp, 'images.array_record') if own else args.dataset
  ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  try:
    if own:
      n = int(args.size_gb * 1e9) // (SHAPE[0] * SHAPE[1] * SHAPE[2])
      t = time.time()
      write(path, n)
      os.sync()
      print(json.dumps({'phase': 'write', 'num_images': n, 'path': path,
                        'write_s': round(time.time() - t, 1)}), flush=True)
    size = os.path.getsize(path)
    print(json.dumps({'phase': 'dataset', 'dataset_bytes': size,
                      'dataset_gb': round(size / 1e9, 2), 'dataset_gib': round(size / 2**30, 2),
                      'ram_gib': round(ram / 2**30, 2), 'larger_than_ram': size > ram}), flush=True)
    if not args.skip_epoch:
      print(json.dumps(index_count(len(RecordSource(path)), args.epoch_batch)), flush=True)
      state = os.path.join(os.path.dirname(path), 'epoch_count.npz')
      print(json.dumps(_subprocess(f'--epoch_pass={path}', f'--epoch_batch={args.epoch_batch}',
                                   f'--epoch_state={state}',
                                   f'--epoch_chunk_steps={args.epoch_chunk_steps}')), flush=True)
    if args.train_steps:
      workdir = tempfile.mkdtemp(prefix='data_scale_run_', dir=args.dir)
      try:
        print(json.dumps(_subprocess(f'--train={path}', f'--config={args.config}',
                                     f'--train_steps={args.train_steps}',
                                     f'--workdir={workdir}')), flush=True)
      finally:
        shutil.rmtree(workdir, ignore_errors=True)
  finally:
    if own and not args.keep:
      shutil.rmtree(tmp, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size_gb', type=float, default=0.0)
  parser.add_argument('--dataset', default='')
  parser.add_argument('--keep', action='store_true')
  parser.add_argument('--skip_epoch', action='store_true')
  parser.add_argument('--epoch_batch', type=int, default=256)
  parser.add_argument('--epoch_chunk_steps', type=int, default=500)
  parser.add_argument('--epoch_state', help=argparse.SUPPRESS)
  parser.add_argument('--train_steps', type=int, default=60)
  parser.add_argument('--config', default='vae.py:celeb_a')
  parser.add_argument('--sizes', default='10000,100000,300000')
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--dir', default=tempfile.gettempdir())
  parser.add_argument('--stream', help=argparse.SUPPRESS)  # Subprocess modes.
  parser.add_argument('--epoch_pass', help=argparse.SUPPRESS)
  parser.add_argument('--train', help=argparse.SUPPRESS)
  parser.add_argument('--workdir', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.stream:
    stream(args.stream, args.steps, args.batch)
  elif args.epoch_pass:
    epoch_pass(args.epoch_pass, args.epoch_batch, args.epoch_state, args.epoch_chunk_steps)
  elif args.train:
    train_run(args.train, args.config, args.train_steps, args.workdir)
  elif args.size_gb or args.dataset:
    larger_than_memory(args)
  else:
    growing_sizes(args)


def growing_sizes(args):
  """--sizes mode (module docstring)."""
  for n in (int(s) for s in args.sizes.split(',')):
    tmp = tempfile.mkdtemp(prefix='data_scale_', dir=args.dir)
    path = os.path.join(tmp, 'images.array_record')
    try:
      t = time.time()
      write(path, n)
      write_s = time.time() - t
      proc = subprocess.run(
          [sys.executable, os.path.abspath(__file__), f'--stream={path}',
           f'--steps={args.steps}', f'--batch={args.batch}'],
          capture_output=True, text=True, check=False,
          env=dict(os.environ, JAX_PLATFORMS='cpu'))
      if proc.returncode:
        sys.exit(f'error: streaming failed: {proc.stderr.strip().splitlines()[-1]}')
      result = json.loads(proc.stdout.strip().splitlines()[-1])
      print(json.dumps({'num_images': n, 'dataset_mb': round(os.path.getsize(path) / 1e6, 1),
                        'write_s': round(write_s, 1), **result,
                        'load_avg': round(os.getloadavg()[0], 1)}), flush=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
