"""Folder datasets: discovery, labels, split, decoding, bad files, bad paths,
and a training run on one."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from conftest import ROOT, load_config
from vaegan_jax import input_pipeline
from vaegan_jax import run_config
from vaegan_jax import sharding
from vaegan_jax import train
from vaegan_jax.data import sources
from vaegan_jax.errors import UserError


def _save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def make_folder(root):
  """cats/ (RGB PNG 30x40, nested RGB JPEG 51x17), dogs/ (grey PNG, RGB WebP,
  a truncated JPEG), one corrupt .png and one text file."""
  rng = np.random.default_rng(0)
  _save(f'{root}/cats/a.png', rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
  tall = np.zeros((51, 17, 3), np.uint8)
  tall[17:34] = 255  # Exactly the centre square is white.
  _save(f'{root}/cats/sub/b.jpg', tall, quality=100)
  _save(f'{root}/dogs/c.png', rng.integers(0, 256, (33, 33), dtype=np.uint8))
  _save(f'{root}/dogs/d.webp', rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
  _save(f'{root}/dogs/e.jpg', rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
  with open(f'{root}/dogs/e.jpg', 'rb') as f:
    data = f.read()
  with open(f'{root}/dogs/e.jpg', 'wb') as f:
    f.write(data[:len(data) // 3])  # Header intact, pixels truncated.
  with open(f'{root}/dogs/broken.png', 'wb') as f:
    f.write(b'not an image at all')
  with open(f'{root}/dogs/notes.txt', 'w') as f:
    f.write('ignored')
  return str(root)


@pytest.fixture
def folder(tmp_path):
  sources.scan_folder.cache_clear()
  return make_folder(tmp_path / 'pics')


def test_folder_index_counts_labels_and_channels(folder, capsys):
  index = sources.scan_folder(folder)
  assert index.paths == ('cats/a.png', 'cats/sub/b.jpg', 'dogs/c.png', 'dogs/d.webp',
                         'dogs/e.jpg')
  assert index.class_names == ('cats', 'dogs')
  np.testing.assert_array_equal(index.labels, [0, 0, 1, 1, 1])
  assert index.channels == 3 and index.num_skipped == 1
  spec = input_pipeline.get_spec(f'folder:{folder}', 32)
  assert spec.image_shape == (32, 32, 3) and spec.num_classes == 2
  out = capsys.readouterr().out
  assert out.count('skipped 1 unreadable image file(s) (first: dogs/broken.png)') == 1


def test_folder_split_is_deterministic_and_disjoint(folder):
  index = sources.scan_folder(folder)
  spec = sources.get_spec(f'folder:{folder}')
  train = sources.FolderSource(folder, 'train', spec)
  test = sources.FolderSource(folder, 'test', spec)
  assert len(train) + len(test) == 5 and len(test) >= 1 and len(train) >= 1
  assert not set(train.rows) & set(test.rows)
  sources.scan_folder.cache_clear()
  np.testing.assert_array_equal(sources.scan_folder(folder).is_test, index.is_test)


def test_folder_images_are_centre_cropped_resized_and_labelled(folder):
  sources.scan_folder(folder)
  spec = sources.get_spec(f'folder:{folder}', 32)
  source = sources.FolderSource(folder, 'train', spec)
  source.rows = np.arange(4)  # a, b, c, d: every readable kind.
  images, labels = source.read([0, 1, 2, 3])
  assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, [0, 0, 1, 1])
  assert images[1].min() >= 240  # The white centre square of the 51x17 JPEG.
  grey = images[2]
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])  # Grey -> RGB.


def test_truncated_file_is_replaced_by_the_next_image_once(folder, capsys):
  sources.scan_folder(folder)
  spec = sources.get_spec(f'folder:{folder}', 16)
  source = sources.FolderSource(folder, 'train', spec)
  source.rows = np.arange(5)
  images, labels = source.read([4, 4, 0])  # Row 4 is the truncated e.jpg.
  first, _ = source.read([0])
  np.testing.assert_array_equal(images[0], first[0])  # Wrapped round to row 0.
  np.testing.assert_array_equal(images[1], first[0])
  assert labels[0] == 0
  assert capsys.readouterr().out.count('cannot decode dogs/e.jpg') == 1


def test_grey_only_flat_folder_is_one_channel_and_unlabelled(tmp_path):
  sources.scan_folder.cache_clear()
  for i in range(12):
    _save(f'{tmp_path}/flat/{i:02d}.png', np.full((9 + i, 7, 1)[:2], i * 20, np.uint8))
  spec = sources.get_spec(f'folder:{tmp_path}/flat', 32)
  assert spec.image_shape == (32, 32, 1) and spec.num_classes == 0
  x, y = input_pipeline.load_split(f'folder:{tmp_path}/flat', 'train', image_size=32)
  x_test, _ = input_pipeline.load_split(f'folder:{tmp_path}/flat', 'test', image_size=32)
  assert len(x) + len(x_test) == 12 and x.shape[1:] == (32, 32, 1)
  assert (y == -1).all()


@pytest.mark.parametrize('kind', ['missing', 'file', 'empty', 'no_path'])
def test_bad_folder_paths_are_one_line_user_errors(tmp_path, kind):
  sources.scan_folder.cache_clear()
  path = {'missing': tmp_path / 'nope', 'file': tmp_path / 'x.png',
          'empty': tmp_path / 'empty', 'no_path': ''}[kind]
  (tmp_path / 'x.png').write_bytes(b'')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'readme.txt').write_text('no images')
  with pytest.raises(UserError) as e:
    input_pipeline.get_spec(f'folder:{path}')
  message = str(e.value)
  assert '\n' not in message and message.startswith('folder:') or 'needs a path' in message
  assert {'missing': 'no such folder', 'file': 'is a file', 'empty': 'found 0 readable',
          'no_path': 'needs a path'}[kind] in message


def test_folder_training_batches_are_deterministic_and_resumable(folder):
  sources.scan_folder(folder)
  spec = sources.get_spec(f'folder:{folder}', 16)
  source = sources.FolderSource(folder, 'train', spec)
  shard = sharding.data_sharding(sharding.make_mesh())

  def run(start, n):
    it = input_pipeline.TrainIterator(source, None, 4, 3, shard, start_step=start)
    out = [np.asarray(next(it)['image']) for _ in range(n)]
    it.close()
    return np.stack(out)

  full = run(0, 6)
  np.testing.assert_array_equal(run(0, 6), full)
  np.testing.assert_array_equal(run(2, 4), full[2:])
  assert full.shape == (6, 4, 16, 16, 3) and full.max() <= 1.0


def test_gan_trains_on_a_folder_at_image_size_32(tmp_path, capsys):
  sources.scan_folder.cache_clear()
  root = make_folder(tmp_path / 'pics')
  config = load_config('gan', 'smoke')
  config.data.name = f'folder:{root}'
  config.data.image_size = 32
  config.train.batch_size = 4
  config.train.num_steps = 2
  config.train.log_every_steps = 1
  state = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert int(state.step) == 2
  assert state.params['discriminator']['Conv_0']['kernel'].shape[2] == 3
  rows = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert [r['step'] for r in rows if 'd_loss' in r] == [1, 2]
  assert all(0 <= r['data_wait_fraction'] <= 1 and r['decode_images_per_s'] > 0
             for r in rows if 'd_loss' in r)
  out = capsys.readouterr().out
  assert 'no sample metrics (FID, KID, ...) for folder:' in out
  assert "note: no best checkpoint: config.eval.best_metric='fid' is not computed" in out
  assert ' | data wait ' in out and not (tmp_path / 'run' / 'checkpoints_best').exists()


def test_cli_missing_folder_is_one_line_before_anything_starts(tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/gan.py:smoke',
       f'--workdir={workdir}', f'--config.data.name=folder:{tmp_path}/missing'],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  # Refused by the config validation, before anything starts: bad usage, exit 2.
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert errors[0].startswith(f"error: config.data.name='folder:{tmp_path}/missing' is not "
                              f"allowed (folder:{tmp_path}/missing: no such folder "
                              f"({tmp_path}/missing).)"), errors[0]
  assert '(config file configs/gan.py:smoke)' in errors[0]
  assert 'Traceback' not in result.stderr and not workdir.exists()


def test_image_size_is_frozen_for_folders_only():
  old = {'seed': 0, 'data': {'name': 'mnist5k', 'data_dir': ''}}  # Before the key existed.
  assert run_config.drift(old, {'seed': 0, 'data': {'name': 'mnist5k', 'data_dir': '',
                                                   'image_size': 64}}) == []
  folder = {'seed': 0, 'data': {'name': 'folder:/x', 'image_size': 64}}
  assert run_config.drift(folder, {'seed': 0, 'data': {'name': 'folder:/x',
                                                      'image_size': 32}}) == [
                                                          'data.image_size: 64 -> 32']
