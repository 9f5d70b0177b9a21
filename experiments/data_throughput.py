"""Input-pipeline throughput: the project's training stream beside tf.data and torch.

  python experiments/data_throughput.py --ref_python=/tmp/refenv/bin/python \
      [--data_dir=/tmp/data_throughput] [--rounds=3] [--batch=128]

Three datasets, written once into `--data_dir` (seeded, so the same bytes on
every machine; reused when present):

  png32         50 000 32x32 RGB PNGs in 10 class folders (CIFAR-like: smooth
                colour fields plus noise, about CIFAR's 2-3 KB a file)
  jpeg178       20 000 178x218 (w x h) RGB JPEGs, quality 90 (CelebA-like),
                read as 64x64: centre square crop, bicubic resize (the
                project's `folder.decode` convention)
  array_record  the 50 000 PNGs of png32 as a TFDS dataset in array_record
                files (PNG-encoded `image`, `label`: what `tfds build cifar10
                --file_format=array_record` writes), built offline by the
                builder below

Pipelines, each producing float32 batches of `--batch` images in [0, 1]:

  vaegan_jax          the training stream exactly as `train.py` gets it:
                      `pipeline.open_train_source(config)` (`folder:PATH`, or
                      the TFDS name with `config.data.data_dir`) and
                      `pipeline.train_iterator(config, ...)` (global jax.Arrays,
                      float32), streamed (`config.data.cache_mb=0`, as any
                      split larger than the cache is), with the config's
                      default `config.data.worker_count`
  vaegan_jax[threads] the same with `config.data.worker_count=0` (grain's
                      reader threads in the training process)
  vaegan_jax[cached]  the same with the default `config.data.cache_mb` (512):
                      each of these splits fits, so it is decoded once into
                      memory when the iterator is made (`cache_fill_s`, not
                      in images_per_s) and batches are gathered from memory:
                      what a training run with default settings does here
  tf_data             folders: file list, shuffled; `map(read + decode_png /
                      decode_jpeg + crop + resize(bicubic, antialias) + round
                      to uint8, num_parallel_calls=AUTOTUNE)`, batch, /255,
                      prefetch(AUTOTUNE), deterministic=False.
                      array_record: shuffled indices, batched reads of the
                      records (array_record's ArrayRecordDataSource in a
                      numpy_function), unbatch, `map(parse_single_example +
                      decode_png, AUTOTUNE)`, batch, /255, prefetch
  torch               `DataLoader(ImageFolder(root, transform), batch_size,
                      shuffle=True, num_workers=--torch_workers)` with
                      [CenterCrop(178), Resize(64, BICUBIC)] + ToTensor();
                      array_record: the same DataLoader over
                      `tfds.builder_from_directory(...).as_data_source('train')`
                      (TFDS's documented PyTorch path), ToTensor-equivalent

tf_data and torch run under `--ref_python`, a venv of their own (never the
project's requirements), e.g.:

  python3.11 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.14.1 \
      torchvision==0.29.1 'tensorflow-cpu==2.21.*' tensorflow-datasets==4.9.10 \
      array_record==0.8.6 pillow numpy

One run: the (dataset, pipeline) cells are measured in `--rounds` rounds, the
cells interleaved within each round, so that load from other processes hits
all of them alike. Each measurement is a fresh process: it builds its
pipeline, reads `--warmup` batches (start-up, worker processes, first files
into the page cache are excluded), then times `--images` images (rounded up
to whole batches; `--jpeg_images` for jpeg178). Every file is in the page
cache (the data are read once before the first round), so the rates are the
pipelines' CPU cost, not the disk's.

Peak memory: this process samples the measuring process and all its
descendants (worker processes) every 0.2 s: `peak_rss_mb` is the largest sum
of their RSS, `peak_pss_mb` the largest sum of their PSS (shared pages split
between the processes that map them: the memory the tree really takes).

Prints one JSON line per measurement (`"kind": "measurement"`), then one per
(dataset, pipeline): images_per_s (median over the rounds), all rounds,
images_per_cpu_s (images per CPU second of the whole process tree over the
timed window: the rate one core gives), peak_rss_mb, peak_pss_mb (max over
rounds); writes the table to `--out` (default DATA_DIR/data_throughput.md).
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATASETS = ('png32', 'jpeg178', 'array_record')
PIPELINES = ('vaegan_jax', 'vaegan_jax[threads]', 'vaegan_jax[cached]', 'tf_data', 'torch')
REFERENCE = ('tf_data', 'torch')
NUM_PNG, NUM_JPEG = 50_000, 20_000
JPEG_W, JPEG_H, JPEG_OUT = 178, 218, 64
TFDS_NAME = 'data_throughput32'  # The array_record dataset's TFDS name.
_FORMAT = 1  # Bump when what `generate` writes changes.


# ---------------------------------------------------------------------------
# Process trees: memory and CPU (Linux /proc).
# ---------------------------------------------------------------------------


def _children_map():
  kids = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        stat = f.read()
    except OSError:
      continue
    ppid = int(stat[stat.rindex(')') + 2:].split()[1])
    kids.setdefault(ppid, []).append(int(entry))
  return kids


def process_tree(pid):
  """`pid` and all its live descendants."""
  kids, out, todo = _children_map(), [], [pid]
  while todo:
    p = todo.pop()
    out.append(p)
    todo.extend(kids.get(p, ()))
  return out


def tree_memory_mb(pid):
  """(sum of RSS, sum of PSS) in MiB over `pid`'s process tree."""
  rss = pss = 0
  page = os.sysconf('SC_PAGE_SIZE')
  for p in process_tree(pid):
    try:
      with open(f'/proc/{p}/statm') as f:
        rss += int(f.read().split()[1]) * page
      with open(f'/proc/{p}/smaps_rollup') as f:
        for line in f:
          if line.startswith('Pss:'):
            pss += int(line.split()[1]) * 1024
            break
    except OSError:
      continue
  return rss / 2**20, pss / 2**20


def tree_cpu_s(pid=None):
  """User + system CPU seconds of `pid`'s live process tree (default: this one)."""
  total, tick = 0, os.sysconf('SC_CLK_TCK')
  for p in process_tree(pid or os.getpid()):
    try:
      with open(f'/proc/{p}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
      continue
  return total / tick


class MemorySampler:
  """Peak tree RSS / PSS of a running process, sampled every `interval` s."""

  def __init__(self, pid, interval=0.2):
    self.pid, self.interval = pid, interval
    self.peak_rss = self.peak_pss = 0.0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while not self._stop.is_set():
      rss, pss = tree_memory_mb(self.pid)
      self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
      self._stop.wait(self.interval)

  def stop(self):
    self._stop.set()
    self._thread.join()


# ---------------------------------------------------------------------------
# The datasets.
# ---------------------------------------------------------------------------


def png_root(data_dir):
  return os.path.join(data_dir, 'png32')


def jpeg_root(data_dir):
  return os.path.join(data_dir, 'jpeg178')


def tfds_dir(data_dir):
  return os.path.join(data_dir, 'tfds')


def _smooth_images(rng, n, h, w, cells, noise):
  """n uint8 (h, w, 3) images: a coarse random colour grid upsampled
  (bicubic) plus Gaussian noise."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = np.empty((n, h, w, 3), np.uint8)
  coarse = rng.integers(0, 256, (n, *cells, 3), dtype=np.uint8)
  for k in range(n):
    base = np.asarray(Image.fromarray(coarse[k]).resize((w, h), Image.Resampling.BICUBIC),
                      np.float32)
    out[k] = np.clip(base + rng.normal(0.0, noise, base.shape), 0, 255).astype(np.uint8)
  return out


def _marker(root):
  return os.path.join(root, f'.complete_v{_FORMAT}')


def generate(data_dir, log):
  """Writes the three datasets under `data_dir` unless they are there."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = png_root(data_dir)
  if not os.path.exists(_marker(root)):
    t = time.time()
    rng = np.random.default_rng(20261207)
    for start in range(0, NUM_PNG, 1000):
      images = _smooth_images(rng, 1000, 32, 32, (4, 4), 10.0)
      for k, image in enumerate(images):
        i = start + k
        path = os.path.join(root, f'class{i % 10}', f'{i:05d}.png')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)
    open(_marker(root), 'w').close()
    log(f'wrote {NUM_PNG} PNGs into {root} in {time.time() - t:.0f} s')
  root = jpeg_root(data_dir)
  if not os.path.exists(_marker(root)):
    t = time.time()
    rng = np.random.default_rng(20261208)
    os.makedirs(os.path.join(root, 'faces'), exist_ok=True)
    for start in range(0, NUM_JPEG, 500):
      images = _smooth_images(rng, 500, JPEG_H, JPEG_W, (6, 5), 6.0)
      for k, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(root, 'faces', f'{start + k:06d}.jpg'),
                                    quality=90)
    open(_marker(root), 'w').close()
    log(f'wrote {NUM_JPEG} JPEGs into {root} in {time.time() - t:.0f} s')
  if not os.path.exists(_marker(tfds_dir(data_dir))):
    t = time.time()
    build_tfds(data_dir)
    open(_marker(tfds_dir(data_dir)), 'w').close()
    log(f'built {TFDS_NAME} (array_record) into {tfds_dir(data_dir)} in '
        f'{time.time() - t:.0f} s')


def png_files(data_dir):
  return sorted(glob.glob(os.path.join(png_root(data_dir), '*', '*.png')))


_BUILDER = []


def builder_class(data_dir=''):
  """The TFDS builder of the array_record dataset (registered on first call):
  the PNG files of png32, bytes as they are, labelled by their folder."""
  if _BUILDER:
    return _BUILDER[0]
  import numpy as np  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class DataThroughput32(tfds.core.GeneratorBasedBuilder):
    """png32's files as a TFDS dataset (array_record)."""
    VERSION = tfds.core.Version('1.0.0')
    PNG_DATA_DIR = data_dir

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(32, 32, 3)),
          'label': tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for path in png_files(self.PNG_DATA_DIR):
        with open(path, 'rb') as f:
          data = f.read()
        yield os.path.basename(path), {
            'image': data, 'label': int(os.path.basename(os.path.dirname(path))[5:])}

  assert DataThroughput32.name == TFDS_NAME, DataThroughput32.name
  _BUILDER.append(DataThroughput32)
  return DataThroughput32


def build_tfds(data_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  cls = builder_class(data_dir)
  tfds.disable_progress_bar()
  cls(data_dir=tfds_dir(data_dir)).download_and_prepare(file_format='array_record')


def array_record_files(data_dir):
  return sorted(glob.glob(os.path.join(tfds_dir(data_dir), TFDS_NAME, '*',
                                       f'{TFDS_NAME}-train.array_record*')))


# ---------------------------------------------------------------------------
# Measuring one pipeline (in its own process).
# ---------------------------------------------------------------------------


def timed(batches, warmup, num_batches, batch):
  """Reads `warmup` batches, then times `num_batches`; `batches()` gives the
  next batch, materialised on the host."""
  for _ in range(warmup):
    batches()
  c0, t0 = tree_cpu_s(), time.perf_counter()
  for _ in range(num_batches):
    batches()
  seconds, cpu = time.perf_counter() - t0, tree_cpu_s() - c0
  return {'images': num_batches * batch, 'seconds': round(seconds, 3),
          'images_per_s': round(num_batches * batch / seconds, 1),
          'cpu_s': round(cpu, 2),
          'images_per_cpu_s': round(num_batches * batch / cpu, 1) if cpu > 0 else None}


def project_config(dataset, data_dir, batch, worker_count=None, cached=False):
  """The config a training run on the dataset would have (streamed, or
  with the default cache when `cached`)."""
  from vaegan_jax import config_base  # pylint: disable=g-import-not-at-top
  config = config_base.get_base_config()
  config.train.batch_size = batch
  if not cached:
    config.data.cache_mb = 0  # Streamed, as every split larger than the cache.
  if dataset == 'png32':
    config.data.name = f'folder:{png_root(data_dir)}'
  elif dataset == 'jpeg178':
    config.data.name = f'folder:{jpeg_root(data_dir)}'
    config.data.image_size = JPEG_OUT
  else:
    config.data.name = TFDS_NAME
    config.data.data_dir = tfds_dir(data_dir)
  if worker_count is not None:
    config.data.worker_count = worker_count
  return config


def register_tfds(data_dir):
  """Makes TFDS_NAME a dataset the project opens (as it opens cifar10)."""
  from vaegan_jax.data import sources  # pylint: disable=g-import-not-at-top
  builder_class(data_dir)
  sources.DATASETS[TFDS_NAME] = sources.DatasetSpec(TFDS_NAME, (32, 32, 3), 10)


def measure_project(args, worker_count, cached=False):
  import jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax import validation  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  register_tfds(args.data_dir)
  config = project_config(args.dataset, args.data_dir, args.batch, worker_count, cached)
  validation.check_value('data.worker_count', config.data.worker_count)
  t = time.perf_counter()
  source = pipeline.open_train_source(config)
  fill_s = time.perf_counter() - t
  it = pipeline.train_iterator(config, source, sharding.data_sharding(sharding.make_mesh()), 0)
  try:
    out = timed(lambda: jax.block_until_ready(next(it)), args.warmup, args.num_batches,
                args.batch)
    out['worker_count'] = it.worker_count
    if cached:
      out['cache_fill_s'] = round(fill_s, 2)
    out['output'] = f'{jax.tree.map(lambda x: (x.dtype.name, x.shape), next(it))}'
  finally:
    it.close()
  return out


def measure_tf_data(args):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  auto = tf.data.AUTOTUNE
  options = tf.data.Options()
  options.deterministic = False
  if args.dataset == 'array_record':
    import numpy as np  # pylint: disable=g-import-not-at-top
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    records = array_record_data_source.ArrayRecordDataSource(array_record_files(args.data_dir))
    n = len(records)

    def read(indices):
      return np.asarray(records.__getitems__([int(i) for i in indices]), dtype=object)

    features = {'image': tf.io.FixedLenFeature([], tf.string),
                'label': tf.io.FixedLenFeature([], tf.int64)}

    def decode(serialized):
      ex = tf.io.parse_single_example(serialized, features)
      return tf.io.decode_png(ex['image'], channels=3), ex['label']

    ds = (tf.data.Dataset.range(n).shuffle(n, seed=0).repeat().batch(args.batch)
          .map(lambda i: tf.numpy_function(read, [i], tf.string), num_parallel_calls=auto)
          .unbatch().map(decode, num_parallel_calls=auto))
  else:
    root = png_root(args.data_dir) if args.dataset == 'png32' else jpeg_root(args.data_dir)
    files = sorted(glob.glob(os.path.join(root, '*', '*')))
    classes = sorted({os.path.basename(os.path.dirname(f)) for f in files})
    labels = [classes.index(os.path.basename(os.path.dirname(f))) for f in files]
    jpeg = args.dataset == 'jpeg178'

    def decode(path, label):
      raw = tf.io.read_file(path)
      if not jpeg:
        return tf.io.decode_png(raw, channels=3), label
      image = tf.io.decode_jpeg(raw, channels=3)
      shape = tf.shape(image)
      side = tf.minimum(shape[0], shape[1])
      image = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2,
                                            (shape[1] - side) // 2, side, side)
      image = tf.image.resize(image, [JPEG_OUT, JPEG_OUT], method='bicubic', antialias=True)
      return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), label

    ds = (tf.data.Dataset.from_tensor_slices((files, labels)).shuffle(len(files), seed=0)
          .repeat().map(decode, num_parallel_calls=auto))
  ds = (ds.batch(args.batch, drop_remainder=True)
        .map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y), num_parallel_calls=auto)
        .prefetch(auto).with_options(options))
  it = iter(ds)
  out = timed(lambda: next(it), args.warmup, args.num_batches, args.batch)
  x, y = next(it)
  out['output'] = f'{x.dtype.name} {tuple(x.shape)}, {y.dtype.name}'
  return out


class _Endless:
  """Batches of a DataLoader across epochs."""

  def __init__(self, loader):
    self.loader, self.it = loader, iter(loader)

  def __call__(self):
    try:
      return next(self.it)
    except StopIteration:
      self.it = iter(self.loader)
      return next(self.it)


def measure_torch(args):
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision import datasets, transforms  # pylint: disable=g-import-not-at-top
  if args.dataset == 'array_record':
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder_from_directory(os.path.dirname(array_record_files(args.data_dir)[0]))
    records = builder.as_data_source(split='train')

    class Records(torch.utils.data.Dataset):

      def __len__(self):
        return len(records)

      def __getitem__(self, i):
        ex = records[i]
        image = torch.from_numpy(ex['image'].copy()).permute(2, 0, 1).float().div(255.0)
        return image, int(ex['label'])

    dataset = Records()
  elif args.dataset == 'png32':
    dataset = datasets.ImageFolder(png_root(args.data_dir), transforms.ToTensor())
  else:
    dataset = datasets.ImageFolder(jpeg_root(args.data_dir), transforms.Compose([
        transforms.CenterCrop(min(JPEG_W, JPEG_H)),
        transforms.Resize(JPEG_OUT, transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor()]))
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=args.batch, shuffle=True, drop_last=True,
      num_workers=args.torch_workers, generator=torch.Generator().manual_seed(0),
      persistent_workers=args.torch_workers > 0)
  out = timed(_Endless(loader), args.warmup, args.num_batches, args.batch)
  x, y = _Endless(loader)()
  out['output'] = f'{x.dtype} {tuple(x.shape)}, {y.dtype}'
  out['num_workers'] = args.torch_workers
  return out


def measure(args):
  if args.measure == 'vaegan_jax':
    out = measure_project(args, None)
  elif args.measure == 'vaegan_jax[threads]':
    out = measure_project(args, 0)
  elif args.measure == 'vaegan_jax[cached]':
    out = measure_project(args, None, cached=True)
  elif args.measure == 'tf_data':
    out = measure_tf_data(args)
  else:
    out = measure_torch(args)
  print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------


def _warm_page_cache(data_dir):
  for path in glob.glob(os.path.join(data_dir, '**', '*'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        while f.read(1 << 20):
          pass


def run_one(args, dataset, pipeline_name, log):
  python = args.ref_python if pipeline_name in REFERENCE else sys.executable
  num_images = args.jpeg_images if dataset == 'jpeg178' else args.images
  num_batches = -(-num_images // args.batch)
  cmd = [python, os.path.abspath(__file__), f'--measure={pipeline_name}',
         f'--dataset={dataset}', f'--data_dir={args.data_dir}', f'--batch={args.batch}',
         f'--warmup={args.warmup}', f'--num_batches={num_batches}',
         f'--torch_workers={args.torch_workers}']
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             VAEGAN_JAX_CACHE=os.path.join(args.data_dir, 'cache'))
  load = os.getloadavg()[0]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env)
  sampler = MemorySampler(proc.pid)
  out, err = proc.communicate()
  sampler.stop()
  if proc.returncode:
    log(err[-3000:])
    raise SystemExit(f'error: {pipeline_name} on {dataset} failed (status {proc.returncode}).')
  result = json.loads(out.strip().splitlines()[-1])
  result.update(kind='measurement', dataset=dataset, pipeline=pipeline_name,
                peak_rss_mb=round(sampler.peak_rss), peak_pss_mb=round(sampler.peak_pss),
                load_avg=[round(load, 2), round(os.getloadavg()[0], 2)])
  return result


def summarise(rows):
  out = []
  for dataset in DATASETS:
    for name in PIPELINES:
      cell = [r for r in rows if r['dataset'] == dataset and r['pipeline'] == name]
      if not cell:
        continue
      rates = [r['images_per_s'] for r in cell]
      per_cpu = [r['images_per_cpu_s'] for r in cell if r['images_per_cpu_s']]
      out.append({
          'kind': 'summary', 'dataset': dataset, 'pipeline': name,
          'images_per_s': round(statistics.median(rates), 1), 'rounds': rates,
          'images_per_cpu_s': round(statistics.median(per_cpu), 1) if per_cpu else None,
          'peak_rss_mb': max(r['peak_rss_mb'] for r in cell),
          'peak_pss_mb': max(r['peak_pss_mb'] for r in cell),
          'images_per_measurement': cell[0]['images'],
          'workers': cell[0].get('worker_count', cell[0].get('num_workers')),
          **({'cache_fill_s': [r['cache_fill_s'] for r in cell]}
             if 'cache_fill_s' in cell[0] else {}),
          'output': cell[0]['output']})
  return out


def table(summary):
  lines = ['| dataset | pipeline | images/s (median) | rounds | images per CPU-s | '
           'peak RSS MiB (PSS) | workers |', '|---|---|---|---|---|---|---|']
  for s in summary:
    fill = (f'; decoded into memory first in {statistics.median(s["cache_fill_s"]):.1f} s'
            if 'cache_fill_s' in s else '')
    lines.append(f'| {s["dataset"]} | {s["pipeline"]} | {s["images_per_s"]:.0f} | '
                 f'{", ".join(f"{r:.0f}" for r in s["rounds"])} | '
                 f'{s["images_per_cpu_s"] or 0:.0f} | {s["peak_rss_mb"]} ({s["peak_pss_mb"]}) | '
                 f'{s["workers"]}{fill} |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default='/tmp/data_throughput')
  parser.add_argument('--ref_python', default='', help='python of the tf/torch venv; '
                      "'' = the project's pipelines only")
  parser.add_argument('--datasets', default=','.join(DATASETS))
  parser.add_argument('--pipelines', default=','.join(PIPELINES))
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--warmup', type=int, default=5, help='untimed batches')
  parser.add_argument('--images', type=int, default=30720, help='timed images (png32, array_record)')
  parser.add_argument('--jpeg_images', type=int, default=7680, help='timed images (jpeg178)')
  parser.add_argument('--torch_workers', type=int, default=2)
  parser.add_argument('--out', default='')
  parser.add_argument('--measure', help=argparse.SUPPRESS)  # In the measuring process.
  parser.add_argument('--dataset', help=argparse.SUPPRESS)
  parser.add_argument('--num_batches', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
  if args.measure:
    measure(args)
    return
  log = lambda m: print(m, file=sys.stderr, flush=True)  # pylint: disable=unnecessary-lambda-assignment
  datasets = [d for d in args.datasets.split(',') if d]
  pipelines = [p for p in args.pipelines.split(',') if p]
  if not args.ref_python:
    pipelines = [p for p in pipelines if p not in REFERENCE]
  for name in datasets + pipelines:
    if name not in DATASETS + PIPELINES:
      raise SystemExit(f'error: unknown dataset or pipeline {name!r}.')
  os.makedirs(args.data_dir, exist_ok=True)
  os.environ['VAEGAN_JAX_CACHE'] = os.path.join(args.data_dir, 'cache')
  generate(args.data_dir, log)
  from vaegan_jax.data import folder  # pylint: disable=g-import-not-at-top
  for root in (png_root(args.data_dir), jpeg_root(args.data_dir)):
    folder.scan_folder(root)  # The cached index: no measurement reads headers.
  _warm_page_cache(args.data_dir)
  log(f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, '
      f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}')
  rows = []
  for r in range(args.rounds):
    for dataset in datasets:
      for name in pipelines:
        row = run_one(args, dataset, name, log)
        row['round'] = r
        rows.append(row)
        print(json.dumps(row), flush=True)
  summary = summarise(rows)
  for s in summary:
    print(json.dumps(s), flush=True)
  text = table(summary)
  log(text)
  out = args.out or os.path.join(args.data_dir, 'data_throughput.md')
  with open(out, 'w') as f:
    f.write(f'{" ".join(sys.argv)}\n{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, '
            f'{os.cpu_count()} CPUs, load {[r["load_avg"] for r in rows]}\n\n{text}\n')


if __name__ == '__main__':
  main()
