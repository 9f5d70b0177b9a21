"""Input worker processes (config.data.worker_count): the same batches as the
training process's own reader threads, in order and after a resume; errors,
undecodable files and bad settings; and the faster decoding paths giving the
bytes the plain ones give."""

import io
import os
import time

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import load_config
from vaegan_jax import input_pipeline
from vaegan_jax import sharding
from vaegan_jax import validation
from vaegan_jax.data import folder as folder_lib
from vaegan_jax.data import pipeline
from vaegan_jax.data import sources
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import WorkerError


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'cache'))
  sources.scan_folder.cache_clear()
  monkeypatch.setattr(folder_lib, 'FAILURES', folder_lib._Failures())  # pylint: disable=protected-access
  yield
  sources.scan_folder.cache_clear()


def _save(path, image, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, **kwargs)


def _pictures(root, n=40):
  """n RGB pictures of assorted sizes and formats in 2 class folders."""
  rng = np.random.default_rng(0)
  for i in range(n):
    h, w = 20 + i % 7, 18 + (3 * i) % 11
    ext = ('png', 'jpg', 'webp')[i % 3]
    _save(f'{root}/{"ab"[i % 2]}/{i:03d}.{ext}', rng.integers(0, 256, (h, w, 3), np.uint8))
  return str(root)


def _shard():
  return sharding.data_sharding(sharding.make_mesh())


def _batches(source, start, n, worker_count, batch=8, seed=3):
  it = input_pipeline.TrainIterator(source, None, batch, seed, _shard(), start_step=start,
                                    worker_count=worker_count)
  try:
    assert it.worker_count == worker_count
    return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]
  finally:
    it.close()


def test_worker_batches_equal_in_process_batches_and_resume_mid_epoch(tmp_path):
  root = _pictures(tmp_path / 'pics')
  source = sources.open_source(f'folder:{root}', 'train', image_size=16)
  assert isinstance(source, sources.FolderSource) and len(source) > 8
  steps = 2 * len(source) // 8 + 1  # Over two epoch ends.
  threads = _batches(source, 0, steps, 0)
  workers = _batches(source, 0, steps, 2)
  jax.tree.map(np.testing.assert_array_equal, workers, threads)
  # A run resumed mid-epoch with workers reads what the in-process run read.
  resumed = _batches(source, 3, steps - 3, 2)
  jax.tree.map(np.testing.assert_array_equal, resumed, threads[3:])
  assert threads[0]['image'].dtype == np.float32 and threads[0]['image'].shape == (8, 16, 16, 3)


def _ignores_sigint(pid) -> bool:
  """Whether process `pid` ignores SIGINT (Linux: /proc/PID/status SigIgn;
  elsewhere assumed once it has handed out a batch)."""
  import signal  # pylint: disable=g-import-not-at-top
  try:
    with open(f'/proc/{pid}/status') as f:
      mask = next(l for l in f if l.startswith('SigIgn:')).split()[1]
  except OSError:
    return True
  return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_reaching_the_workers_leaves_them_reading(tmp_path):
  """Ctrl-C in a terminal signals the whole process group: the workers ignore
  it (the training process saves, then closes the iterator), so the batches
  go on, the same as without the signal, and closing stops the workers."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  root = _pictures(tmp_path / 'pics', n=24)
  source = sources.open_source(f'folder:{root}', 'train', image_size=16)
  want = _batches(source, 0, 6, 0)
  before = {p.pid for p in multiprocessing.active_children()}
  it = input_pipeline.TrainIterator(source, None, 8, 3, _shard(), worker_count=2)
  try:
    # One batch from each worker: both have started (and set their handler).
    # A Ctrl-C in a worker's first moments, before that, is the training
    # loop's to handle (test_validation::test_ctrl_c_that_kills_a_starting_worker_saves).
    got = [jax.tree.map(np.asarray, next(it)) for _ in range(2)]
    workers = [p for p in multiprocessing.active_children()
               if p.pid not in before and 'resource_tracker' not in p.name]
    assert len(workers) >= 2
    deadline = time.time() + 60
    while not all(_ignores_sigint(p.pid) for p in workers):  # Their handler is set.
      assert time.time() < deadline, 'the workers never set SIGINT to ignored'
      time.sleep(0.05)
    for p in workers:
      os.kill(p.pid, signal.SIGINT)
    got += [jax.tree.map(np.asarray, next(it)) for _ in range(4)]
    assert all(p.is_alive() for p in workers)
  finally:
    it.close()
  jax.tree.map(np.testing.assert_array_equal, got, want)
  for p in workers:
    p.join(timeout=30)
    assert not p.is_alive()


def test_streamed_tfds_split_in_workers_equals_the_cached_one(data_dir):
  """The TFDS source (tfds.data_source over array_record) goes to the worker
  processes and gives the batches of the in-memory split."""
  config = load_config('vae')
  config.data.data_dir = data_dir
  config.train.batch_size = 16
  config.data.worker_count = 2
  streamed = []
  for cache_mb in (512, 0):
    config.data.cache_mb = cache_mb
    source = input_pipeline.open_train_source(config)
    it = input_pipeline.train_iterator(config, source, _shard(), 280)  # Over the epoch end.
    assert it.worker_count == (2 if cache_mb == 0 else 0)  # In memory: no workers.
    streamed.append([jax.tree.map(np.asarray, next(it)) for _ in range(3)])
    it.close()
  jax.tree.map(np.testing.assert_array_equal, streamed[0], streamed[1])


class FailingSource:
  """8 images; reading index 5 raises (importable, so workers unpickle it)."""
  spec = None

  def __len__(self):
    return 8

  def read(self, indices):
    if 5 in list(indices):
      raise OSError('disk went away')
    return np.zeros((len(indices), 2, 2, 1), np.uint8), np.zeros(len(indices), np.int32)


def test_an_exception_in_a_worker_process_reaches_next_with_its_step():
  bad_step = next(s for s in range(8) if 5 in pipeline.global_batch_indices(8, 2, 0, s))
  it = input_pipeline.TrainIterator(FailingSource(), None, 2, 0, _shard(), worker_count=2)
  for _ in range(bad_step):
    next(it)
  with pytest.raises(WorkerError, match=f'worker process failed at step {bad_step}: '
                     'OSError: disk went away'):
    next(it)
  it.close()


def test_an_undecodable_file_read_in_workers_is_named_once_and_counted(tmp_path, capsys):
  root = _pictures(tmp_path / 'pics', n=6)
  _save(f'{root}/b/bad.jpg', np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8))
  data = open(f'{root}/b/bad.jpg', 'rb').read()
  open(f'{root}/b/bad.jpg', 'wb').write(data[:len(data) // 3])
  source = sources.FolderSource(root, 'train', sources.get_spec(f'folder:{root}', 16))
  source.rows = np.arange(7)  # Every file, the bad one included.
  it = input_pipeline.TrainIterator(source, None, 7, 0, _shard(), worker_count=2)
  for _ in range(4):
    next(it)
  stats = it.take_stats(10.0)
  it.close()
  assert stats['decode_images_per_s'] > 0
  assert stats['replaced_reads'] >= 4  # Each epoch reads the bad file once.
  assert capsys.readouterr().out.count('cannot decode b/bad.jpg') == 1


def test_worker_count_resolution_and_bad_settings(tmp_path):
  root = _pictures(tmp_path / 'pics', n=6)
  folder = sources.open_source(f'folder:{root}', 'train', image_size=16)
  memory = sources.ArraySource(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4))
  cores = pipeline.num_cores()
  assert pipeline.resolve_worker_count(-1, folder) == min(pipeline.MAX_AUTO_WORKERS, cores)
  assert pipeline.resolve_worker_count(3, folder) == 3
  assert pipeline.resolve_worker_count(0, folder) == 0
  assert pipeline.resolve_worker_count(-1, memory) == 0  # In memory: the training process.
  assert pipeline.resolve_worker_count(3, memory) == 0
  for bad in (-2, 1.5, 'x', True):
    with pytest.raises(UsageError, match=r'config\.data\.worker_count=.* is not allowed; '
                       r'allowed: -1 \(one worker process per CPU core\)'):
      pipeline.resolve_worker_count(bad, folder)
  config = load_config('vae')
  assert config.data.worker_count == -1
  for bad, why in ((-2, 'is out of range'), (300, 'is out of range')):
    config.data.worker_count = bad
    with pytest.raises(validation.ConfigError, match=rf'config\.data\.worker_count=.*{why}'):
      validation.validate(config)


def test_training_iterators_take_worker_count_from_the_config(tmp_path):
  root = _pictures(tmp_path / 'pics', n=12)
  config = load_config('vae')
  config.data.name = f'folder:{root}'
  config.data.image_size = 16
  config.data.cache_mb = 0
  config.train.batch_size = 4
  source = input_pipeline.open_train_source(config)
  for count, expected in ((0, 0), (1, 1), (-1, min(pipeline.MAX_AUTO_WORKERS,
                                                   pipeline.num_cores()))):
    config.data.worker_count = count
    it = input_pipeline.train_iterator(config, source, _shard(), 0)
    assert it.worker_count == expected
    it.close()


def test_fast_folder_decoding_gives_the_bytes_of_decode(tmp_path):
  """`decode_into` (PIL crop + resize for L / RGB files, others through
  `decode`) equals `decode` of the opened file, for every size and channel
  count; a misnamed file still opens."""
  rng = np.random.default_rng(0)
  paths = []
  for i, (mode, shape) in enumerate([('RGB', (51, 17, 3)), ('RGB', (17, 51, 3)),
                                     ('L', (33, 40)), ('RGB', (32, 32, 3)), ('L', (28, 28))]):
    for ext in ('png', 'jpg', 'webp'):
      path = str(tmp_path / f'{i}.{ext}')
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
      paths.append(path)
  Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), 'RGBA').save(
      tmp_path / 'rgba.png')
  Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(
      tmp_path / 'misnamed.png', format='JPEG')
  paths += [str(tmp_path / 'rgba.png'), str(tmp_path / 'misnamed.png')]
  for path in paths:
    for size in (16, 28, 32):
      for channels in (1, 3):
        with Image.open(path) as im:
          im.load()
          expected = folder_lib.decode(im, size, channels)
        out = np.empty((size, size, channels), np.uint8)
        with folder_lib.open_image(open(path, 'rb').read(), path) as im:
          im.load()
          folder_lib.decode_into(out, im)
        np.testing.assert_array_equal(out, expected, err_msg=f'{path} {size} {channels}')


def test_plain_pngs_decode_as_pillow_decodes_them_and_others_fall_back(tmp_path):
  rng = np.random.default_rng(1)
  for mode, shape in (('RGB', (7, 9, 3)), ('L', (12, 5)), ('RGB', (300, 200, 3))):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, 'PNG')
    data = buf.getvalue()
    fast = folder_lib._decode_png(data)  # pylint: disable=protected-access
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      assert fast.mode == im.mode and fast.size == im.size and fast.tobytes() == im.tobytes()
    for cut in range(0, len(data), max(1, len(data) // 50)):  # Truncated files fail
      try:                                                    # where Pillow's load fails.
        im = Image.open(io.BytesIO(data[:cut]))
        im.load()
        pillow_fails = False
      except Exception:  # pylint: disable=broad-except
        pillow_fails = True
      try:
        fast_fails = folder_lib._decode_png(data[:cut]) is None and pillow_fails  # pylint: disable=protected-access
      except OSError:
        fast_fails = True
      assert fast_fails == pillow_fails, (shape, cut)
  for mode, array in (('RGBA', rng.integers(0, 256, (5, 5, 4), dtype=np.uint8)),
                      ('P', rng.integers(0, 256, (5, 5), dtype=np.uint8)),
                      (None, rng.integers(0, 65535, (5, 5), dtype=np.uint16))):  # 16-bit.
    buf = io.BytesIO()
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buf, 'PNG')
    assert folder_lib._decode_png(buf.getvalue()) is None  # pylint: disable=protected-access
    with folder_lib.open_image(buf.getvalue(), 'x.png') as im:
      assert im.mode == Image.open(io.BytesIO(buf.getvalue())).mode


@pytest.mark.parametrize('options', [{}, {'progressive': True}, {'quality': 50}])
def test_plain_jpegs_decode_as_pillow_decodes_them_truncated_ones_fail_alike(options):
  rng = np.random.default_rng(2)
  for shape in ((37, 23, 3), (40, 40), (218, 178, 3)):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, 'JPEG', **options)
    data = buf.getvalue()
    for cut in [*range(0, len(data), max(1, len(data) // 60)), len(data)]:
      try:
        im = Image.open(io.BytesIO(data[:cut]))
        im.load()
        pillow = (im.mode, im.size, im.tobytes())
      except Exception:  # pylint: disable=broad-except
        pillow = 'fails'
      try:
        fast = folder_lib._decode_jpeg(data[:cut])  # pylint: disable=protected-access
        fast = pillow if fast is None else (fast.mode, fast.size, fast.tobytes())
      except OSError:
        fast = 'fails'
      assert fast == pillow, (shape, cut, len(data))
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8), 'CMYK').save(buf, 'JPEG')
  assert folder_lib._decode_jpeg(buf.getvalue()) is None  # pylint: disable=protected-access


def test_encoded_tfds_images_decode_as_tfds_decodes_them(tmp_path):
  """A TFDS split with an encoded `image` is read undecoded and decoded by
  the project: the same pixels as TFDS's own decoding + `fit_image`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  pictures = [rng.integers(0, 256, (24, 24, 3), np.uint8) for _ in range(12)]

  class WorkerTestPictures(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(24, 24, 3)),
          'label': tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i, p in enumerate(pictures):  # PNG bytes: encoding arrays needs TensorFlow.
        png = io.BytesIO()
        Image.fromarray(p).save(png, format='PNG')
        yield i, {'image': png.getvalue(), 'label': i % 2}

  data_dir = str(tmp_path / 'tfds')
  tfds.disable_progress_bar()
  WorkerTestPictures(data_dir=data_dir).download_and_prepare(file_format='array_record')
  records = sources.tfds_records('worker_test_pictures', 'train', data_dir)
  assert isinstance(records[0]['image'], bytes)
  decoded = tfds.data_source('worker_test_pictures', split='train', data_dir=data_dir)
  for shape in ((24, 24, 3), (16, 16, 3), (16, 16, 1)):
    spec = sources.DatasetSpec('worker_test_pictures', shape, 2)
    x, y = sources.TfdsSource(records, spec).read(np.arange(12))
    x_ref, y_ref = sources.TfdsSource(decoded, spec).read(np.arange(12))
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
  x, _ = sources.TfdsSource(records, sources.DatasetSpec(
      'worker_test_pictures', (24, 24, 3), 2)).read(np.arange(12))
  assert sorted(map(bytes, x)) == sorted(map(bytes, pictures))  # TFDS stores them shuffled.


def test_ctrl_c_in_a_streamed_run_with_workers_exits_cleanly(tmp_path):
  """The whole process group gets Ctrl-C (as from a terminal) in a streamed
  run with worker processes: the run saves and exits 130, leaves no worker
  behind, and Python's resource tracker finds no leaked semaphores (the
  workers' queues are released when the iterator closes, not at interpreter
  exit, which the error exit skips)."""
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
  root = _pictures(tmp_path / 'pics', n=60)
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
       f'--workdir={workdir}', f'--config.data.name=folder:{root}', '--config.data.image_size=28',
       '--config.data.cache_mb=0', '--config.data.worker_count=2',
       '--config.train.num_steps=100000'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    for line in proc.stdout:  # Until it trains past its first evaluation.
      if line.startswith('step 30/'):
        break
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 130, err[-2000:]
  assert 'saving the step reached' in err and 'leaked' not in err, err[-2000:]
  assert 'Traceback' not in err, err[-2000:]
  deadline = time.time() + 20  # No worker (or tracker) of its group stays.
  while True:
    left = subprocess.run(['ps', '-o', 'pid=,args=', '-g', str(proc.pid)],
                          capture_output=True, text=True).stdout.strip()
    if not left or time.time() > deadline:
      break
    time.sleep(0.2)
  assert not left, left
