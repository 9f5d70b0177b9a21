"""Random-access image sources: the embedded mnist5k, TFDS data sources, folders.

Every source is indexable without being read whole: `len(source)` examples,
`source.read(indices)` -> (uint8 images (n, H, W, C), int32 labels (n,)),
labels -1 where the dataset has none. Three kinds:

  * `mnist5k`: the project's own TFDS builder (vaegan_jax/datasets/mnist5k.py),
    prepared offline as array_record files (no TensorFlow) and read through
    `tfds.data_source`.
  * every other name in `DATASETS`: `tfds.data_source` over array_record files
    prepared in `data_dir` (or TFDS's default); never downloaded when the
    download host is unreachable (one-line error instead of TFDS's retries).
  * `folder:PATH`: PNG/JPEG/WebP files found recursively under PATH, labelled
    by their top-level sub-folder when there are several, centre-cropped and
    resized to `config.data.image_size`. See `scan_folder`.

TensorFlow is never imported here.
"""

import dataclasses
import functools
import os
import socket
import threading
import zlib

from absl import logging
import numpy as np

from vaegan_jax.errors import UserError


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
FOLDER_PREFIX = 'folder:'
DEFAULT_IMAGE_SIZE = 64
DEFAULT_EMBEDDED_DATA_DIR = os.path.join(
    os.path.expanduser('~'), '.cache', 'vaegan_jax', 'tensorflow_datasets')
TF_HINT = 'pip install -r requirements-tf.txt'


def is_folder(name: str) -> bool:
  return name.startswith(FOLDER_PREFIX)


def get_spec(name: str, image_size: int | None = None) -> DatasetSpec:
  """The spec of a known dataset or of `folder:PATH`; a UserError otherwise.

  Args:
    name: a key of `DATASETS`, or 'folder:PATH'.
    image_size: side of the square images of a folder dataset (default 64);
      ignored for TFDS datasets, whose shape is fixed.
  """
  if is_folder(name):
    folder = scan_folder(name[len(FOLDER_PREFIX):])
    size = int(image_size or DEFAULT_IMAGE_SIZE)
    if size < 8:
      raise UserError(f'config.data.image_size={size} is too small; use 32, 64 or 128.')
    return DatasetSpec(name, (size, size, folder.channels), folder.num_classes)
  if name not in DATASETS:
    raise UserError(f'Unknown dataset {name!r}; known datasets: '
                    f'{", ".join(sorted(DATASETS))}, or folder:PATH.')
  return DATASETS[name]


def resolve_data_dir(name: str, data_dir: str | None) -> str | None:
  """The embedded set lives in the user's cache; real sets in TFDS's default."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return DEFAULT_EMBEDDED_DATA_DIR if name == EMBEDDED else None


# ---------------------------------------------------------------------------
# Decoding helpers (numpy + PIL).
# ---------------------------------------------------------------------------


def fit_image(image: np.ndarray, shape: tuple) -> np.ndarray:
  """uint8 (h, w, c) -> uint8 `shape` (H, W, C): centre square crop, antialiased
  resize, grey<->RGB conversion. Returns `image` itself when it already fits."""
  if image.ndim == 2:
    image = image[..., None]
  height, width, channels = shape
  if image.shape == tuple(shape):
    return image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image = image[top:top + side, left:left + side]
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  return _pil_to_array(pil, shape)


def _pil_to_array(pil, shape: tuple) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width, channels = shape
  if pil.mode not in ('L', 'RGB'):
    pil = pil.convert('RGBA').convert('RGB') if channels == 3 else pil.convert('L')
  pil = pil.convert('L' if channels == 1 else 'RGB')
  if pil.size != (width, height):
    w, h = pil.size  # Centre square crop (no filter bleed from outside), then resize.
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    pil = pil.crop((left, top, left + side, top + side)).resize(
        (width, height), Image.Resampling.BICUBIC)
  out = np.asarray(pil, dtype=np.uint8)
  return out[..., None] if out.ndim == 2 else out


# ---------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------


class ArraySource:
  """An in-memory source over uint8 images (N, H, W, C) and int32 labels (N,)."""

  def __init__(self, images, labels, spec: DatasetSpec | None = None):
    self.images = np.asarray(images)
    self.labels = np.asarray(labels, dtype=np.int32)
    self.spec = spec

  def __len__(self):
    return len(self.images)

  def read(self, indices):
    indices = np.asarray(indices)
    return self.images[indices], self.labels[indices]


class TfdsSource:
  """Examples of a TFDS data source (or any sequence of feature dicts),
  preprocessed to `spec.image_shape`."""

  def __init__(self, records, spec: DatasetSpec):
    self.records, self.spec = records, spec

  def __len__(self):
    return len(self.records)

  def read(self, indices):
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    if hasattr(self.records, '__getitems__'):
      examples = self.records.__getitems__(indices)
    else:
      examples = [self.records[i] for i in indices]
    spec = self.spec
    images = np.stack([fit_image(np.asarray(e['image'], np.uint8), spec.image_shape)
                       for e in examples]) if examples else np.zeros(
                           (0, *spec.image_shape), np.uint8)
    labels = np.asarray([int(e[spec.label_key]) if spec.num_classes else -1
                         for e in examples], np.int32)
    return images, labels


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
  """Makes sure `name` is prepared as array_record in `data_dir`; fails fast
  (one line) when offline, when TensorFlow would be needed, or when only
  tfrecord files exist."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vaegan_jax.datasets import mnist5k  # pylint: disable=g-import-not-at-top,unused-import  # Registers the builder.

  builder = tfds.builder(name, data_dir=data_dir)
  where = data_dir or '~/tensorflow_datasets (or $TFDS_DATA_DIR)'
  # TFDS warns "Variant folder ... has no dataset_info.json" when asked about
  # a folder it has not finished preparing: ask only once that file exists.
  if (builder.data_path / 'dataset_info.json').exists() and builder.is_prepared():
    file_format = str(getattr(builder.info.file_format, 'value', builder.info.file_format))
    if 'array_record' not in file_format:
      raise UserError(
          f'Dataset {name!r} in {where} is stored as {file_format}, but streaming '
          f'reads array_record: run `tfds build {name} --file_format=array_record '
          f'--data_dir=DIR` (needs TensorFlow: {TF_HINT}) and pass '
          f'--config.data.data_dir=DIR.')
    return
  if name == EMBEDDED:
    print(f'Building the embedded dataset {name} into {builder.data_dir} '
          '(offline, a few seconds).', flush=True)
    tfds.disable_progress_bar()  # The builder shows the project's own bar.
    try:
      builder.download_and_prepare(file_format='array_record')
    except FileExistsError:  # Each process of a multi-process run builds it; one
      if not tfds.builder(name, data_dir=data_dir).is_prepared():  # rename wins.
        raise
    return
  if not _download_host_reachable():
    raise UserError(
        f'Dataset {name!r} is not prepared in {where} and the download host is '
        f'unreachable. On a machine with network run `tfds build {name} '
        f'--file_format=array_record --data_dir=DIR`, copy DIR here and pass '
        f'--config.data.data_dir=DIR.')
  logging.info('Downloading and preparing %s into %s.', name, builder.data_dir)
  try:
    builder.download_and_prepare(file_format='array_record')
  except ImportError as e:
    if 'tensorflow' not in str(e):
      raise
    raise UserError(f'Preparing {name!r} needs TensorFlow: {TF_HINT} '
                    f'(or prepare it elsewhere with `tfds build {name} '
                    f'--file_format=array_record`).') from None


def tfds_records(name: str, split: str, data_dir: str | None):
  """The raw random-access records of a prepared TFDS split (tests mock this)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _prepare(name, data_dir)
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def open_source(name: str, split: str, data_dir: str | None = None,
                image_size: int | None = None):
  """A random-access source of one split.

  Args:
    name: a dataset name from `DATASETS`, or 'folder:PATH'.
    split: 'train' or 'test' (mapped to the dataset's own split names), or
      any TFDS split string.
    data_dir: where TFDS keeps prepared data; see `resolve_data_dir`.
    image_size: folder datasets only, see `get_spec`.

  Returns:
    An object with `len()`, `.spec` and `.read(indices)`.
  """
  spec = get_spec(name, image_size)
  if is_folder(name):
    return FolderSource(name[len(FOLDER_PREFIX):], split, spec)
  split = {'train': spec.train_split, 'test': spec.test_split}.get(split, split)
  return TfdsSource(tfds_records(name, split, resolve_data_dir(name, data_dir)), spec)


# ---------------------------------------------------------------------------
# Folders of images.
# ---------------------------------------------------------------------------

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp')
TEST_FRACTION_MOD = 10  # 1 file in 10 (by a hash of its path) goes to `test`.
_GREY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """The readable images of a folder, in sorted relative-path order."""
  root: str
  paths: tuple         # Relative paths.
  labels: np.ndarray   # int32 (N,), -1 when unlabelled.
  is_test: np.ndarray  # bool (N,).
  class_names: tuple   # Sorted top-level sub-folder names ('' when unlabelled).
  channels: int        # 1 when every image is greyscale, else 3.
  num_skipped: int     # Files with an image extension that PIL cannot open.

  @property
  def num_classes(self):
    return len(self.class_names)


def _test_split(rel_paths) -> np.ndarray:
  """Deterministic, stable split: a file is in `test` when the CRC32 of its
  relative path is 0 mod 10, so adding files never moves the others. With
  fewer than 10 files that can leave `test` empty; then the last file is."""
  is_test = np.asarray([zlib.crc32(p.encode()) % TEST_FRACTION_MOD == 0
                        for p in rel_paths], bool)
  if len(rel_paths) > 1 and not is_test.any():
    is_test[-1] = True
  if len(rel_paths) > 1 and is_test.all():
    is_test[0] = False
  return is_test


@functools.lru_cache(maxsize=16)
def scan_folder(path: str) -> FolderIndex:
  """Indexes the images under `path` (recursively). Reads headers only.

  Labels: when every image sits inside a top-level sub-folder and there are at
  least two of them, the label is the index of that sub-folder's name in
  sorted order (deeper nesting is part of the class); otherwise -1.
  Unreadable files are skipped, and their count printed once.

  Raises:
    UserError: PATH is missing, not a folder, or holds fewer than 2 images.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  spec_name = FOLDER_PREFIX + path
  root = os.path.abspath(os.path.expanduser(path))
  if not path:
    raise UserError('data.name=folder: needs a path, e.g. folder:~/my_pictures.')
  if not os.path.exists(root):
    raise UserError(f'{spec_name}: no such folder ({root}).')
  if not os.path.isdir(root):
    raise UserError(f'{spec_name}: {root} is a file, not a folder of images.')
  rel = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    for f in filenames:
      if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.'):
        rel.append(os.path.relpath(os.path.join(dirpath, f), root))
  rel.sort()
  good, grey, skipped = [], [], []
  for p in rel:
    try:
      with Image.open(os.path.join(root, p)) as im:
        mode = im.mode
        im.size  # pylint: disable=pointless-statement
    except Exception:  # pylint: disable=broad-except  # Any unreadable file.
      skipped.append(p)
      continue
    good.append(p)
    grey.append(mode in _GREY_MODES)
  if skipped:
    print(f'{spec_name}: skipped {len(skipped)} unreadable image file(s) '
          f'(first: {skipped[0]}).', flush=True)
  if len(good) < 2:
    raise UserError(f'{spec_name}: found {len(good)} readable PNG/JPEG/WebP '
                    f'image(s) under {root} (searched recursively); need at least 2.')
  tops = [p.split(os.sep)[0] if os.sep in p else None for p in good]
  class_names = sorted(set(tops)) if None not in tops else []
  if len(class_names) < 2:
    class_names = []
  lookup = {c: i for i, c in enumerate(class_names)}
  labels = np.asarray([lookup[t] if class_names else -1 for t in tops], np.int32)
  return FolderIndex(root, tuple(good), labels, _test_split(good), tuple(class_names),
                     1 if all(grey) else 3, len(skipped))


class FolderSource:
  """One split of a folder dataset, decoded on demand.

  A file that opens at indexing time but fails to decode later (truncated) is
  replaced by the next readable image of the split, with one printed line per
  file, so a run never crashes on it.
  """

  def __init__(self, path: str, split: str, spec: DatasetSpec):
    if split not in ('train', 'test'):
      raise UserError(f'{spec.name}: split must be train or test, not {split!r}.')
    self.index = scan_folder(path)
    self.spec = spec
    self.rows = np.flatnonzero(self.index.is_test == (split == 'test'))
    self._bad = set()

  def __len__(self):
    return len(self.rows)

  def _decode(self, row: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(os.path.join(self.index.root, self.index.paths[row])) as im:
      im.load()
      return _pil_to_array(im, self.spec.image_shape)

  def read(self, indices):
    indices = np.asarray(indices).reshape(-1)
    images = np.empty((len(indices), *self.spec.image_shape), np.uint8)
    labels = np.empty(len(indices), np.int32)
    for k, i in enumerate(indices):
      for attempt in range(len(self.rows)):
        row = int(self.rows[(int(i) + attempt) % len(self.rows)])
        try:
          images[k] = self._decode(row)
          labels[k] = self.index.labels[row]
          break
        except Exception:  # pylint: disable=broad-except  # Truncated or corrupt.
          if row not in self._bad:
            self._bad.add(row)
            print(f'{self.spec.name}: cannot decode {self.index.paths[row]}; '
                  'using the next image instead.', flush=True)
      else:
        raise UserError(f'{self.spec.name}: no image of the split can be decoded.')
    return images, labels
