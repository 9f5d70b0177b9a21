"""Folder datasets read every file right: symlinks, 16-bit, palette / alpha /
CMYK, mixed channel counts, bad files, the cached index, the native size and
the class-balanced sample of the test split."""

import os

import numpy as np
from PIL import Image
import pytest

from conftest import load_config
from vaegan_jax import input_pipeline
from vaegan_jax.data import folder as folder_lib
from vaegan_jax.data import sources
from vaegan_jax.models import gan as gan_models


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
  """An empty index cache and fresh per-process memories for every test."""
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'cache'))
  sources.scan_folder.cache_clear()
  monkeypatch.setattr(sources, '_SAID', set())
  monkeypatch.setattr(folder_lib, 'FAILURES', folder_lib._Failures())  # pylint: disable=protected-access
  yield
  sources.scan_folder.cache_clear()


def _save(path, image, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = image if isinstance(image, Image.Image) else Image.fromarray(image)
  image.save(path, **kwargs)


def _digits(root, classes=3, per_class=4, size=28):
  for c in range(classes):
    for i in range(per_class):
      _save(f'{root}/{c}/{i}.png', np.full((size, size), 20 * c + i, np.uint8))
  return str(root)


def test_a_symlink_loop_is_followed_once_with_one_warning(tmp_path, capsys):
  root = _digits(tmp_path / 'd')
  os.symlink('..', f'{root}/2/loop')          # 2/loop -> the root: a loop.
  os.symlink(f'{root}/1', f'{root}/0/again')  # A second way into class 1.
  os.symlink(f'{root}/0/0.png', f'{root}/2/same.png')  # A second name of a file.
  index = sources.scan_folder(root)
  assert len(index.paths) == 12 and index.num_links_skipped == 3
  assert not any('loop' in p or 'again' in p or 'same' in p for p in index.paths)
  np.testing.assert_array_equal(np.bincount(index.labels), [4, 4, 4])
  out = capsys.readouterr().out
  assert out.count('warning:') == 1 and 'did not follow 3 symlink(s)' in out


def test_a_symlink_to_a_folder_outside_is_followed(tmp_path):
  _digits(tmp_path / 'elsewhere', classes=1)
  root = _digits(tmp_path / 'd', classes=2)
  os.symlink(f'{tmp_path}/elsewhere/0', f'{root}/2')
  index = sources.scan_folder(root)
  assert index.class_names == ('0', '1', '2') and len(index.paths) == 12


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
  values = np.array([[0, 1, 128, 129, 257, 383, 384],
                     [1000, 30000, 32767, 32768, 60000, 65534, 65535]], np.uint16)
  values = np.tile(values, (4, 2))[:, :8]  # 8x8
  _save(f'{tmp_path}/d/a/wide.png', Image.fromarray(values))
  _save(f'{tmp_path}/d/b/plain.png', np.zeros((8, 8), np.uint8))
  with Image.open(f'{tmp_path}/d/a/wide.png') as im:
    assert im.mode.startswith('I')  # Really 16 bits on disk.
  name = f'folder:{tmp_path}/d'
  source = sources.open_source(name, 'train', image_size=0)
  source.rows = np.arange(2)
  images, _ = source.read([0])
  np.testing.assert_array_equal(images[0, ..., 0], np.rint(values / 257.0).astype(np.uint8))
  assert len(np.unique(images)) > 2  # Not binarised to {0, 255}.


def test_palette_la_rgba_and_cmyk_are_decoded_explicitly(tmp_path):
  root = tmp_path / 'd'
  grey_pal = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), 'P')
  grey_pal.putpalette([v for g in (0, 50, 100, 200) for v in (g, g, g)])
  colour_pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), 'P')
  colour_pal.putpalette([255, 0, 0, 0, 0, 255])
  la = Image.fromarray(np.dstack([np.full((2, 2), 200, np.uint8),
                                  np.array([[255, 0], [128, 255]], np.uint8)]), 'LA')
  rgba = Image.fromarray(np.array([[[10, 20, 30, 255], [255, 255, 255, 0]]] * 2, np.uint8),
                         'RGBA')
  cmyk = Image.new('CMYK', (2, 2), (0, 255, 255, 0))  # Red.
  files = {'a/pal_grey.png': grey_pal, 'a/pal_colour.png': colour_pal, 'b/la.png': la,
           'b/rgba.png': rgba, 'c/cmyk.jpg': cmyk}
  for path, image in files.items():
    _save(f'{root}/{path}', image, **({'quality': 100} if path.endswith('jpg') else {}))
  index = sources.scan_folder(str(root))
  chans = dict(zip(index.paths, index.file_channels))
  assert chans == {'a/pal_colour.png': 3, 'a/pal_grey.png': 1, 'b/la.png': 1,
                   'b/rgba.png': 3, 'c/cmyk.jpg': 3}
  assert index.channels == 3  # 3 of 5 files are colour.

  def decoded(path, channels):
    with Image.open(f'{root}/{path}') as im:
      return folder_lib.decode(im, 2, channels)

  np.testing.assert_array_equal(decoded('a/pal_grey.png', 1)[..., 0], [[0, 50], [100, 200]])
  np.testing.assert_array_equal(decoded('a/pal_colour.png', 3)[0, 0], [255, 0, 0])
  np.testing.assert_array_equal(decoded('a/pal_colour.png', 3)[0, 1], [0, 0, 255])
  # Alpha premultiplied: transparent = black, half transparent = half as bright.
  np.testing.assert_array_equal(decoded('b/la.png', 1)[..., 0], [[200, 0], [100, 200]])
  np.testing.assert_array_equal(decoded('b/rgba.png', 3)[0], [[10, 20, 30], [0, 0, 0]])
  red = decoded('c/cmyk.jpg', 3).astype(int)
  assert (red[..., 0] > 240).all() and (red[..., 1:] < 15).all()


def test_mixed_channel_counts_follow_the_majority_in_one_line(tmp_path, capsys):
  root = tmp_path / 'd'
  for i in range(3):
    _save(f'{root}/grey/{i}.png', np.full((8, 8), 10 * i, np.uint8))
  for i in range(2):
    _save(f'{root}/colour/{i}.png', np.full((8, 8, 3), 10 * i, np.uint8))
  name = f'folder:{root}'
  assert sources.get_spec(name).image_shape == (8, 8, 1)
  out = capsys.readouterr().out
  assert len(out.splitlines()) == 1
  assert '1 channel(s) (the majority; --config.data.channels=1 or 3 forces it); 2 of 5 ' \
         'files are colour and are converted.' in out
  assert sources.get_spec(name, channels=3).image_shape == (8, 8, 3)
  assert 'forced by config.data.channels' in capsys.readouterr().out
  x, _ = input_pipeline.load_split(name, 'train', channels=3)
  assert x.shape[-1] == 3


def test_a_truncated_file_is_named_once_then_counted(tmp_path, capsys):
  root = _digits(tmp_path / 'd', classes=2, per_class=3)
  _save(f'{root}/1/bad.jpg', np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
  data = open(f'{root}/1/bad.jpg', 'rb').read()
  open(f'{root}/1/bad.jpg', 'wb').write(data[:len(data) // 3])
  name = f'folder:{root}'
  spec = sources.get_spec(name, 28)
  sources_ = [sources.FolderSource(root, 'train', spec) for _ in range(2)]
  for s in sources_:
    s.rows = np.arange(7)
  bad_row = sources_[0].index.paths.index('1/bad.jpg')
  for s in sources_:
    for _ in range(5):
      s.read([bad_row, bad_row])
  out = capsys.readouterr().out
  assert out.count('cannot decode 1/bad.jpg') == 1
  assert sources_[1].num_failures == 20


def test_the_index_is_cached_outside_the_folder_by_its_listing(tmp_path, monkeypatch, capsys):
  root = _digits(tmp_path / 'd', classes=2, per_class=3)
  monkeypatch.setattr(folder_lib, 'PROGRESS_FILES', 3)
  first = sources.scan_folder(root)
  assert 'indexing 6 files' in capsys.readouterr().out  # Progress for "large" folders.
  cached = os.listdir(tmp_path / 'cache' / 'folder_index')
  assert len(cached) == 1 and sorted(os.listdir(root)) == ['0', '1']  # Nothing in PATH.

  def no_headers(*args):
    raise AssertionError('headers read again')

  sources.scan_folder.cache_clear()
  with monkeypatch.context() as m:
    m.setattr(folder_lib, '_read_headers', no_headers)
    again = sources.scan_folder(root)
  assert again.paths == first.paths and (again.sizes == first.sizes).all()
  _save(f'{root}/1/new.png', np.zeros((28, 28), np.uint8))  # A new listing.
  sources.scan_folder.cache_clear()
  assert len(sources.scan_folder(root).paths) == 7


def test_native_size_by_default_else_the_nearest_supported_said_once(tmp_path, capsys):
  digits = _digits(tmp_path / 'digits', size=28)
  for family in ('vae', 'gan', 'vaegan'):
    config = load_config(family)
    config.data.name = f'folder:{digits}'
    assert config.data.image_size == 0
    assert input_pipeline.image_shape(config) == (28, 28, 1)
  big = _digits(tmp_path / 'big', size=100)
  config = load_config('gan')
  config.data.name = f'folder:{big}'
  assert input_pipeline.image_shape(config) == (64, 64, 1)
  assert input_pipeline.image_shape(config) == (64, 64, 1)
  out = capsys.readouterr().out
  assert out.count('images resized to 64x64 (they are 100x100, which the networks do '
                   'not take') == 1
  config = load_config('vae')
  config.data.name = f'folder:{big}'
  assert input_pipeline.image_shape(config) == (100, 100, 1)  # The VAE takes any size.
  mixed = tmp_path / 'mixed'
  for i, side in enumerate((30, 31, 34, 40, 90)):
    _save(f'{mixed}/{i}.png', np.zeros((side, side + 3), np.uint8))
  config.data.name = f'folder:{mixed}'
  assert input_pipeline.image_shape(config) == (32, 32, 1)  # Median shorter side 34.
  assert 'their sizes differ (median shorter side 34)' in capsys.readouterr().out
  config.data.image_size = 48  # Any size the networks take, when asked.
  assert input_pipeline.image_shape(config) == (48, 48, 1)


def test_gan_widths_follow_the_image_size():
  p28, p32 = gan_models.plan((28, 28, 1)), gan_models.plan((32, 32, 3))
  assert p32.g_widths == p28.g_widths and max(p32.d_widths) <= max(p28.d_widths)
  config = load_config('gan', 'cifar10')  # Radford's 32-px widths, as before.
  assert config.model.g_width_mult == 2.0 and config.model.d_width_mult == 2.0


def test_class_balanced_sample_of_a_class_sorted_split():
  labels = np.repeat(np.arange(10), 50)  # The first 36 rows are all class 0.
  rows = input_pipeline.balanced_sample(labels, 36, seed=0)
  assert len(set(rows)) == 36 and set(labels[rows]) == set(range(10))
  assert np.bincount(labels[rows]).max() - np.bincount(labels[rows]).min() <= 1
  np.testing.assert_array_equal(rows, input_pipeline.balanced_sample(labels, 36, seed=0))
  assert not np.array_equal(rows, input_pipeline.balanced_sample(labels, 36, seed=1))
  unlabelled = input_pipeline.balanced_sample(np.full(100, -1), 10, seed=0)
  assert len(set(unlabelled)) == 10 and not np.array_equal(unlabelled, np.arange(10))


def test_max_examples_of_a_folder_split_cover_every_class(tmp_path):
  root = _digits(tmp_path / 'd', classes=4, per_class=12)
  x, y = input_pipeline.load_split(f'folder:{root}', 'train', max_examples=8)
  assert len(x) == 8 and set(y) == {0, 1, 2, 3}


def test_streamed_reads_report_wait_rate_and_replaced_reads(tmp_path):
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  root = _digits(tmp_path / 'd', classes=2, per_class=3)
  _save(f'{root}/1/bad.jpg', np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
  data = open(f'{root}/1/bad.jpg', 'rb').read()
  open(f'{root}/1/bad.jpg', 'wb').write(data[:len(data) // 3])
  source = sources.FolderSource(root, 'train', sources.get_spec(f'folder:{root}', 28))
  source.rows = np.arange(7)  # Every file, the bad one included.
  it = input_pipeline.TrainIterator(source, None, 7, 0,
                                    sharding.data_sharding(sharding.make_mesh()))
  for _ in range(3):
    next(it)
  stats = it.take_stats(10.0)
  it.close()
  assert 0 <= stats['data_wait_fraction'] <= 1 and stats['decode_images_per_s'] > 0
  assert stats['replaced_reads'] >= 3  # Each epoch reads the bad file once.
