"""Streams synthetic array_record datasets of growing size through the input pipeline.

  python experiments/data_scale.py [--sizes=10000,100000,300000] [--steps=100]
      [--batch=256] [--dir=/tmp]

For each size N: writes N random-looking 64x64x3 uint8 images (12 KB each,
uncompressed) into one array_record file in a temporary directory, then, in a
fresh subprocess (so peak RSS belongs to the streaming alone), reads `--steps`
global batches of `--batch` through `vaegan_jax.data.pipeline.TrainIterator`
exactly as training does (epoch permutation keyed by (seed, epoch), random
access, decode to float32 on grain's reader threads, global jax.Array) and
prints one JSON line:

  num_images, dataset_mb, write_s, images_per_s (pipeline alone, no model),
  rss_before_mb (after imports and opening the source), peak_rss_mb (whole
  subprocess), load_avg

The claim "memory does not grow with the dataset" is shown by peak_rss_mb
staying flat while dataset_mb grows by the same factor as N; the files are
deleted after each size. The reads come from the page cache where the file
fits in free RAM, so images/s is the pipeline's cost, not the disk's.
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


class RecordSource:
  """A source over an array_record file of raw 64x64x3 uint8 images (no labels)."""

  def __init__(self, path):
    import grain  # pylint: disable=g-import-not-at-top
    self.records = grain.sources.ArrayRecordDataSource([path])
    self.spec = None

  def __len__(self):
    return len(self.records)

  def read(self, indices):
    import numpy as np  # pylint: disable=g-import-not-at-top
    raw = self.records.__getitems__([int(i) for i in indices])
    images = np.stack([np.frombuffer(r, np.uint8).reshape(SHAPE) for r in raw])
    return images, np.full(len(raw), -1, np.int32)


def write(path, n):
  """N images: windows of one random pool, so writing costs little CPU."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  size = int(np.prod(SHAPE))
  pool = np.random.default_rng(0).integers(0, 256, 4 * size + 4096, dtype=np.uint8).tobytes()
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1,uncompressed')
  for i in range(n):
    offset = (i * 4099) % (len(pool) - size)
    writer.write(pool[offset:offset + size])
  writer.close()


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', default='10000,100000,300000')
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--dir', default=tempfile.gettempdir())
  parser.add_argument('--stream', help=argparse.SUPPRESS)  # Subprocess mode.
  args = parser.parse_args()
  if args.stream:
    stream(args.stream, args.steps, args.batch)
    return
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
